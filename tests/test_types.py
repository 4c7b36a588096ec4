"""Every tensor type the engine knows (_core.types(), the C++ traits table): its dequantizer equals
gguf.quants bit for bit on any bytes, its quantizer equals gguf.quants where gguf has one, and the
Python side takes its type list from the engine."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from fakes import awkward_rows
from gguf import GGMLQuantizationType as T

from phi2cpu import _core
from phi2cpu.gguf_io import SUPPORTED_TYPES, tensor_nbytes

TYPES = [t for t in _core.types() if t["weight"] and t["block_size"] > 1]
N = 1024  # a multiple of every block size


def _rows(seed: int = 0) -> np.ndarray:
    return awkward_rows(N, seed)


def test_python_types_come_from_the_engine():
    assert {int(k): v for k, v in SUPPORTED_TYPES.items()} == {
        t["id"]: (t["name"], t["block_size"], t["type_size"]) for t in _core.types() if t["weight"]}
    for t in _core.types():
        assert T(t["id"]).name == t["name"]
        assert gguf.GGML_QUANT_SIZES[T(t["id"])] == (t["block_size"], t["type_size"])
    assert tensor_nbytes(int(T.Q8_0), (3, 64)) == 3 * 2 * 34


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t["name"])
def test_dequantize_any_bytes_equals_gguf_quants(t):
    """Random bytes are a block of every format (NaN/inf fp16 scales included): this checks the
    layout independently of any quantizer."""
    q = np.random.default_rng(t["id"]).integers(0, 256, (16, N // t["block_size"] * t["type_size"]), dtype=np.uint8)
    ours = _core.dequantize(q, t["id"], N)
    with np.errstate(all="ignore"):
        theirs = gguf.quants.dequantize(q, T(t["id"])).reshape(ours.shape)
    assert np.array_equal(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t["name"])
def test_quantize_round_trip_equals_gguf_quants(t):
    x = _rows()
    q = _core.quantize(x, t["id"])
    assert q.shape == (24, N // t["block_size"] * t["type_size"])
    assert np.array_equal(_core.dequantize(q, t["id"], N), gguf.quants.dequantize(q, T(t["id"])).reshape(24, N))
    try:
        want = gguf.quants.quantize(x, T(t["id"]))
    except NotImplementedError:
        pytest.skip(f"gguf.quants has no {t['name']} quantizer (ours is checked by the round trip and accuracy tests)")
    assert np.array_equal(q, want.view(np.uint8).reshape(q.shape))


def test_quantizer_accuracy_order():
    """Relative RMS error on Gaussian rows: a fifth bit or an offset helps, and IQ4_NL's non-linear
    grid beats Q4_0 at the same 4.5 bits per weight (IQ4_XS at fewer)."""
    x = np.random.default_rng(2).standard_normal((64, 2560)).astype(np.float32)

    def err(qt):
        y = _core.dequantize(_core.quantize(x, int(qt)), int(qt), x.shape[1])
        return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))

    e = {qt: err(qt) for qt in (T.Q4_0, T.Q4_1, T.IQ4_NL, T.IQ4_XS, T.Q5_0, T.Q5_1, T.Q8_0)}
    assert e[T.Q8_0] < e[T.Q5_1] < e[T.Q5_0] < e[T.Q4_1] < e[T.Q4_0], e
    assert e[T.IQ4_NL] < 0.95 * e[T.Q4_0], e
    assert e[T.IQ4_XS] < 0.95 * e[T.Q4_0], e  # at 4.25 bits per weight against Q4_0's 4.5
