"""Q2_K and Q3_K, and the K-quant mixes q2_k, q3_k_s/m/l, q4_k_s, q5_k_s: the quantizers write
llama.cpp's bytes (checked against its own ggml library when llama-cpp-python is installed), the
mixes pick llama.cpp's per-tensor types, and files of every mix run within tolerance of the NumPy
reference on every kernel path. (Dequantizers against gguf.quants: tests/test_types.py covers every
type of the engine's table.)"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import phi2cpu
from phi2cpu import _core
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import MIXES, tensor_type
from test_model import (_logits_with_isa, assert_argmax_flips_only_at_ties, assert_matches_reference,
                        assert_prefill_equals_decode, rel_err)
from tolerances import TOLERANCES

LOW_K = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q5_k_s"]


def _rows(rows: int = 48, n: int = 2560, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    x[0, :300] = 0                                # a zero super-block and a zero sub-block run
    x[1, :256] = np.abs(x[1, :256]) + 1           # all positive: the min term is zero
    x[2, :256] = -np.abs(x[2, :256])              # all negative
    x[3, 256:512] = rng.standard_normal(256) * 1e-20  # tiny values below the all-zero threshold
    return x


def test_quantizer_accuracy():
    """Relative RMS error on Gaussian rows: fewer bits, more error; all-zero rows stay zero. Bounds
    are ~10% above what the quantizers measure."""
    x = np.random.default_rng(2).standard_normal((64, 2560)).astype(np.float32)

    def err(qt: T) -> float:
        y = _core.dequantize(_core.quantize(x, int(qt)), int(qt), 2560)
        return float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))

    e = {qt: err(qt) for qt in (T.Q2_K, T.Q3_K, T.Q4_K)}
    assert e[T.Q2_K] < 0.33 and e[T.Q3_K] < 0.17, e
    assert e[T.Q4_K] < e[T.Q3_K] < e[T.Q2_K], e
    for qt in (T.Q2_K, T.Q3_K):
        z = np.zeros((2, 256), np.float32)
        assert not _core.dequantize(_core.quantize(z, int(qt)), int(qt), 256).any()
        with pytest.raises(ValueError, match="multiple of the .* block size 256"):
            _core.quantize(np.zeros((1, 160), np.float32), int(qt))


def _ggml_quantize():
    """llama.cpp's own row quantizer (ggml_quantize_chunk of the ggml library llama-cpp-python ships)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    names = [n for n in os.listdir(lib_dir) if n.startswith("libggml-base.")] if os.path.isdir(lib_dir) else []
    if not names:
        pytest.skip("this llama-cpp-python has no separate ggml base library")
    f = ctypes.CDLL(os.path.join(lib_dir, sorted(names)[0])).ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    return f


@pytest.mark.parametrize("qt", [T.Q2_K, T.Q3_K], ids=lambda t: t.name)
def test_quantizer_bytes_equal_llama_cpp(qt):
    quant = _ggml_quantize()
    x = _rows()
    ours = _core.quantize(x, int(qt))
    want = np.zeros_like(ours)
    quant(int(qt), x.ctypes.data, want.ctypes.data, 0, x.shape[0], x.shape[1], None)
    assert np.array_equal(ours, want)


# ----------------------------------------------------------------------------- the mixes

def _types(qtype: str, n_layer: int) -> dict[str, str]:
    names = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{p}.weight" for i in range(n_layer)
                                                      for p in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")]
    return {n: tensor_type(n, (2560, 2560), qtype, n_layer).name for n in names}


def test_mixes_follow_llama_cpp_rules_for_phi2():
    """Phi-2's 32 layers: the per-tensor types llama.cpp's quantizer picks for a phi2 file (fused
    attn_qkv) in each of these file types."""
    def count(types, part):
        return {t: sum(1 for n, v in types.items() if part in n and v == t) for t in set(types.values())}

    t = _types("q2_k", 32)
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q2_K"
    assert count(t, "attn_qkv")["Q3_K"] == 32 and count(t, "ffn_up")["Q2_K"] == 32
    assert count(t, "attn_output")["Q3_K"] == 32 and count(t, "ffn_down")["Q3_K"] == 32
    t = _types("q3_k_s", 32)
    assert set(t.values()) == {"Q3_K", "Q6_K"} and t["output.weight"] == "Q6_K"
    t = _types("q3_k_m", 32)
    assert [t[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert count(t, "ffn_down")["Q4_K"] == 30 and count(t, "attn_qkv")["Q4_K"] == 30
    assert [t[f"blk.{i}.attn_qkv.weight"] for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert count(t, "attn_output")["Q4_K"] == 32 and count(t, "ffn_up")["Q3_K"] == 32
    t = _types("q3_k_l", 32)
    assert count(t, "ffn_down")["Q5_K"] == 32 and count(t, "attn_output")["Q5_K"] == 32
    assert count(t, "attn_qkv")["Q5_K"] == 32 and t["token_embd.weight"] == "Q3_K"
    t = _types("q4_k_s", 32)
    assert [t[f"blk.{i}.ffn_down.weight"] for i in (0, 3, 4, 31)] == ["Q5_K", "Q5_K", "Q4_K", "Q4_K"]
    assert [t[f"blk.{i}.attn_qkv.weight"] for i in (0, 3, 4, 31)] == ["Q5_K", "Q5_K", "Q4_K", "Q4_K"]
    assert t["output.weight"] == "Q6_K"
    t = _types("q5_k_s", 32)
    assert set(t.values()) == {"Q5_K", "Q6_K"}
    for q in LOW_K:
        assert MIXES[q].file_type.name == "MOSTLY_" + q.upper()
    with pytest.raises(ValueError, match="depends on the layer count"):
        tensor_type("blk.0.ffn_down.weight", (2560, 10240), "q3_k_m")


@pytest.fixture(scope="module")
def mini_low(mini_gguf):
    return {qtype: mini_gguf(qtype) for qtype in ["f16", *LOW_K]}


@pytest.mark.parametrize("qtype", LOW_K)
def test_files_hold_the_mix(mini_low, qtype):
    mf = read_model_file(mini_low[qtype])
    n_layer = mf.config.n_layer
    for name, t in mf.tensors.items():
        want = "F32" if len(t.shape) == 1 else tensor_type(name, t.shape, qtype, n_layer).name
        assert t.type_name == want, name
    assert mf.kv["general.file_type"] == int(MIXES[qtype].file_type)
    assert mf.recipe["qtype"] == qtype and mf.recipe["output.weight"] == "Q6_K"


@pytest.mark.parametrize("qtype", LOW_K)
def test_logits_match_reference(mini_low, eval_text, qtype):
    m = phi2cpu.load(mini_low[qtype], threads=2)
    assert_matches_reference(mini_low[qtype], m.tokenize(eval_text[:6000])[:300], qtype)


def test_perplexity_close_to_f16(mini_low, eval_text):
    from phi2cpu.perplexity import perplexity

    ppl = {q: perplexity(phi2cpu.load(p, threads=2), eval_text, max_windows=4).ppl for q, p in mini_low.items()}
    for qtype in LOW_K:
        assert ppl[qtype] <= ppl["f16"] * (1 + TOLERANCES[qtype]["ppl_rel"]), ppl
    assert ppl["q5_k_s"] < ppl["q4_k_s"] < ppl["q3_k_m"] < ppl["q2_k"], ppl


@pytest.mark.parametrize("qtype", ["q2_k", "q3_k_s"])
def test_batched_prefill_equals_token_by_token(mini_low, eval_text, qtype):
    assert_prefill_equals_decode(mini_low[qtype], eval_text, qtype)


def test_every_kernel_path_gives_the_same_logits(mini_low):
    isas = _core.available_isas().split(", ")
    ids = list(range(1000, 1040))
    for qtype in ["q2_k", "q3_k_s"]:
        base = _logits_with_isa(mini_low[qtype], "scalar", ids)
        for isa in isas[1:]:
            got = _logits_with_isa(mini_low[qtype], isa, ids)
            assert rel_err(got, base) <= TOLERANCES[qtype]["max_rel"], (qtype, isa)
            assert_argmax_flips_only_at_ties(got, base)
