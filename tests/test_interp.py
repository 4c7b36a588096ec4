"""Captures, interventions, batches, DLPack, logit lens and attribution: the engine against the
NumPy reference (the same interventions written out in NumPy) and against HF transformers."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phi2cpu
from phi2cpu import _core, interp, reference
from phi2cpu.errors import Phi2Error
from phi2cpu.quantize import quantize
from tolerances import CAPTURE_REL, HF_CAPTURE_REL as HF_REL

REPO = Path(__file__).resolve().parents[1]


def rel(got, want) -> float:
    return float(np.abs(np.asarray(got) - np.asarray(want)).max() / max(np.abs(np.asarray(want)).max(), 1e-30))


@pytest.fixture(scope="module")
def f32_path(tmp_path_factory, mini_dir):
    path = tmp_path_factory.mktemp("interp") / "mini.f32.gguf"
    quantize(mini_dir, path, "f32", progress=False)
    return path


@pytest.fixture(scope="module")
def model(f32_path):
    return phi2cpu.load(f32_path, threads=2, repack_cache=False, kv_type="f32")


@pytest.fixture(scope="module")
def ref(f32_path):
    return reference.load_reference_weights(f32_path)


@pytest.fixture(scope="module")
def ids(model, eval_text):
    return model.tokenize(eval_text[:800])[:72]


def assert_acts_match(cache, acts, names, tol=CAPTURE_REL):
    for name in names:
        assert cache[name].shape == acts[name].shape, name
        assert rel(cache[name], acts[name]) <= tol, f"{name}: {rel(cache[name], acts[name]):.2e}"


# --- capture ---------------------------------------------------------------------------------------
def test_every_capture_matches_reference(model, ref, ids):
    cache = model.run_with_cache(ids)
    acts, logits = reference.reference_run(*ref, ids, kv_type=model.kv_type)
    c = model.config
    assert sorted(cache) == sorted(acts) == sorted(interp.all_names(c.n_layer))
    assert cache["attn_probs.0"].shape == (c.n_head, len(ids), len(ids))
    assert cache["head_out.3"].shape == (len(ids), c.n_head, c.head_dim)
    assert cache["mlp_pre.5"].shape == (len(ids), c.n_ff)
    assert_acts_match(cache, acts, acts)
    assert rel(cache.logits, logits) <= CAPTURE_REL
    probs = cache["attn_probs.2"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probs, 1) == 0)  # no weight on later keys
    assert cache.tokens == list(ids) and model.tokens == list(ids)


def test_attention_probabilities_on_every_kernel_path(f32_path, ref, ids):
    """Probabilities come from the scores each ISA's attention kernel leaves; every path must leave
    them proportional to the softmax it used (scalar: normalised, SIMD: the exponentials)."""
    code = ("import sys, json, numpy as np, phi2cpu;"
            "m = phi2cpu.load(sys.argv[1], threads=2, repack_cache=False, kv_type='f32');"
            "c = m.run_with_cache(json.loads(sys.argv[2]), names=['attn_probs.*'], logits=False);"
            "np.save(sys.stdout.buffer, c.stack('attn_probs'))")
    acts, _ = reference.reference_run(*ref, ids, kv_type="f32")
    want = np.stack([acts[f"attn_probs.{i}"] for i in range(ref[0].n_layer)])
    for isa in _core.available_isas().split(", "):
        out = subprocess.run([sys.executable, "-c", code, str(f32_path), json.dumps([int(t) for t in ids])],
                             env=dict(os.environ, PHI2CPU_ISA=isa), capture_output=True, check=True)
        got = np.load(io.BytesIO(out.stdout))
        assert rel(got, want) <= CAPTURE_REL, (isa, rel(got, want))


def test_only_named_points_are_returned_and_math_is_unchanged(model, ids):
    plain = model.logits(ids)
    cache = model.run_with_cache(ids, names=["mlp_post.2", "attn_probs.-1", "resid_post.*"])
    assert list(cache) == ["mlp_post.2", "attn_probs.5"] + [f"resid_post.{i}" for i in range(6)]
    np.testing.assert_array_equal(cache.logits, plain)  # capturing copies; it changes no value
    assert model.run_with_cache(ids, names=["ln_final"], logits=False).logits is None
    np.testing.assert_array_equal(cache.stack("resid_post"), model.hidden_states(ids)[1:])
    with pytest.raises(Phi2Error, match="per-layer point"):
        cache.stack("ln_final")


def test_capture_continues_an_existing_cache_shape(model, ids):
    """Captures of a fresh sequence hold all of it; keys of attn_probs count from position 0."""
    cache = model.run_with_cache(ids[:10], names=["attn_probs.1"])
    assert cache["attn_probs.1"].shape == (model.config.n_head, 10, 10)


@pytest.mark.parametrize("names, message", [
    (["resid"], "unknown activation name"), (["resid_post"], "needs a layer"), (["mlp_pre.6"], "outside 0..5"),
    (["ln_final.0"], "no layer"), ([3], "unknown activation name"),
])
def test_bad_names_are_refused(model, ids, names, message):
    with pytest.raises(Phi2Error, match=message):
        model.run_with_cache(ids, names=names)


def _hf_captures(mini_dir, ids):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    hf = transformers.PhiForCausalLM.from_pretrained(mini_dir, torch_dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from interp_quant_error import hf_captures  # the same hooks the error-table tool reads
    finally:
        sys.path.remove(str(REPO / "tools"))
    got = hf_captures(hf, ids)
    for i in range(hf.config.num_hidden_layers - 1):  # HF's last hidden state has the final norm applied
        np.testing.assert_array_equal(got[f"resid_post.{i}"], got[f"resid_pre.{i + 1}"])
    return got


def test_every_capture_matches_transformers(model, mini_dir, ids):
    """HF's output_attentions, hidden states and forward hooks."""
    hf = _hf_captures(mini_dir, ids)
    cache = model.run_with_cache(ids)
    names = [k for k in hf if k != "logits"]
    assert sorted(names) == sorted(interp.all_names(6))
    assert_acts_match(cache, hf, names, tol=HF_REL)
    assert rel(cache.logits, hf["logits"]) <= HF_REL


# --- interventions ---------------------------------------------------------------------------------
def _interventions(model, ref, ids):
    """One of each kind, with values that move the logits visibly."""
    c = model.config
    rng = np.random.default_rng(3)
    donor_ids = list(ids[::-1])
    donor, _ = reference.reference_run(*ref, donor_ids, kv_type=model.kv_type)
    return {
        "steer every position": interp.steer(rng.normal(0, 2.0, c.n_embd), layers=[1, 4]),
        "steer chosen positions": interp.steer(rng.normal(0, 2.0, c.n_embd), layers=2, positions=[0, 5, 40], scale=1.5),
        "steer per-position rows": [interp.add("resid_post.3", rng.normal(0, 2.0, (3, c.n_embd)), positions=[1, 2, 60])],
        "patch mlp_post": [interp.patch("mlp_post.1", donor["mlp_post.1"][10:30], positions=range(10, 30))],
        "patch two heads": [interp.patch("head_out.2", donor["head_out.2"], heads=[0, 3], n_head=c.n_head)],
        "patch the residual": [interp.patch("resid_pre.3", donor["resid_pre.3"][:20])],
        "ablate heads": [interp.scale_heads(0, [1, 2], 0.0, c.n_head, c.head_dim),
                         interp.scale_heads(4, [3], 0.0, c.n_head, c.head_dim)],
        "scale heads at positions": [interp.scale_heads(3, [0], 2.5, c.n_head, c.head_dim, positions=[7, 8, 9])],
        "zero mlp neurons": [interp.scale("mlp_post.2", np.where(np.arange(c.n_ff) % 7 == 0, 0.0, 1.0))],
        "scale ln and ln_final": [interp.scale("ln.5", 0.5), interp.add("ln_final", np.full(c.n_embd, 0.3))],
        "attn_out and mlp_out": [interp.scale("attn_out.1", 0.0), interp.add("mlp_out.0", np.ones(c.n_embd))],
    }


def test_interventions_match_reference(model, ref, ids):
    names = ["resid_post.*", "attn_probs.*", "head_out.*", "mlp_post.*", "ln_final"]
    base = model.logits(ids)
    for label, ivs in _interventions(model, ref, ids).items():
        cache = model.run_with_cache(ids, names=names, interventions=ivs)
        flat = [interp.expand_scalar(iv, model.config) for iv in ivs]
        acts, logits = reference.reference_run(*ref, ids, flat, kv_type=model.kv_type)
        want = [k for k in cache]
        assert_acts_match(cache, acts, want)
        assert rel(cache.logits, logits) <= CAPTURE_REL, label
        assert rel(logits, base) > 1e-3, f"{label}: the intervention should change the logits"
        assert model.interventions == ()
    np.testing.assert_array_equal(model.logits(ids), base)  # nothing left behind


def test_ablated_head_outputs_are_zero_and_patches_are_exact(model, ref, ids):
    c = model.config
    donor = model.run_with_cache(ids[::-1], names=["head_out.2", "mlp_pre.4"], logits=False)
    ivs = [interp.scale_heads(1, [2], 0.0, c.n_head, c.head_dim),
           interp.patch("head_out.2", donor["head_out.2"], heads=[1], n_head=c.n_head),
           interp.patch("mlp_pre.4", donor["mlp_pre.4"][3:9], positions=range(3, 9))]
    cache = model.run_with_cache(ids, names=["head_out.1", "head_out.2", "mlp_pre.4"], interventions=ivs)
    assert np.all(cache["head_out.1"][:, 2] == 0) and np.any(cache["head_out.1"][:, 1] != 0)
    np.testing.assert_array_equal(cache["head_out.2"][:, 1], donor["head_out.2"][:, 1])
    assert not np.array_equal(cache["head_out.2"][:, 0], donor["head_out.2"][:, 0])
    np.testing.assert_array_equal(cache["mlp_pre.4"][3:9], donor["mlp_pre.4"][3:9])


def test_interventions_during_generation_match_reference(model, ref, ids):
    c = model.config
    v = np.random.default_rng(5).normal(0, 3.0, c.n_embd)
    prompt = ids[:12]
    ivs = interp.steer(v, layers=[2], positions=None) + [interp.scale_heads(3, [1], 0.0, c.n_head, c.head_dim)]
    want = reference.reference_greedy(*ref, prompt, 10, [interp.expand_scalar(i, c) for i in ivs],
                                      kv_type=model.kv_type)
    plain = reference.reference_greedy(*ref, prompt, 10, kv_type=model.kv_type)
    assert want != plain
    text = model.detokenize(prompt)
    with model.intervene(*ivs):
        got = model.complete(text, max_tokens=10, temperature=0).token_ids
        assert len(model.interventions) == 2
    assert model.tokenize(text) == list(prompt)
    assert got == want
    assert model.interventions == () and model.complete(text, max_tokens=10, temperature=0).token_ids == plain


def test_steering_at_later_positions_reaches_generated_tokens(model, ref, ids):
    """An edit at a position past the prompt applies when generation reaches it (one token per call)."""
    c = model.config
    prompt = list(ids[:8])
    ivs = interp.steer(np.random.default_rng(6).normal(0, 4.0, c.n_embd), layers=1, positions=[10, 11])
    want = reference.reference_greedy(*ref, prompt, 6, ivs, kv_type=model.kv_type)
    model.reset()
    with model.intervene(*ivs):
        seq = list(prompt)
        logits = model.eval(prompt)
        for _ in range(6):
            logits[50295:] = -np.inf
            seq.append(int(np.argmax(logits)))
            logits = model.eval([seq[-1]])
    assert seq[len(prompt):] == want


@pytest.mark.parametrize("make, message", [
    (lambda c: interp.add("resid_pre.0", np.ones(c.n_embd + 1)), "rows must be"),
    (lambda c: interp.add("attn_probs.0", np.ones(c.n_embd)), "captured, not edited"),
    (lambda c: interp.add("resid_post.*", np.ones(c.n_embd)), "names one layer"),
    (lambda c: interp.add("resid_pre.0", np.ones((2, c.n_embd)), positions=[1, 2, 3]), "2 rows for 3 positions"),
    (lambda c: interp.add("resid_pre.0", np.full(c.n_embd, np.nan)), "NaN"),
    (lambda c: interp.add("resid_pre.0", np.ones(c.n_embd), positions=[-1]), "positions must be"),
    (lambda c: interp.scale_heads(0, [c.n_head], 0.0, c.n_head, c.head_dim), "heads must be"),
    (lambda c: "not an intervention", "not an Intervention"),
])
def test_bad_interventions_are_refused_and_change_nothing(model, ids, make, message):
    base = model.logits(ids)
    with pytest.raises(Phi2Error, match=message):
        with model.intervene(make(model.config)):
            pass
    assert model.interventions == ()
    np.testing.assert_array_equal(model.logits(ids), base)


# --- batches and tensors ---------------------------------------------------------------------------
def test_batched_capture_equals_one_prompt_at_a_time(f32_path, ids):
    m = phi2cpu.load(f32_path, threads=2, n_ctx=64, repack_cache=False, kv_type="f32")
    prompts = ["def add(a, b):\n    return a + b", list(ids[:50]), "import os", list(ids[20:60]), "x = 1"]
    names = ["attn_probs.*", "head_out.1", "resid_post.*", "ln_final"]
    batch = m.run_with_cache(prompts, names=names, interventions=interp.steer(np.ones(256), layers=2, positions=[3]))
    assert len(batch) == len(prompts) and m.n_past == 0
    for p, cache in zip(prompts, batch):
        one = m.run_with_cache(p, names=names, interventions=interp.steer(np.ones(256), layers=2, positions=[3]))
        assert cache.tokens == one.tokens and set(cache) == set(one)
        for k in one:
            np.testing.assert_allclose(cache[k], one[k], rtol=0, atol=1e-5 * np.abs(one[k]).max())
        np.testing.assert_allclose(cache.logits, one.logits, rtol=0, atol=1e-5 * np.abs(one.logits).max())


def test_dlpack_export_shares_memory(model, ids):
    pytest.importorskip("torch", reason="torch is not installed")
    cache = model.run_with_cache(ids[:16], names=["resid_post.2", "attn_probs.1", "head_out.0"])
    assert isinstance(cache["resid_post.2"], np.ndarray)  # NumPy is the default
    tensors = cache.to_torch()
    for k, t in tensors.items():
        assert t.data_ptr() == cache[k].ctypes.data and tuple(t.shape) == cache[k].shape
    tensors["resid_post.2"][0, 0] = 12345.0
    assert cache["resid_post.2"][0, 0] == 12345.0
    batch = model.run_with_cache([ids[:9], ids[:5]], names=["attn_probs.0"])
    t = batch[1].torch("attn_probs.0")  # a strided view into the packed array
    assert t.data_ptr() == batch[1]["attn_probs.0"].ctypes.data and tuple(t.shape) == (4, 5, 5)
    np.testing.assert_array_equal(t.numpy(), batch[1]["attn_probs.0"])


# --- logit lens and attribution --------------------------------------------------------------------
def test_logit_lens_is_the_final_norm_and_head_on_each_layer(model, ref, ids):
    cfg, w = ref
    cache = model.run_with_cache(ids[:20], names=["resid_pre.0", "resid_post.*"])
    lens = model.logit_lens(cache)
    assert lens.shape == (cfg.n_layer + 1, 20, cfg.n_vocab)
    assert rel(lens[-1], cache.logits) <= CAPTURE_REL
    for layer in (0, 3):
        x = cache["resid_pre.0"] if layer == 0 else cache[f"resid_post.{layer - 1}"]
        h = reference.layer_norm(x, w["output_norm.weight"], w["output_norm.bias"], cfg.norm_eps)
        assert rel(lens[layer], h @ w["output.weight"].T + w["output.bias"]) <= CAPTURE_REL
    assert model.logit_lens(cache, positions=[4, 7]).shape == (cfg.n_layer + 1, 2, cfg.n_vocab)
    with pytest.raises(Phi2Error, match="needs resid_post"):
        model.logit_lens(model.run_with_cache(ids[:5], names=["resid_pre.0"]))


def test_direct_logit_attribution_adds_up_and_matches_a_direct_computation(model, ref, ids):
    cfg, w = ref
    cache = model.run_with_cache(ids[:30])
    toks = [int(np.argmax(cache.logits[-1])), 13, 4000]
    dla = model.direct_logit_attribution(cache, toks, position=-1)
    assert len(dla) == 2 + 2 * cfg.n_layer
    total = sum(dla.values())
    np.testing.assert_allclose(total, cache.logits[-1, toks], rtol=0, atol=1e-4 * np.abs(cache.logits).max())
    # one component written out from the reference weights
    r = cache["resid_post.5"][-1].astype(np.float64)
    c = cache["mlp_out.3"][-1].astype(np.float64)
    direct = w["output.weight"][toks] @ ((c - c.mean()) / np.sqrt(r.var() + cfg.norm_eps) * w["output_norm.weight"])
    np.testing.assert_allclose(dla["mlp_out.3"], direct, rtol=1e-5, atol=1e-5)
    per_head = model.direct_logit_attribution(cache, toks, position=-1, heads=True)
    for layer in range(cfg.n_layer):
        parts = sum(per_head[f"head.{layer}.{h}"] for h in range(cfg.n_head)) + per_head[f"attn_bias.{layer}"]
        np.testing.assert_allclose(parts, dla[f"attn_out.{layer}"], rtol=1e-4, atol=1e-4)
    with pytest.raises(Phi2Error, match="tokens must be"):
        model.direct_logit_attribution(cache, [cfg.n_vocab])
