"""K-quants (Q4_K, Q5_K, Q6_K weights; Q8_K activations) without llama.cpp: the C++ dequantizers
equal gguf.quants bit for bit, our quantizer is accurate, `phi2cpu quantize --type q4_k_m/q5_k_m/q6_k`
files run within tolerance of the NumPy reference, and a GGUF laid out as llama.cpp's converter
writes it (no phi2cpu.* keys, separate q/k/v) loads with its tokenizer rebuilt from the vocabulary."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from fakes import awkward_rows
from gguf import GGMLQuantizationType as T

import phi2cpu
from phi2cpu import _core, reference
from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.errors import ModelFileError
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import main, quantize
from test_model import (_logits_with_isa, assert_argmax_flips_only_at_ties, assert_matches_reference,
                        assert_prefill_equals_decode, rel_err)
from tolerances import TOLERANCES

K_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
K_MIXES = ["q4_k_m", "q5_k_m", "q6_k"]


def _rows(seed: int = 0) -> np.ndarray:
    return awkward_rows(1024, seed)


@pytest.mark.parametrize("qt", K_TYPES, ids=lambda t: t.name)
def test_dequantize_equals_gguf_quants(qt):
    x = _rows()
    q = _core.quantize(x, int(qt))
    assert q.shape == (24, 1024 // 256 * gguf.GGML_QUANT_SIZES[qt][1])
    ours = _core.dequantize(q, int(qt), 1024)
    theirs = gguf.quants.dequantize(q, qt).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("qt", K_TYPES, ids=lambda t: t.name)
def test_dequantize_random_bytes_equals_gguf_quants(qt):
    """Any bit pattern is a valid block once its fp16 scales are finite: this checks the layout
    independently of our quantizer."""
    rng = np.random.default_rng(1)
    block = gguf.GGML_QUANT_SIZES[qt][1]
    q = rng.integers(0, 256, (16, 4 * block), dtype=np.uint8).reshape(16, 4, block)
    scale_at = [block - 2] if qt == T.Q6_K else [0, 2]     # Q6_K: d last; Q4_K/Q5_K: d, dmin first
    for at in scale_at:
        q[:, :, at:at + 2] = np.frombuffer(rng.uniform(-2, 2, (16, 4)).astype(np.float16).tobytes(),
                                           np.uint8).reshape(16, 4, 2)
    q = q.reshape(16, -1)
    ours = _core.dequantize(q, int(qt), 1024)
    assert np.array_equal(ours, gguf.quants.dequantize(q, qt).reshape(ours.shape))


def test_quantizer_accuracy():
    """Relative RMS error on Gaussian rows: more bits, less error, and Q4_K beats Q4_0 at the same
    4.5 bits per weight. Bounds are ~10% above what this quantizer measures."""
    x = np.random.default_rng(2).standard_normal((64, 2560)).astype(np.float32)

    def err(qt: T) -> float:
        y = _core.dequantize(_core.quantize(x, int(qt)), int(qt), 2560)
        return float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))

    e = {qt: err(qt) for qt in (T.Q4_0, *K_TYPES)}
    assert e[T.Q4_K] < 0.08 and e[T.Q5_K] < 0.04 and e[T.Q6_K] < 0.02, e
    assert e[T.Q6_K] < e[T.Q5_K] < e[T.Q4_K] < e[T.Q4_0], e
    z = np.zeros((2, 256), np.float32)
    for qt in K_TYPES:
        assert not _core.dequantize(_core.quantize(z, int(qt)), int(qt), 256).any()
        with pytest.raises(ValueError, match="multiple of the .* block size 256"):
            _core.quantize(np.zeros((1, 160), np.float32), int(qt))


# ----------------------------------------------------------------------------- whole files

@pytest.fixture(scope="module")
def mini_k(mini_gguf):
    return {qtype: mini_gguf(qtype) for qtype in ["f16", *K_MIXES]}


@pytest.mark.parametrize("qtype", K_MIXES)
def test_recipe_types(mini_k, qtype):
    mf = read_model_file(mini_k[qtype])
    block = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}[qtype]
    for name, t in mf.tensors.items():
        if len(t.shape) == 1:
            want = "F32"
        elif name == "output.weight" or (name.endswith("ffn_down.weight") and qtype != "q6_k"):
            want = "Q6_K"
        else:
            want = block
        assert t.type_name == want, name
    assert mf.recipe["qtype"] == qtype and mf.recipe["output.weight"] == "Q6_K"
    assert mf.kv["general.file_type"] == {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}[qtype]


@pytest.mark.parametrize("qtype", K_MIXES)
def test_logits_match_reference(mini_k, eval_text, qtype):
    m = phi2cpu.load(mini_k[qtype], threads=2)
    ids = m.tokenize(eval_text[:6000])[:300]
    assert_matches_reference(mini_k[qtype], ids, qtype)


def test_perplexity_close_to_f16(mini_k, eval_text):
    from phi2cpu.perplexity import perplexity

    ppl = {q: perplexity(phi2cpu.load(p, threads=2), eval_text, max_windows=4).ppl for q, p in mini_k.items()}
    for qtype in K_MIXES:
        assert ppl[qtype] <= ppl["f16"] * (1 + TOLERANCES[qtype]["ppl_rel"]), ppl
    assert ppl["q6_k"] <= ppl["q4_k_m"], ppl


@pytest.mark.parametrize("qtype", ["q4_k_m", "q6_k"])
def test_batched_prefill_equals_token_by_token(mini_k, eval_text, qtype):
    """Prefill (GEMM on dequantized panels with Q8_K round-tripped activations) and decoding (the
    integer Q8_K dot kernels) agree within the type's tolerance."""
    assert_prefill_equals_decode(mini_k[qtype], eval_text, qtype)


def test_every_kernel_path_gives_the_same_logits(mini_k):
    isas = _core.available_isas().split(", ")
    ids = list(range(1000, 1040))
    for qtype in ["q4_k_m", "q5_k_m"]:
        base = _logits_with_isa(mini_k[qtype], "scalar", ids)
        for isa in isas[1:]:
            got = _logits_with_isa(mini_k[qtype], isa, ids)
            assert rel_err(got, base) <= TOLERANCES[qtype]["max_rel"], (qtype, isa)
            assert_argmax_flips_only_at_ties(got, base)


def test_non_256_rows_fall_back(tmp_path, phi2_dir):
    """Rows of 160 values cannot hold 256-value super-blocks: those matrices are written Q8_0."""
    ck = write_random_checkpoint(tmp_path / "ck", {
        "model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
        "num_hidden_layers": 1, "intermediate_size": 256, "vocab_size": 51200, "partial_rotary_factor": 0.4},
        seed=3, tokenizer_dir=phi2_dir)
    assert main([str(ck), str(tmp_path / "m.gguf"), "--type", "q4_k_m", "--quiet"]) == 0
    mf = read_model_file(tmp_path / "m.gguf")
    types = {n: t.type_name for n, t in mf.tensors.items() if len(t.shape) == 2}
    assert types["blk.0.ffn_down.weight"] == "Q6_K"       # rows of 256: the recipe's type
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["output.weight"] == "Q8_0"
    m = phi2cpu.load(tmp_path / "m.gguf", threads=1)
    assert np.isfinite(m.logits([1, 2, 3])).all()


def test_q8_k_is_not_a_weight_type(mini_k):
    """Q8_K is an activation format only: both the Python reader and the engine refuse it as a
    weight, by name."""
    mf = read_model_file(mini_k["q6_k"])
    tensors = [(t.name, int(T.Q8_K) if t.name == "blk.0.ffn_up.weight" else t.ggml_type, list(t.shape), t.offset)
               for t in mf.tensors.values()]
    with pytest.raises(ModelFileError, match="blk.0.ffn_up.weight has unsupported type Q8_K"):
        _core.Model(str(mf.path), mf.config.as_dict(), tensors, 8, 1)


# ----------------------------------------------------------------------------- converter-style files

@pytest.fixture(scope="module")
def converter_f16(tmp_path_factory, mini_dir):
    from converter_style import write_converter_style_f16

    return write_converter_style_f16(mini_dir, tmp_path_factory.mktemp("conv") / "mini.f16.gguf")


def test_converter_style_file_loads(converter_f16, mini_k, phi2_dir, eval_text):
    mf = read_model_file(converter_f16)
    assert not [k for k in mf.kv if k.startswith("phi2cpu.")] and mf.tokenizer_json is None and mf.recipe is None
    assert "blk.0.attn_q.weight" in mf.tensors and "blk.0.attn_qkv.weight" not in mf.tensors
    m = phi2cpu.load(converter_f16, threads=2)
    ours = phi2cpu.load(mini_k["f16"], threads=2)
    assert m.tokenizer.source == "GGUF vocab"
    text = eval_text[:100_000]
    assert m.tokenize(text) == ours.tokenize(text)              # ours holds the exact tokenizer.json
    ids = ours.tokenize(eval_text[:3000])[:64]
    assert rel_err(m.logits(ids), ours.logits(ids)) <= TOLERANCES["f16"]["max_rel"]


def test_requantize_converter_file_to_k_quants(converter_f16, mini_k, tmp_path, eval_text):
    """A GGUF source (separate q/k/v, vocab only) converts to q4_k_m; the fused qkv rows quantize to
    the same bytes as from the HF checkpoint, so the two files give the same logits."""
    out = tmp_path / "re.q4_k_m.gguf"
    quantize(converter_f16, out, "q4_k_m", progress=False)
    a, b = read_model_file(out), read_model_file(mini_k["q4_k_m"])
    for name in ("blk.2.attn_qkv.weight", "blk.5.ffn_down.weight", "token_embd.weight"):
        assert np.array_equal(np.asarray(a.raw(name)), np.asarray(b.raw(name))), name
    assert a.tokenizer_json is None and a.tokens == read_model_file(converter_f16).tokens
    ids = list(range(2000, 2032))
    cfg, w = reference.load_reference_weights(out)
    want = reference.reference_logits(cfg, w, ids, kv_type="f16")
    assert rel_err(phi2cpu.load(out, threads=2).logits(ids), want) <= TOLERANCES["q4_k_m"]["max_rel"]
