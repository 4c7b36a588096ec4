"""The research API on the trained phi2-mini-code: hidden states, token log-probs, perplexity,
saved prompt caches and completions with log-probs."""
from __future__ import annotations

import numpy as np
import pytest

import phi2cpu
from phi2cpu import reference
from phi2cpu.errors import ContextFullError, ModelFileError, Phi2Error
from phi2cpu.perplexity import perplexity
from phi2cpu.quantize import quantize

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n"


@pytest.fixture(scope="module")
def f32_path(mini_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "mini.f32.gguf"
    quantize(mini_dir, out, "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def model(f32_path):
    return phi2cpu.load(f32_path, threads=2, n_ctx=512, kv_type="f32")


def test_hidden_states_match_the_reference(model, f32_path):
    ids = model.tokenize(PROMPT)
    cfg, w = reference.load_reference_weights(f32_path)
    want = reference.reference_hidden_states(cfg, w, ids, kv_type=model.kv_type)
    got = model.hidden_states(ids)
    assert got.shape == (cfg.n_layer + 1, len(ids), cfg.n_embd) and got.dtype == np.float32
    for layer in range(cfg.n_layer + 1):
        err = np.abs(got[layer] - want[layer]).max() / np.abs(want[layer]).max()
        assert err < 1e-5, f"layer {layer}: relative error {err:.2e}"
    # a subset, negative indices, and text input give the same rows
    sub = model.hidden_states(PROMPT, layers=[-1, 0, 2])
    np.testing.assert_array_equal(sub, got[[cfg.n_layer, 0, 2]])
    assert model.tokens == ids  # the cache holds the sequence afterwards


def test_hidden_states_match_transformers(model, mini_dir):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    hf = transformers.PhiForCausalLM.from_pretrained(mini_dir, torch_dtype=torch.float32).eval()
    ids = model.tokenize(PROMPT)
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True)
    hs = [h[0].numpy() for h in out.hidden_states]
    got = model.hidden_states(ids)
    # HF's last entry has the final LayerNorm applied; ours is the raw residual stream
    for layer in range(len(hs) - 1):
        err = np.abs(got[layer] - hs[layer]).max() / np.abs(hs[layer]).max()
        assert err < 1e-4, f"layer {layer}: {err:.2e}"
    ln = hf.model.final_layernorm
    with torch.no_grad():
        last = ln(torch.from_numpy(got[-1])).numpy()
    assert np.abs(last - hs[-1]).max() / np.abs(hs[-1]).max() < 1e-4


def test_hidden_states_rejects_bad_layers(model):
    n = model.config.n_layer + 1
    for bad in ([n], [-n - 1], [], [1.5]):
        with pytest.raises(Phi2Error, match="layer"):
            model.hidden_states([1, 2, 3], layers=bad)


def test_token_logprobs_agree_with_perplexity(model, eval_text):
    text = eval_text[:3000]
    ids = model.tokenize(text)[:256]
    lp = model.token_logprobs(ids)
    assert lp.shape == (len(ids) - 1,) and (lp <= 0).all()
    res = model.perplexity(model.detokenize(ids), window=128)
    direct = perplexity(model, model.detokenize(ids), window=128)
    assert res.ppl == pytest.approx(direct.ppl, rel=1e-12)
    first = model.token_logprobs(ids[:128])
    assert float(np.exp(-first.mean())) == pytest.approx(
        np.exp(perplexity(model, model.detokenize(ids[:128]), window=128).nll_mean), rel=1e-4)


def test_complete_reports_logprobs_of_what_it_generated(model):
    c = model.complete(PROMPT, max_tokens=12, temperature=0)
    assert len(c.token_ids) == len(c.token_logprobs) and c.finish_reason in ("stop", "length")
    assert c.text == model.generate(PROMPT, max_tokens=12, temperature=0)
    # scoring prompt + generated ids gives the same log-probs for the generated part
    ids = model.tokenize(PROMPT)
    scored = model.token_logprobs(ids + c.token_ids)[len(ids) - 1:]
    np.testing.assert_allclose(c.token_logprobs, scored, atol=2e-3)


def test_save_and_load_state_reuses_a_prompt(model, f32_path, tmp_path):
    ids = model.tokenize(PROMPT * 3)
    model.reset()
    want = model.eval(ids)
    path = tmp_path / "prompt.state"
    model.save_state(path)
    fresh = phi2cpu.load(f32_path, threads=1, n_ctx=512, kv_type=model.kv_type)
    fresh.load_state(path)
    assert fresh.n_past == len(ids) and fresh.tokens == ids
    nxt = int(np.argmax(want[:50295]))
    np.testing.assert_allclose(fresh.eval([nxt]), model.eval([nxt]), rtol=0, atol=1e-4)
    # generation that reuses the loaded cache processes only the new token
    fresh.load_state(path)
    stream = fresh.generate(model.detokenize(ids) + "x", max_tokens=2, temperature=0, stream=True,
                            reuse_prefix=True)
    list(stream)
    assert stream.stats.prompt_evaluated < 5


def test_load_state_rejects_bad_files_and_keeps_the_cache(model, f32_path, mini_dir, tmp_path):
    model.reset()
    model.eval([1, 2, 3])
    garbage = tmp_path / "garbage.state"
    garbage.write_bytes(b"not a state file at all")
    with pytest.raises(ModelFileError, match="not a phi2cpu state file"):
        model.load_state(garbage)
    with pytest.raises(OSError):
        model.load_state(tmp_path / "missing.state")
    model.save_state(tmp_path / "good.state")
    data = (tmp_path / "good.state").read_bytes()
    (tmp_path / "cut.state").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a phi2cpu state file"):
        model.load_state(tmp_path / "cut.state")
    q8 = tmp_path / "mini.q8_0.gguf"
    quantize(mini_dir, q8, "q8_0", progress=False)
    other = phi2cpu.load(q8, threads=1, n_ctx=512)
    other.eval([5, 6])
    other.save_state(tmp_path / "other.state")
    with pytest.raises(ModelFileError, match="different model"):
        model.load_state(tmp_path / "other.state")
    small = phi2cpu.load(f32_path, threads=1, n_ctx=2)
    with pytest.raises(ContextFullError):
        model.save_state(tmp_path / "three.state")
        small.load_state(tmp_path / "three.state")
    assert model.tokens == [1, 2, 3] and model.n_past == 3
