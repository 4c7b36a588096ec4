"""The fidelity harness (benchmarks/quant_quality.py) scores a file by the same numbers as
phi2cpu.perplexity: its one-pass NLL and KL equal window_nll and window_kl."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from phi2cpu.perplexity import _log_softmax, window_kl, window_nll

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quant_quality  # noqa: E402


def test_one_pass_nll_and_kl_equal_the_perplexity_module():
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((70, 4096)) * 4).astype(np.float32)
    model = base + (rng.standard_normal(base.shape) * 0.3).astype(np.float32)
    ids = rng.integers(0, 4096, 71)
    lb = _log_softmax(base)
    pb = np.exp(lb)
    nll, kl = quant_quality._nll_kl(model, ids[1:], pb, np.einsum("ij,ij->i", pb, lb))
    assert np.isclose(nll, window_nll(model, ids).sum(), rtol=1e-12)
    assert np.isclose(kl, window_kl(base, model, 70).sum(), rtol=1e-9)
    assert kl > 0.01
    _, kl_same = quant_quality._nll_kl(base, ids[1:], pb, np.einsum("ij,ij->i", pb, lb))
    assert abs(kl_same) < 1e-9
