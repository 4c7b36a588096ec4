import math

import numpy as np
import pytest

from fakes import (TINY_EOS, TINY_MODEL_VOCAB, FakeModel, onehot, scripted, scripted_model, table_model,
                   tiny_tokenizer)
from phi2cpu.errors import ContextFullError, Phi2Error, SamplingError
from phi2cpu.generate import GenerationStats, generate, generate_tokens
from phi2cpu.perplexity import PerplexityResult, perplexity
from phi2cpu.sampling import SamplingParams

GREEDY = dict(temperature=0)


def run_both(model_factory, **kw):
    """Text from stream=False and the pieces from stream=True, on fresh models."""
    text = generate(model_factory(), **kw)
    pieces = list(generate(model_factory(), stream=True, **kw))
    assert "".join(pieces) == text
    return text, pieces


def test_greedy_follows_script_and_stops_at_eos():
    m = scripted_model("say ", "hello world")
    assert generate(m, "say ", **GREEDY) == "hello world"
    n_prompt = len(m.tokenizer.encode("say "))
    n_out = len(m.tokenizer.encode("hello world"))
    # one prefill, then one call per generated token except the last (the eos is only sampled)
    assert m.calls[0] == m.tokenizer.encode("say ")
    assert [len(c) for c in m.calls[1:]] == [1] * n_out
    assert m.resets == 1 and m.n_past == n_prompt + n_out


def test_eos_text_is_not_emitted_and_stats():
    m = scripted_model("x", "ab")
    stream = generate(m, "x", stream=True, **GREEDY)
    assert "".join(stream) == "ab"
    st = stream.stats
    assert st.stop_reason == "eos"
    assert st.prompt_tokens == 1 and st.generated_tokens == 3  # a, b, eos
    assert st.prompt_seconds >= 0 and st.gen_seconds > 0
    assert "prompt: 1 tokens" in st.summary() and "generated: 3 tokens" in st.summary()


def test_max_tokens():
    m = scripted_model("x", "abcdefgh")
    stream = generate(m, "x", max_tokens=3, stream=True, **GREEDY)
    assert "".join(stream) == "abc"
    assert stream.stats.stop_reason == "max_tokens"
    assert len(m.calls) == 3  # prefill + 2 single-token calls; the 3rd token is never evaluated


@pytest.mark.parametrize("stop, expected", [
    (["lo w"], "hel"),            # spans the tokens "llo", "Ġw"
    (["world", "o w"], "hell"),   # the earliest match wins
    (["\n"], "hello world élan d"),   # never matches
    (["d!"], "hello world élan d"),   # "d" held back, then released at the end
    (["é"], "hello world "),      # a two-token character
    (["h"], ""),                  # stop at the very start
])
def test_stop_strings(stop, expected):
    out = "hello world élan d"
    text, pieces = run_both(lambda: scripted_model("x", out), prompt="x", stop=stop, **GREEDY)
    assert text == expected
    assert all(pieces) and not any(s in p for p in pieces for s in stop)


def test_stop_reason_and_no_extra_evals_after_stop():
    m = scripted_model("x", "abc STOP def")
    stream = generate(m, "x", stop=["STOP"], stream=True, **GREEDY)
    assert "".join(stream) == "abc "
    assert stream.stats.stop_reason == "stop_string"
    assert m.n_past <= 1 + len("abc STOP")


def test_stream_holds_back_partial_stop():
    pieces = list(generate(scripted_model("x", "abcXYZdef"), "x", stop=["XYQ"], stream=True, **GREEDY))
    assert "".join(pieces) == "abcXYZdef"
    # "X" and "XY" might start the stop string: they come out only once "Z" rules it out
    assert pieces[:3] == ["a", "b", "c"] and pieces[3] == "XYZ"


def test_split_characters_come_out_whole():
    pieces = list(generate(scripted_model("x", "aé😀"), "x", stream=True, **GREEDY))
    assert pieces == ["a", "é", "😀"]


def test_prompt_longer_than_context():
    m = scripted_model("", "a", n_ctx=8)
    with pytest.raises(ContextFullError, match="prompt is 8 tokens; the context holds 8"):
        generate(m, "abcdefgh", **GREEDY)
    assert m.calls == []


def test_clamps_to_context():
    m = scripted_model("abcde", "0123456789", n_ctx=8)
    stream = generate(m, "abcde", max_tokens=100, stream=True, **GREEDY)
    assert "".join(stream) == "012"
    assert stream.stats.stop_reason == "context_full"
    assert m.n_past <= m.n_ctx


def test_empty_prompt_starts_from_endoftext():
    m = scripted_model("", "hi")
    assert generate(m, "", **GREEDY) == "hi"
    assert m.calls[0] == [TINY_EOS]


def test_seeded_sampling_is_reproducible():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(TINY_MODEL_VOCAB, TINY_MODEL_VOCAB)).astype(np.float32) * 3
    table[:, TINY_EOS] = -1e9

    def make():
        return FakeModel(lambda h: table[h[-1]])

    kw = dict(prompt="hello", max_tokens=20, temperature=1.0, top_k=0, top_p=1.0)
    a, _ = run_both(make, seed=5, **kw)
    b = generate(make(), seed=5, **kw)
    c = generate(make(), seed=6, **kw)
    assert a == b != c


def test_padding_ids_never_generated():
    # every row puts 1000 on the padding ids; greedy and sampling must both ignore them
    m = FakeModel(lambda h: onehot(ord("z")))
    assert generate(m, "x", max_tokens=4, **GREEDY) == "zzzz"
    assert generate(m, "x", max_tokens=4, temperature=1.0, seed=0) == "zzzz"


@pytest.mark.parametrize("kw, name", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=2.0), "max_tokens"), (dict(max_tokens=True), "max_tokens"),
    (dict(stop="abc"), "stop"), (dict(stop=[""]), "stop"), (dict(stop=[1]), "stop"),
    (dict(temperature=-1), "temperature"), (dict(top_k=-2), "top_k"),
    (dict(top_p=0), "top_p"), (dict(seed=-1), "seed"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_arguments_raise_before_model_work(kw, name, stream):
    m = scripted_model("x", "abc")
    with pytest.raises(SamplingError, match=name):
        generate(m, "x", stream=stream, **kw)
    assert m.calls == [] and m.resets == 0


def test_invalid_prompt_text():
    m = scripted_model("x", "abc")
    with pytest.raises(Phi2Error, match="prompt is not valid UTF-8"):
        generate(m, b"\xffabc".decode("utf-8", "surrogateescape"))
    with pytest.raises(SamplingError, match="prompt must be a str"):
        generate(m, b"abc")


def test_generate_tokens_low_level():
    tok = tiny_tokenizer()
    out = tok.encode("abc")
    m = FakeModel(scripted(2, out), tokenizer=tok)
    stats = GenerationStats()
    ids = list(generate_tokens(m, [1, 2], SamplingParams(temperature=0), max_tokens=10, stats=stats))
    assert ids == out and stats.stop_reason == "eos" and stats.prompt_tokens == 2


# -- perplexity --------------------------------------------------------------------------------

def hand_nll(row, target):
    row = [float(v) for v in row]
    m = max(row)
    return m + math.log(math.fsum(math.exp(v - m) for v in row)) - row[target]


def test_perplexity_matches_hand_computation():
    model, table = table_model()
    text = "the quick brown fox jumps over the lazy dog, " * 3
    ids = model.tokenizer.encode(text)
    window = 10
    n_windows = len(ids) // window
    nlls = []
    for w in range(n_windows):
        chunk = ids[w * window:(w + 1) * window]
        nlls += [hand_nll(table[chunk[t]], chunk[t + 1]) for t in range(window - 1)]
    res = perplexity(model, text, window=window)
    assert isinstance(res, PerplexityResult)
    assert res.n_windows == n_windows and res.n_scored == n_windows * (window - 1)
    assert res.nll_mean == pytest.approx(math.fsum(nlls) / len(nlls), rel=1e-12)
    assert res.ppl == pytest.approx(math.exp(res.nll_mean), rel=1e-12)
    # a fresh cache per window, the whole window in one call with all logits
    assert model.resets == n_windows and [len(c) for c in model.calls] == [window] * n_windows

    res2 = perplexity(model, text, window=window, max_windows=2)
    assert res2.n_windows == 2 and res2.n_scored == 2 * (window - 1)


def test_perplexity_errors():
    model, _ = table_model(n_ctx=16)
    with pytest.raises(Phi2Error, match="one window needs"):
        perplexity(model, "abc", window=8)
    with pytest.raises(ContextFullError, match="window is 32 tokens; the context holds 16"):
        perplexity(model, "abc" * 20, window=32)
    with pytest.raises(Phi2Error, match="window"):
        perplexity(model, "abc" * 20, window=1)
    with pytest.raises(Phi2Error, match="max_windows"):
        perplexity(model, "abc" * 20, window=4, max_windows=0)


def test_reuse_prefix_processes_only_the_new_tokens():
    m, table = table_model(n_ctx=64)
    first = generate(m, "hello", max_tokens=5, **GREEDY)
    cached = m.tokens
    calls = len(m.calls)
    stream = generate(m, "hello" + first + " world", max_tokens=3, stream=True, reuse_prefix=True, **GREEDY)
    text = "".join(stream)
    new_ids = m.tokenizer.encode("hello" + first + " world")
    st = stream.stats
    common = next(i for i, (a, b) in enumerate(zip(cached + [-1], new_ids)) if a != b)
    assert st.prompt_tokens == len(new_ids) and st.prompt_evaluated == len(new_ids) - common
    assert m.calls[calls] == new_ids[common:]  # the prefill saw only the part not in the cache
    assert m.resets == 1                       # the second call did not empty the cache
    # the same text as a run from an empty cache
    assert text == generate(table_model()[0], "hello" + first + " world", max_tokens=3, **GREEDY)


def test_reuse_prefix_keeps_one_token_to_evaluate():
    m, _ = table_model()
    generate(m, "abc", max_tokens=2, **GREEDY)
    ids = m.tokens  # the prompt and the tokens generated after it, all in the cache
    stats = GenerationStats()
    list(generate_tokens(m, ids, SamplingParams(temperature=0), max_tokens=1, stats=stats, reuse_prefix=True))
    assert stats.prompt_evaluated == 1 and m.calls[-1] == ids[-1:]


def test_logprobs_of_sampled_tokens():
    m, table = table_model()
    stream = generate(m, "ab", max_tokens=4, stream=True, temperature=1.0, seed=3)
    list(stream)
    st = stream.stats
    assert len(st.token_ids) == len(st.token_logprobs) == st.generated_tokens - (st.stop_reason == "eos")
    prev = m.tokenizer.encode("ab")[-1]
    for tok, lp in zip(st.token_ids, st.token_logprobs):
        row = table[prev].astype(np.float64)
        expect = row[tok] - row.max() - math.log(np.exp(row - row.max()).sum())
        assert lp == pytest.approx(expect, abs=1e-9) and lp <= 0
        prev = tok
    assert st.finish_reason in ("stop", "length")


def test_penalties_reach_the_sampler_through_generate():
    m = scripted_model("x", "aaaa")
    # the script makes 'a' overwhelmingly likely; a ban through logit_bias must win anyway
    a = m.tokenizer.encode("a")[0]
    out = generate(m, "x", max_tokens=4, logit_bias={a: -math.inf}, **GREEDY)
    assert "a" not in out
    with pytest.raises(SamplingError, match="unknown sampling option"):
        generate(m, "x", top_q=0.3)
