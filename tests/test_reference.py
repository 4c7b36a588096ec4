"""The NumPy oracle: sanity, causality, GGUF/HF weight loading, and agreement with HF transformers."""
from __future__ import annotations

import numpy as np
import pytest

from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.quantize import quantize
from phi2cpu.reference import N_TOKENIZER_VOCAB, load_reference_weights, reference_greedy, reference_logits

TINY = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 320, "vocab_size": 512, "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "hidden_act": "gelu_new",
        "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fp32 random checkpoint; std 0.08 makes attention scores O(1) so position errors show."""
    return write_random_checkpoint(tmp_path_factory.mktemp("ref"), TINY, seed=7, shards=1, dtype="float32", std=0.08)


def test_logits_finite_and_causal(tiny):
    cfg, w = load_reference_weights(tiny)
    ids = np.random.default_rng(0).integers(0, cfg.n_vocab, 40)
    full = reference_logits(cfg, w, ids)
    assert full.shape == (40, cfg.n_vocab) and full.dtype == np.float32 and np.isfinite(full).all()
    assert full.std() > 0.1
    np.testing.assert_allclose(reference_logits(cfg, w, ids[:25]), full[:25], rtol=0, atol=1e-5 * np.abs(full).max())


def test_greedy_masks_untokenized_ids(tiny):
    cfg, w = load_reference_weights(tiny)
    w = dict(w)
    big = np.zeros(N_TOKENIZER_VOCAB + 10, np.float32)
    w["token_embd.weight"] = np.resize(w["token_embd.weight"], (big.size, cfg.n_embd))
    w["output.weight"] = np.resize(w["output.weight"], (big.size, cfg.n_embd))
    big[N_TOKENIZER_VOCAB + 3] = 1e4   # the best logit, but it has no token
    big[300] = 50.0
    w["output.bias"] = big
    assert reference_greedy(cfg, w, [1, 2, 3], 3) == [300, 300, 300]


def test_gguf_weights_match_checkpoint(tmp_path, phi2_dir):
    cfg = dict(TINY, vocab_size=51200)  # the tokenizer needs the full embedding table
    src = write_random_checkpoint(tmp_path / "ck", cfg, seed=7, shards=2, dtype="float32", tokenizer_dir=phi2_dir)
    quantize(src, tmp_path / "m.gguf", "f32", progress=False)
    c1, w1 = load_reference_weights(src)
    c2, w2 = load_reference_weights(tmp_path / "m.gguf")
    assert c1.n_embd == c2.n_embd and set(w1) == set(w2)
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    quantize(src, tmp_path / "q.gguf", "q8_0", progress=False)
    _, wq = load_reference_weights(tmp_path / "q.gguf")
    ids = [5, 900, 50256, 17, 3]
    a, b = reference_logits(c1, w1, ids), reference_logits(c2, wq, ids)
    assert np.abs(a - b).max() < 0.02 * np.abs(a).max()


def _hf_logits(path, ids):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    model = transformers.PhiForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))[None]).logits[0].float().numpy()


def _assert_close(ours, hf):
    err = np.abs(ours - hf).max(axis=1) / np.abs(hf).max()
    assert err.max() < 1e-4, f"max relative error {err.max():.2e} at position {err.argmax()}"


def test_matches_transformers_300_positions(tiny):
    ids = np.random.default_rng(1).integers(0, TINY["vocab_size"], 300)
    hf = _hf_logits(tiny, ids)
    cfg, w = load_reference_weights(tiny)
    _assert_close(reference_logits(cfg, w, ids), hf)


def test_matches_transformers_on_trained_mini(mini_dir):
    ids = np.random.default_rng(2).integers(0, N_TOKENIZER_VOCAB, 64)
    hf = _hf_logits(mini_dir, ids)
    cfg, w = load_reference_weights(mini_dir)
    _assert_close(reference_logits(cfg, w, ids), hf)
