import math

import numpy as np
import pytest

from phi2cpu.errors import Phi2Error, SamplingError
from phi2cpu.sampling import Sampler, SamplingParams, _top_p_indices, sampling_params

N_ROWS, N_VALID = 51200, 50295


def phi2_logits(seed=0, scale=3.0):
    """Random logits over Phi-2's 51200 rows with huge values on the padding ids."""
    x = np.random.default_rng(seed).normal(size=N_ROWS).astype(np.float32) * scale
    x[N_VALID:] = 1e4
    return x


def draws(params, n=200, logits=None):
    s = Sampler(params)
    logits = phi2_logits() if logits is None else logits
    return [s.sample(logits) for _ in range(n)]


def test_greedy_is_argmax_of_valid_ids():
    x = phi2_logits()
    assert Sampler(SamplingParams(temperature=0)).sample(x) == int(np.argmax(x[:N_VALID]))


def test_padding_ids_never_sampled():
    out = draws(SamplingParams(temperature=2.0, top_k=0, top_p=1.0), n=500)
    assert max(out) < N_VALID
    assert len(set(out)) > 100  # it really is sampling


def test_same_seed_same_draws():
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=1234)
    assert draws(p) == draws(p)
    assert draws(p) != draws(SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=1235))


def test_top_k_1_and_tiny_top_p_are_greedy():
    x = phi2_logits(seed=3, scale=1.0)
    best = int(np.argmax(x[:N_VALID]))
    assert set(draws(SamplingParams(temperature=1.5, top_k=1, seed=0), logits=x)) == {best}
    assert set(draws(SamplingParams(temperature=1.5, top_k=0, top_p=1e-9, seed=0), logits=x)) == {best}


def test_top_k_limits_candidates():
    x = phi2_logits(seed=4)
    top5 = set(np.argsort(-x[:N_VALID])[:5].tolist())
    out = set(draws(SamplingParams(temperature=5.0, top_k=5, top_p=1.0, seed=0), n=400, logits=x))
    assert out == top5


def small_draws(params, logits, n):
    s = Sampler(params, n_valid=len(logits))
    x = np.asarray(logits, dtype=np.float32)
    return [s.sample(x) for _ in range(n)]


def test_top_p_keeps_smallest_set_reaching_mass():
    x = np.log([0.5, 0.3, 0.15, 0.05]).tolist() + [-np.inf]
    assert set(small_draws(SamplingParams(1.0, 0, 0.79, seed=0), x, 400)) == {0, 1}
    assert set(small_draws(SamplingParams(1.0, 0, 0.81, seed=0), x, 400)) == {0, 1, 2}
    assert set(small_draws(SamplingParams(1.0, 0, 1.0, seed=0), x, 400)) == {0, 1, 2, 3}


def test_top_p_boundary_is_inclusive():
    probs = np.array([0.125, 0.5, 0.125, 0.25])
    assert _top_p_indices(probs, 0.75).tolist() == [1, 3]  # 0.5 + 0.25 reaches 0.75 exactly
    assert _top_p_indices(probs, 0.5).tolist() == [1]
    assert len(_top_p_indices(probs, 1e-12)) == 1
    big = np.full(5000, 1 / 5000)
    assert len(_top_p_indices(big, 0.4999)) == 2500  # grows past the first slice


def test_frequencies_follow_softmax_and_temperature():
    x = [0.0, math.log(3.0), -np.inf]  # p = 0.25, 0.75, 0
    out = small_draws(SamplingParams(1.0, 0, 1.0, seed=7), x, 4000)
    assert abs(out.count(1) / len(out) - 0.75) < 0.03
    out = small_draws(SamplingParams(0.5, 0, 1.0, seed=7), x, 4000)  # p = 0.1, 0.9
    assert abs(out.count(1) / len(out) - 0.9) < 0.02


def test_extreme_logits_and_temperatures():
    assert small_draws(SamplingParams(1e-300, 0, 1.0, seed=0), [1.0, 2.0, 1.5], 5) == [1] * 5
    assert small_draws(SamplingParams(1.0, 0, 1.0, seed=0), [0.0, np.inf, 1.0], 5) == [1] * 5
    with pytest.raises(Phi2Error, match="-inf"):
        small_draws(SamplingParams(1.0, 0, 1.0, seed=0), [-np.inf] * 3, 1)


def test_nan_logits_raise():
    x = phi2_logits()
    x[5] = np.nan
    with pytest.raises(Phi2Error, match="NaN"):
        Sampler(SamplingParams(seed=0)).sample(x)


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")),
    ("temperature", "hot"), ("temperature", None),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", -0.5), ("top_p", float("nan")),
    ("seed", -1), ("seed", 1.5), ("seed", "42"),
    ("min_p", -0.01), ("min_p", 1.5), ("min_p", "0.1"),
    ("repeat_penalty", 0.0), ("repeat_penalty", -1.0), ("repeat_penalty", float("inf")),
    ("presence_penalty", 2.5), ("presence_penalty", float("nan")),
    ("frequency_penalty", -3.0), ("frequency_penalty", None),
    ("penalty_last_n", -1), ("penalty_last_n", 2.0),
    ("logit_bias", [1, 2]), ("logit_bias", {-1: 1.0}), ("logit_bias", {"5": 1.0}),
    ("logit_bias", {5: float("nan")}), ("logit_bias", {5: float("inf")}), ("logit_bias", {5: "up"}),
])
def test_invalid_values_raise(field, value):
    p = SamplingParams(**{field: value})
    with pytest.raises(SamplingError, match=field):
        p.validate()
    with pytest.raises(SamplingError, match=field):
        Sampler(p)


def test_valid_edge_values():
    for p in (SamplingParams(0, 0, 1.0, 0), SamplingParams(0.0, 1, 1e-6, 2**63), SamplingParams(1, 40, 1)):
        assert p.validate() is p


def test_unknown_option_and_out_of_vocab_bias_are_errors():
    with pytest.raises(SamplingError, match="unknown sampling option 'top_q'"):
        sampling_params(top_q=0.5)
    with pytest.raises(SamplingError, match="outside this vocabulary"):
        Sampler(SamplingParams(logit_bias={N_VALID: 1.0}))
    assert sampling_params(temperature=0, logit_bias=None).logit_bias == {}


def test_min_p_keeps_tokens_within_ratio_of_the_best():
    x = np.log([0.5, 0.3, 0.15, 0.05]).tolist()
    def kept(min_p):
        return set(small_draws(SamplingParams(1.0, 0, 1.0, seed=0, min_p=min_p), x, 600))
    assert kept(0.0) == {0, 1, 2, 3}
    assert kept(0.2) == {0, 1, 2}      # 0.05 < 0.2 * 0.5 <= 0.15
    assert kept(0.3) == {0, 1}         # 0.3 * 0.5 = 0.15 keeps 0.3 only
    assert kept(1.0) == {0}


def test_logit_bias_bans_and_forces():
    x = phi2_logits(seed=5)
    best = int(np.argmax(x[:N_VALID]))
    banned = Sampler(SamplingParams(temperature=0, logit_bias={best: -np.inf})).sample(x)
    assert banned != best and banned == int(np.argsort(-x[:N_VALID])[1])
    forced = draws(SamplingParams(temperature=1.0, seed=1, logit_bias={7: 100.0}), n=50, logits=x)
    assert set(forced) == {7}


def test_penalties_follow_their_formulas():
    x = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    history = [0, 1, 1, 3, 3, 3]
    s = Sampler(SamplingParams(repeat_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25), n_valid=4)
    got = s.adjusted_logits(x, history)
    # positive logits are divided, negative ones multiplied; then - count*freq - presence
    assert got.tolist() == pytest.approx([2.0 / 2 - 0.25 - 0.5, -1.0 * 2 - 0.5 - 0.5, 0.5, 3.0 / 2 - 0.75 - 0.5])
    assert x.tolist() == [2.0, -1.0, 0.5, 3.0]  # the caller's logits are untouched
    # only the last penalty_last_n tokens count
    s2 = Sampler(SamplingParams(frequency_penalty=1.0, penalty_last_n=2), n_valid=4)
    assert s2.adjusted_logits(x, history).tolist() == pytest.approx([2.0, -1.0, 0.5, 1.0])
    # off by default: the logits come back as they are
    assert Sampler(SamplingParams(), n_valid=4).adjusted_logits(x, history).tolist() == x.tolist()


def test_repeat_penalty_changes_greedy_choice():
    x = np.array([1.0, 0.9, 0.1], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5), n_valid=3)
    assert s.sample(x, history=[]) == 0
    assert s.sample(x, history=[0]) == 1
