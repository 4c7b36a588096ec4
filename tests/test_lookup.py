"""Prompt-lookup speculative decoding: the guesses, the loop on a fake model, greedy output equal to
plain decoding's on the real mini model, and the sampling distribution kept (chi-square tests)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from fakes import TINY_MODEL_VOCAB, FakeModel, scripted_model, table_model
from phi2cpu.errors import SamplingError
from phi2cpu.generate import GenerationStats, generate, generate_tokens
from phi2cpu.lookup import LookupParams, lookup_params, propose
from phi2cpu.sampling import Sampler, SamplingParams, sampling_params

GREEDY = dict(temperature=0)
FIXED = dict(adaptive=False)  # every step guesses all it can: reproducible model calls


def test_propose_takes_the_latest_match_of_the_longest_ngram():
    h = [1, 2, 3, 9, 1, 2, 4, 5, 6, 1, 2]
    assert propose(h, 3, ngram_max=2) == [4, 5, 6]        # "1 2" last seen before 4 5 6
    assert propose(h, 1, ngram_max=2) == [4]
    assert propose(h + [7], 4, ngram_max=3) == []          # "2 7", "7" never seen before
    assert propose([5, 6, 7, 5, 6], 8, ngram_max=3) == [7, 5, 6]  # runs up to the end
    h2 = [1, 2, 3, 7, 2, 3, 8, 9, 3]
    assert propose(h2, 2, ngram_max=1) == [8, 9]           # unigram "3": its latest earlier match
    assert propose([4, 1, 2, 3, 5, 2, 3], 2, ngram_max=3, ngram_min=3) == []
    assert propose([4, 1, 2, 3, 5, 2, 3], 2, ngram_max=3, ngram_min=2) == [5, 2]
    assert propose([3], 4, ngram_max=3) == []


@pytest.mark.parametrize("value, expected", [
    (None, None), (False, None), (True, LookupParams()), (4, LookupParams(k=4)),
    ({"k": 2, "ngram_max": 4, "ngram_min": 2}, LookupParams(2, 4, 2)),
])
def test_lookup_params_forms(value, expected):
    assert lookup_params(value) == expected


@pytest.mark.parametrize("value, words", [
    (0, "k"), (65, "k"), ({"k": 2, "n": 1}, "unknown lookup option 'n'"), ({"ngram_min": 0}, "ngram_min"),
    ({"ngram_min": 3, "ngram_max": 2}, "must not exceed"), ("yes", "lookup must be"), (2.0, "lookup must be"),
    ({"adaptive": 1}, "adaptive"),
])
def test_bad_lookup_settings_are_refused_before_any_model_work(value, words):
    m = scripted_model("x", "ab")
    with pytest.raises(SamplingError, match=words):
        generate(m, "x", lookup=value, **GREEDY)
    assert m.calls == []


def _repeating_model():
    text = "ab cd ef ab cd ef ab cd gh ab cd ef"
    return lambda: scripted_model("ab cd ef ", text)


def test_greedy_lookup_matches_plain_with_fewer_calls():
    plain_m, look_m = _repeating_model()(), _repeating_model()()
    plain = generate(plain_m, "ab cd ef ", max_tokens=64, **GREEDY)
    stream = generate(look_m, "ab cd ef ", max_tokens=64, stream=True, lookup=dict(k=4, **FIXED), **GREEDY)
    assert "".join(stream) == plain == "ab cd ef ab cd ef ab cd gh ab cd ef"
    st = stream.stats
    assert len(look_m.calls) < len(plain_m.calls)
    assert 0 < st.accepted_tokens < st.drafted_tokens and st.lookup_steps > 0
    assert max(len(c) for c in look_m.calls[1:]) == 5       # the last token and 4 guessed ones
    assert look_m.tokens == look_m.tokenizer.encode("ab cd ef " + plain)  # rejected guesses cut off
    assert "guessed tokens kept" in st.summary()


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7, 20])
def test_max_tokens_and_the_cache_stay_within_bounds(max_tokens):
    m_plain, m_look = _repeating_model()(), _repeating_model()()
    a = generate(m_plain, "ab cd ef ", max_tokens=max_tokens, stream=True, **GREEDY)
    b = generate(m_look, "ab cd ef ", max_tokens=max_tokens, stream=True, lookup=dict(k=8, **FIXED), **GREEDY)
    assert "".join(a) == "".join(b)
    assert a.stats.token_ids == b.stats.token_ids and b.stats.generated_tokens == max_tokens
    assert b.stats.stop_reason == "max_tokens"
    assert m_look.n_past <= len(m_look.tokenizer.encode("ab cd ef ")) + max_tokens - 1 + 1


def test_context_limit_is_respected():
    m = table_model(n_ctx=24)[0]
    plain = generate(table_model(n_ctx=24)[0], "hello", max_tokens=100, stream=True, **GREEDY)
    text = "".join(plain)
    look = generate(m, "hello", max_tokens=100, stream=True, lookup=dict(k=8, **FIXED), **GREEDY)
    assert "".join(look) == text and look.stats.stop_reason == plain.stats.stop_reason == "context_full"


@pytest.mark.parametrize("stop", [["gh"], ["ef ab"], ["zz"]])
def test_stop_strings_and_streaming(stop):
    a = generate(_repeating_model()(), "ab cd ef ", stop=stop, **GREEDY)
    pieces = list(generate(_repeating_model()(), "ab cd ef ", stop=stop, stream=True, lookup=3, **GREEDY))
    assert "".join(pieces) == a and len(pieces) > 1


def test_logprobs_and_top_logprobs_match_plain_on_a_fake_model():
    def run(lookup):
        m, _ = table_model()
        st = GenerationStats()
        ids = m.tokenizer.encode("hello hello hello")
        toks = list(generate_tokens(m, ids, sampling_params(**GREEDY), 30, st, top_logprobs=3, lookup=lookup))
        return toks, st
    (a, sa), (b, sb) = run(None), run(dict(k=4, **FIXED))
    assert a == b and sa.token_logprobs == sb.token_logprobs and sa.top_logprobs == sb.top_logprobs
    assert sb.drafted_tokens > 0


def test_adaptive_policy_stops_guessing_when_guesses_fail():
    """A model whose next token never repeats history: after the first misses, no more guesses."""
    n = TINY_MODEL_VOCAB

    def fn(history):
        row = np.zeros(n, np.float32)
        row[(len(history) * 7) % 250] = 50.0  # a fresh-looking token each step, never eos
        return row
    m = FakeModel(fn, n_ctx=512)
    st = GenerationStats()
    ids = m.tokenizer.encode("abcdefgh")
    list(generate_tokens(m, ids, sampling_params(**GREEDY), 200, st, lookup=True))
    assert st.generated_tokens == 200
    assert st.lookup_steps <= 10 and st.accepted_tokens == 0


# --- the real mini model --------------------------------------------------------------------

PROMPTS = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n"
    "def fib_memo(n, memo=None):\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name)\nfor name in os.listdir('..'):\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "class Point3:\n    def __init__(self, x, y, z):\n",
]


@pytest.fixture(scope="module")
def mini():
    import phi2cpu

    return phi2cpu.load(phi2cpu.default_model_path(), n_ctx=512)


def _greedy_run(model, prompt, lookup):
    s = model.generate(prompt, max_tokens=40, stream=True, lookup=lookup, **GREEDY)
    text = "".join(s)
    return text, s.stats


# Every kernel sums each output in one fixed order whatever the batch (csrc/kernels/dispatch.h), so a
# verify pass of 1 + k tokens gives the bytes plain decoding gives.
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_lookup_is_bit_identical_on_the_mini_model(mini, k):
    for prompt in PROMPTS:
        text, st = _greedy_run(mini, prompt, None)
        for params in (dict(k=k, **FIXED), dict(k=k)):  # a fixed guess length, and the adaptive policy
            text_l, st_l = _greedy_run(mini, prompt, params)
            assert (text_l, st_l.token_ids, st_l.stop_reason) == (text, st.token_ids, st.stop_reason)
            assert st_l.token_logprobs == st.token_logprobs  # bit-equal logits at every position
            if params.get("adaptive") is False:
                assert st_l.accepted_tokens > 0


# --- the sampling distribution ----------------------------------------------------------------

def chi2_pvalue(observed, expected) -> float:
    """Upper tail of Pearson's chi-square statistic, by the Wilson-Hilferty approximation (bins with
    an expected count below 5 are pooled)."""
    obs, exp = np.asarray(observed, float), np.asarray(expected, float)
    small = exp < 5
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        exp = np.append(exp[~small], exp[small].sum())
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = exp.size - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def wrong_verify(sampler, logits, history, draft):
    """A broken rule: keep the guess with probability p(x), else draw from the full p again."""
    ids, probs = sampler._choices(sampler.adjusted_logits(logits, history))
    ids = ids if ids is not None else np.arange(probs.size)
    hit = np.flatnonzero(ids == draft)
    if hit.size and sampler.rng.random() * probs.sum() < probs[hit[0]]:
        return draft
    return sampler._draw(ids, probs)


SMALL_LOGITS = np.log(np.array([0.35, 0.25, 0.2, 0.1, 0.06, 0.04], np.float32))


@pytest.mark.parametrize("settings", [dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
                                      dict(temperature=0.7, top_k=4, top_p=0.9, min_p=0.0)])
@pytest.mark.parametrize("draft", [0, 3, 5])
def test_verify_keeps_the_distribution_of_sample(settings, draft):
    n = 8000
    ref = Sampler(SamplingParams(seed=1, **settings), n_valid=6)
    expected_ids, probs = ref._choices(SMALL_LOGITS)
    p = np.zeros(6)
    p[expected_ids if expected_ids is not None else np.arange(6)] = probs / probs.sum()
    s = Sampler(SamplingParams(seed=2, **settings), n_valid=6)
    got = Counter(s.verify(SMALL_LOGITS, (), draft) for _ in range(n))
    observed = [got[i] for i in range(6) if p[i] > 0]
    assert sum(observed) == n
    assert chi2_pvalue(observed, n * p[p > 0]) > 1e-3
    w = Sampler(SamplingParams(seed=2, **settings), n_valid=6)
    bad = Counter(wrong_verify(w, SMALL_LOGITS, (), draft) for _ in range(n))
    if p[draft] > 0:  # the broken rule over-weights the guess: the same test must catch it
        assert chi2_pvalue([bad[i] for i in range(6) if p[i] > 0], n * p[p > 0]) < 1e-6


def test_verify_is_greedy_when_sampling_is():
    s = Sampler(SamplingParams(temperature=0), n_valid=6)
    assert s.verify(SMALL_LOGITS, (), 3) == 0 and s.verify(SMALL_LOGITS, (), 0) == 0


def _sequence_distribution(model, ids, params, length):
    """The exact distribution of the first `length` sampled tokens (plain sampling's), by walking
    every kept candidate (top_k keeps the tree small)."""
    out = {}
    sampler = Sampler(params, n_valid=min(model.tokenizer.n_vocab, model.config.n_vocab))

    def walk(prefix, prob):
        if len(prefix) == length:
            out[tuple(prefix)] = prob
            return
        model.reset()
        row = model.eval(ids + prefix)
        cand, p = sampler._choices(sampler.adjusted_logits(row, ids + prefix))
        p = p / p.sum()
        for c, q in zip(cand, p):
            walk(prefix + [int(c)], prob * float(q))
    walk([], 1.0)
    return out


def test_sampling_with_lookup_keeps_the_mini_models_distribution(mini, monkeypatch):
    prompt = "for i in range(10):\n    print(i)\nfor i in range(10):\n    print("
    ids = mini.tokenize(prompt)
    settings = dict(temperature=1.5, top_k=2, top_p=1.0, min_p=0.0)
    length = 3
    exact = _sequence_distribution(mini, ids, SamplingParams(**settings), length)
    seqs = sorted(exact)
    expected = np.array([exact[s] for s in seqs])

    def counts(runs):
        mini.reset()
        last = mini.eval(ids)
        got, guessed = Counter(), 0
        for seed in range(runs):
            mini.truncate(len(ids))
            st = GenerationStats()
            toks = list(generate_tokens(mini, ids, sampling_params(seed=seed, **settings), length, st,
                                        prefilled=last, lookup=dict(k=1, **FIXED)))
            got[tuple(toks)] += 1
            guessed += st.drafted_tokens
        return [got[s] for s in seqs], sum(got.values()), guessed

    runs = 600
    observed, total, guessed = counts(runs)
    assert total == runs and guessed > runs // 2  # most runs verified a guess
    assert chi2_pvalue(observed, runs * expected) > 1e-3
    monkeypatch.setattr(Sampler, "verify", wrong_verify)
    observed, _, _ = counts(runs)
    assert chi2_pvalue(observed, runs * expected) < 1e-3  # the broken rule is caught


# --- constraints -------------------------------------------------------------------------------

def test_lookup_with_a_json_schema_matches_plain(mini):
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
              "required": ["a", "b"], "additionalProperties": False}
    prompt = 'x = {"a": "hello world", "b": "hello world"}\ny = '
    for k in (1, 2, 8):
        plain = mini.generate(prompt, max_tokens=40, json_schema=schema, stream=True, **GREEDY)
        text = "".join(plain)
        look = mini.generate(prompt, max_tokens=40, json_schema=schema, stream=True,
                             lookup=dict(k=k, **FIXED), **GREEDY)
        assert "".join(look) == text and look.stats.stop_reason == plain.stats.stop_reason
        assert look.stats.drafted_tokens > 0
