"""Whole-model checks: the C++ engine against the NumPy reference, on random checkpoints with
Phi-2's head shape and on the trained phi2-mini-code."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import phi2cpu
from phi2cpu import _core, reference
from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.errors import ContextFullError, Phi2Error
from phi2cpu.quantize import quantize
from tolerances import ISA_MAX_REL, KV_F16_MAX_REL, TOLERANCES

N_VALID = 50295

# Phi-2's head geometry (head_dim 80, 32 rotary dims) at a small width.
SMALL_PHI = {
    "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 160, "intermediate_size": 320,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "partial_rotary_factor": 0.4,
    "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "vocab_size": 51200,
    "hidden_act": "gelu_new", "tie_word_embeddings": False,
}
# The same model in the older key set.
SMALL_PHI_OLD_KEYS = {
    "architectures": ["PhiForCausalLM"], "model_type": "phi-msft", "n_embd": 160, "n_inner": 320, "n_layer": 2,
    "n_head": 2, "rotary_dim": 32, "layer_norm_epsilon": 1e-5, "n_positions": 2048, "vocab_size": 51200,
}


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def assert_matches_reference(path, ids, qtype, kv_type="f32"):
    """The engine against the reference's same math: with an f32 cache to the type's tolerance, with
    an f16 cache (the reference rounding keys and values alike) to KV_F16_MAX_REL more."""
    tol = dict(TOLERANCES[qtype])
    if kv_type == "f16":
        tol["max_rel"] += KV_F16_MAX_REL
    m = phi2cpu.load(path, threads=2, kv_type=kv_type)
    got = m.logits(ids)
    cfg, weights = reference.load_reference_weights(path)
    want = reference.reference_logits(cfg, weights, ids, kv_type=m.kv_type)
    assert got.shape == want.shape == (len(ids), 51200)
    assert rel_err(got, want) <= tol["max_rel"], f"{qtype}: logits drift {rel_err(got, want):.2e}"
    agree = (got[:, :N_VALID].argmax(1) == want[:, :N_VALID].argmax(1)).mean()
    assert agree >= tol["top1"], f"{qtype}: top-1 agreement {agree:.3f}"
    return m, got


def assert_prefill_equals_decode(path, text: str, qtype: str) -> None:
    """48 tokens as one batch (the GEMM path) and one at a time (the GEMV path) give the same logits
    within the type's tolerance, and argmax flips only at near-ties."""
    m = phi2cpu.load(path, threads=2)
    ids = m.tokenize(text[:3000])[:48]
    batch = m.logits(ids)
    m.reset()
    steps = np.stack([m.eval([i]) for i in ids])
    assert rel_err(steps, batch) <= TOLERANCES[qtype]["max_rel"]
    assert_argmax_flips_only_at_ties(steps, batch)


def assert_argmax_flips_only_at_ties(got: np.ndarray, want: np.ndarray) -> None:
    """Logits that differ by at most e per position can only change the argmax where the top-2
    margin is below 2e: any other flip is a real error."""
    got, want = got[:, :N_VALID], want[:, :N_VALID]
    err = np.abs(got - want).max(axis=1)
    top2 = np.sort(want, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flips = got.argmax(1) != want.argmax(1)
    assert not np.any(flips & (margin >= 2 * err)), np.where(flips & (margin >= 2 * err))


@pytest.fixture(scope="module")
def random_f32(tmp_path_factory, phi2_dir):
    """{naming: F32 GGUF path} for the same random weights in all three checkpoint namings."""
    out = {}
    for naming, cfg in (("current", SMALL_PHI), ("phi-msft", SMALL_PHI_OLD_KEYS), ("mixformer-sequential", SMALL_PHI_OLD_KEYS)):
        d = tmp_path_factory.mktemp(f"ckpt-{naming}")
        write_random_checkpoint(d, cfg, seed=7, shards=2, dtype="float32", naming=naming, tokenizer_dir=phi2_dir,
                                std=0.05)
        out[naming] = d / "model.f32.gguf"
        quantize(d, out[naming], "f32", progress=False)
    return out


@pytest.mark.parametrize("naming", ["current", "phi-msft", "mixformer-sequential"])
def test_f32_matches_reference_over_300_positions(random_f32, naming):
    ids = np.random.default_rng(0).integers(0, N_VALID, size=320).tolist()
    assert_matches_reference(random_f32[naming], ids, "f32")


def test_namings_give_identical_logits(random_f32):
    ids = list(range(100, 140))
    logits = [phi2cpu.load(p, threads=1).logits(ids) for p in random_f32.values()]
    for other in logits[1:]:
        np.testing.assert_array_equal(logits[0], other)


def test_kv_cache_incremental_equals_one_batch(random_f32):
    """Feeding a sequence in pieces through the cache (including one token at a time and a batch
    larger than the engine's internal 256-token batch) gives the logits of one full pass."""
    ids = np.random.default_rng(1).integers(0, N_VALID, size=600).tolist()
    m = phi2cpu.load(random_f32["current"], threads=2)
    full = m.logits(ids)
    m.reset()
    pieces, at = [], 0
    for size in (1, 1, 7, 300, 1, 290):
        pieces.append(m.eval(ids[at:at + size], all_logits=True))
        at += size
    assert at == len(ids) and m.n_past == len(ids)
    assert rel_err(np.concatenate(pieces), full) <= TOLERANCES["f32"]["max_rel"]
    last = m.logits(ids[:50])[-1]
    m.reset()
    np.testing.assert_allclose(m.eval(ids[:50]), last, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def mini_files(mini_gguf):
    return {qtype: mini_gguf(qtype) for qtype in ("f16", "q8_0", "q4_0")}


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_mini_logits_match_reference(mini_files, eval_text, qtype):
    m = phi2cpu.load(mini_files[qtype], threads=2)
    ids = m.tokenize(eval_text[:6000])[:300]
    assert_matches_reference(mini_files[qtype], ids, qtype)


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_mini_f16_cache_matches_reference(mini_files, eval_text, qtype):
    m = phi2cpu.load(mini_files[qtype], threads=2)
    assert m.kv_type == "f16"  # the default
    ids = m.tokenize(eval_text[:6000])[:300]
    assert_matches_reference(mini_files[qtype], ids, qtype, kv_type="f16")


def test_mini_f16_greedy_text_equals_reference(mini_files):
    m = phi2cpu.load(mini_files["f16"], threads=2)
    prompt = "import os\n\n\ndef read_config(path):\n"
    ids = m.tokenize(prompt)
    cfg, weights = reference.load_reference_weights(mini_files["f16"])
    want = reference.reference_greedy(cfg, weights, ids, 32, kv_type=m.kv_type)
    got_text = m.generate(prompt, max_tokens=32, temperature=0)
    assert got_text == m.detokenize(want)
    assert len(want) == 32


def test_mini_quantized_perplexity_close_to_f16(mini_files, eval_text):
    from phi2cpu.perplexity import perplexity

    ppl = {q: perplexity(phi2cpu.load(p, threads=2), eval_text, max_windows=4).ppl for q, p in mini_files.items()}
    for qtype in ("q8_0", "q4_0"):
        assert ppl[qtype] <= ppl["f16"] * (1 + TOLERANCES[qtype]["ppl_rel"]), ppl
    assert 2.0 < ppl["f16"] < 30.0, ppl  # a trained model on code, not noise


def _logits_with_isa(path, isa, ids):
    code = ("import sys, json, numpy as np, phi2cpu;"
            "m = phi2cpu.load(sys.argv[1], threads=2);"
            "np.save(sys.stdout.buffer, m.logits(json.loads(sys.argv[2])))")
    env = dict(os.environ, PHI2CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(ids)], env=env, capture_output=True,
                         check=True)
    import io
    return np.load(io.BytesIO(out.stdout))


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_every_kernel_path_gives_the_same_logits(mini_files, qtype):
    isas = _core.available_isas().split(", ")
    ids = list(range(1000, 1100))
    base = _logits_with_isa(mini_files[qtype], "scalar", ids)
    scale = np.abs(base).max()
    assert len(isas) >= 1
    for isa in isas[1:]:
        got = _logits_with_isa(mini_files[qtype], isa, ids)
        err = np.abs(got - base).max() / scale
        if qtype == "f16":
            assert err <= ISA_MAX_REL, isa
        else:
            assert err <= TOLERANCES[qtype]["max_rel"], (isa, err)
            assert_argmax_flips_only_at_ties(got, base)


def test_unknown_isa_is_a_clear_error(mini_files):
    env = dict(os.environ, PHI2CPU_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", f"import phi2cpu; phi2cpu.load({str(mini_files['q8_0'])!r})"],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "PHI2CPU_ISA=sse9 is not available" in r.stderr


def test_context_full_and_bad_ids_leave_cache_intact(mini_files):
    m = phi2cpu.load(mini_files["q8_0"], threads=1, n_ctx=64)
    m.eval(list(range(60)))
    with pytest.raises(ContextFullError):
        m.eval(list(range(5)))
    with pytest.raises(Phi2Error):
        m.eval([51200])
    assert m.n_past == 60
    m.eval([1, 2, 3, 4])
    assert m.n_past == 64


def test_load_argument_errors(mini_files):
    with pytest.raises(Phi2Error, match="n_ctx"):
        phi2cpu.load(mini_files["q8_0"], n_ctx=4096)
    with pytest.raises(Phi2Error, match="threads"):
        phi2cpu.load(mini_files["q8_0"], threads=0)


def test_engine_errors_are_package_errors(mini_files):
    """The C++ engine's own checks (behind the Python ones) raise phi2cpu's exception classes."""
    from phi2cpu.errors import ModelFileError
    from phi2cpu.gguf_io import read_model_file

    mf = read_model_file(mini_files["q8_0"])
    tensors = [(t.name, t.ggml_type, list(t.shape), t.offset) for t in mf.tensors.values()]
    engine = _core.Model(str(mf.path), mf.config.as_dict(), tensors, 8, 1)
    with pytest.raises(ContextFullError, match="context of 8 tokens"):
        engine.forward(np.arange(9, dtype=np.int32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.forward(np.array([51200], dtype=np.int32))
    past_end = [(n, t, s, mf.file_size if n == "output.weight" else o) for n, t, s, o in tensors]
    with pytest.raises(ModelFileError, match="output.weight runs past the end"):
        _core.Model(str(mf.path), mf.config.as_dict(), past_end, 8, 1)
    missing = [e for e in tensors if e[0] != "blk.3.ffn_up.weight"]
    with pytest.raises(ModelFileError, match="missing tensor blk.3.ffn_up.weight"):
        _core.Model(str(mf.path), mf.config.as_dict(), missing, 8, 1)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_batched_prefill_equals_token_by_token(mini_files, eval_text, qtype):
    """Prefill (GEMM on dequantized panels) and decoding (integer GEMV) see the same Q8_0
    activations, so they agree within the type's tolerance."""
    assert_prefill_equals_decode(mini_files[qtype], eval_text, qtype)
