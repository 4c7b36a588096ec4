"""Files made by llama.cpp's own converter (convert_hf_to_gguf.py) run in phi2cpu.

Needs a llama.cpp source tree (the converter and its gguf-py); set LLAMA_CPP_DIR to it (for
example the vendor/llama.cpp folder of the llama-cpp-python source distribution). Skipped
otherwise: the converter is not a Python package CI can install.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phi2cpu
from phi2cpu import reference
from phi2cpu.quantize import quantize
from tolerances import TOLERANCES

LLAMA_CPP_DIR = os.environ.get("LLAMA_CPP_DIR")
pytestmark = pytest.mark.skipif(
    not (LLAMA_CPP_DIR and (Path(LLAMA_CPP_DIR) / "convert_hf_to_gguf.py").is_file()),
    reason="set LLAMA_CPP_DIR to a llama.cpp source tree to test files made by its converter")


def convert(src: Path, out: Path, outtype: str) -> Path:
    env = dict(os.environ, PYTHONPATH=str(Path(LLAMA_CPP_DIR) / "gguf-py"))
    subprocess.run([sys.executable, str(Path(LLAMA_CPP_DIR) / "convert_hf_to_gguf.py"), str(src),
                    "--outtype", outtype, "--outfile", str(out)], check=True, env=env, capture_output=True)
    return out


@pytest.fixture(scope="module")
def files(mini_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("converter")
    ours = d / "ours.f16.gguf"
    quantize(mini_dir, ours, "f16", progress=False)
    return {"ours": ours, "f16": convert(mini_dir, d / "conv.f16.gguf", "f16"),
            "q8_0": convert(mini_dir, d / "conv.q8_0.gguf", "q8_0")}


def test_converter_f16_equals_our_f16(files, eval_text):
    ours, conv = phi2cpu.load(files["ours"], threads=2), phi2cpu.load(files["f16"], threads=2)
    text = eval_text[:100_000]
    assert conv.tokenize(text) == ours.tokenize(text)  # the tokenizer rebuilt from GGUF tokens/merges
    ids = ours.tokenize(text)[:256]
    np.testing.assert_array_equal(conv.logits(ids), ours.logits(ids))
    assert conv.generate("def fibonacci(n):", max_tokens=24, temperature=0) == \
        ours.generate("def fibonacci(n):", max_tokens=24, temperature=0)


def test_converter_q8_0_matches_the_reference(files, eval_text):
    m = phi2cpu.load(files["q8_0"], threads=2)
    ids = m.tokenize(eval_text[:20_000])[:200]
    cfg, w = reference.load_reference_weights(files["q8_0"])
    want = reference.reference_logits(cfg, w, ids, kv_type=m.kv_type)
    got = m.logits(ids)
    tol = TOLERANCES["q8_0"]
    assert np.abs(got - want).max() / np.abs(want).max() <= tol["max_rel"]
    assert (got[:, :50295].argmax(1) == want[:, :50295].argmax(1)).mean() >= tol["top1"]
