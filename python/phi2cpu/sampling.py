"""Next-token sampling, in the order users of llama.cpp know:

mask padding ids -> logit bias -> repetition / presence / frequency penalties -> (greedy: argmax)
-> top-k -> temperature + softmax -> top-p -> min-p -> draw.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Dict, Optional, Sequence

import numpy as np

from .errors import Phi2Error, SamplingError

PHI2_N_VALID = 50295  # real tokenizer ids; the embedding's other rows are padding


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _finite(v: object) -> bool:
    return _is_real(v) and math.isfinite(v)


@dataclass
class SamplingParams:
    """Sampling settings. The defaults are llama.cpp's; the same settings and seed give the same draws."""

    temperature: float = 0.8    # 0 = greedy
    top_k: int = 40             # 0 = off
    top_p: float = 0.95         # 1 = off
    seed: Optional[int] = None  # None = fresh entropy each Sampler
    min_p: float = 0.05         # keep tokens with p >= min_p * p(most likely); 0 = off
    repeat_penalty: float = 1.0     # > 1 discourages tokens in the recent window; 1 = off
    presence_penalty: float = 0.0   # subtracted once from each token in the recent window (-2..2)
    frequency_penalty: float = 0.0  # subtracted per occurrence in the recent window (-2..2)
    penalty_last_n: int = 64        # the recent window for the three penalties, in tokens
    logit_bias: Dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def validate(self) -> "SamplingParams":
        t, k, p, s = self.temperature, self.top_k, self.top_p, self.seed
        if not (_finite(t) and t >= 0):
            raise SamplingError(f"temperature must be a finite number >= 0, got {t!r}")
        if not (_is_int(k) and k >= 0):
            raise SamplingError(f"top_k must be an integer >= 0 (0 turns it off), got {k!r}")
        if not (_is_real(p) and 0 < p <= 1):
            raise SamplingError(f"top_p must be a number in (0, 1], got {p!r}")
        if s is not None and not (_is_int(s) and s >= 0):
            raise SamplingError(f"seed must be an integer >= 0 or None, got {s!r}")
        if not (_is_real(self.min_p) and 0 <= self.min_p <= 1):
            raise SamplingError(f"min_p must be a number in [0, 1], got {self.min_p!r}")
        if not (_finite(self.repeat_penalty) and self.repeat_penalty > 0):
            raise SamplingError(f"repeat_penalty must be a finite number > 0 (1 turns it off), "
                                f"got {self.repeat_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (_finite(v) and -2 <= v <= 2):
                raise SamplingError(f"{name} must be a number in [-2, 2], got {v!r}")
        if not (_is_int(self.penalty_last_n) and self.penalty_last_n >= 0):
            raise SamplingError(f"penalty_last_n must be an integer >= 0, got {self.penalty_last_n!r}")
        if not isinstance(self.logit_bias, dict):
            raise SamplingError(f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}")
        for tok, bias in self.logit_bias.items():
            if not (_is_int(tok) and tok >= 0):
                raise SamplingError(f"logit_bias keys must be token ids >= 0, got {tok!r}")
            if not (_is_real(bias) and not math.isnan(bias) and bias != math.inf):
                raise SamplingError(f"logit_bias values must be numbers or -inf (a ban), got {bias!r} "
                                    f"for token {tok}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalizes(self) -> bool:
        return self.penalty_last_n > 0 and (
            self.repeat_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0)


SAMPLING_OPTIONS = tuple(SamplingParams.__dataclass_fields__)


def sampling_params(**options) -> SamplingParams:
    """SamplingParams from keyword options, checked: an unknown name or a bad value is a SamplingError."""
    unknown = sorted(set(options) - set(SAMPLING_OPTIONS))
    if unknown:
        raise SamplingError(f"unknown sampling option {unknown[0]!r}; known: {', '.join(SAMPLING_OPTIONS)}")
    if options.get("logit_bias") is None:
        options.pop("logit_bias", None)
    return SamplingParams(**options).validate()


class Sampler:
    """Draws token ids from logits. The same seed and settings give the same sequence of draws."""

    def __init__(self, params: Optional[SamplingParams] = None, n_valid: int = PHI2_N_VALID):
        self.params = (params or SamplingParams()).validate()
        if not (_is_int(n_valid) and n_valid >= 1):
            raise SamplingError(f"n_valid must be an integer >= 1, got {n_valid!r}")
        self.n_valid = int(n_valid)
        bad = [t for t in self.params.logit_bias if t >= self.n_valid]
        if bad:
            raise SamplingError(f"logit_bias names token {bad[0]}, outside this vocabulary (0..{self.n_valid - 1})")
        self.rng = np.random.Generator(np.random.PCG64(self.params.seed))

    def adjusted_logits(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """Logits of the valid ids after logit bias and penalties (a float32 copy when changed).
        `history` is the text so far as token ids (prompt and generated); the penalties look at its
        last `penalty_last_n` ids."""
        x = np.asarray(logits).reshape(-1)[: self.n_valid]  # ids >= n_valid are never drawn
        if x.size == 0:
            raise Phi2Error("cannot sample from empty logits")
        if np.isnan(x).any():
            raise Phi2Error("the model produced NaN logits")
        p = self.params
        if not p.logit_bias and not (p.penalizes and len(history)):
            return x
        x = x.astype(np.float32, copy=True)
        for tok, bias in p.logit_bias.items():
            x[tok] += bias
        if p.penalizes and len(history):
            counts = Counter(int(t) for t in history[-p.penalty_last_n:] if 0 <= int(t) < self.n_valid)
            ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            v = x[ids]
            v = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
            x[ids] = v - n * p.frequency_penalty - p.presence_penalty
        return x

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        ids, probs = self._choices(self.adjusted_logits(logits, history))
        if probs is None:
            return ids
        return self._draw(ids, probs)

    def verify(self, logits: np.ndarray, history: Sequence[int], draft: int) -> int:
        """The token at a position whose guessed token is `draft` (speculative decoding with a
        deterministic draft): `draft` itself with probability p(draft), else a draw from p with
        `draft` removed and renormalised, so the result is distributed exactly as `sample`'s.
        Greedy settings give the argmax, as `sample` does."""
        ids, probs = self._choices(self.adjusted_logits(logits, history))
        if probs is None:
            return ids
        ids = ids if ids is not None else np.arange(probs.size)
        hit = np.flatnonzero(ids == draft)
        if hit.size == 0:  # outside the kept set: p(draft) = 0
            return self._draw(ids, probs)
        j = int(hit[0])
        if self.rng.random() * float(probs.sum()) < probs[j]:
            return int(draft)
        rest = np.delete(probs, j)
        if not rest.sum() > 0:  # p(draft) rounded to 1: nothing else to draw
            return int(draft)
        return self._draw(np.delete(ids, j), rest)

    def _choices(self, x: np.ndarray):
        """What the draw picks from: (ids or None for all of x, unnormalised probabilities), or
        (token, None) when the choice is certain (greedy, or a +inf logit)."""
        p = self.params
        if p.greedy:
            return int(np.argmax(x)), None
        ids = None
        if 0 < p.top_k < x.size:  # selecting before scaling is the same set, on fewer values
            ids = np.argpartition(x, x.size - p.top_k)[x.size - p.top_k:]
            x = x[ids]
        m = x.max()
        if not np.isfinite(m):  # +inf wins outright; all -inf leaves nothing to sample
            if m < 0:
                raise Phi2Error("every allowed token has a logit of -inf")
            j = int(np.argmax(x))
            return int(j if ids is None else ids[j]), None
        probs = np.exp((x.astype(np.float64) - m) / p.temperature)
        probs /= probs.sum()
        if p.top_p < 1:
            keep = _top_p_indices(probs, p.top_p)
            probs = probs[keep]
            ids = keep if ids is None else ids[keep]
        if p.min_p > 0:
            keep = np.flatnonzero(probs >= p.min_p * probs.max())
            probs = probs[keep]
            ids = keep if ids is None else ids[keep]
        return ids, probs

    def _draw(self, ids: Optional[np.ndarray], probs: np.ndarray) -> int:
        cdf = np.cumsum(probs)
        j = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        j = min(j, cdf.size - 1)
        return int(j if ids is None else ids[j])


def _top_p_indices(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most-probable entries whose mass reaches top_p (>= 1 entry),
    most probable first. Sorts only a growing top slice instead of the whole vocab."""
    n = probs.size
    k = min(64, n)
    while True:
        top = np.argpartition(-probs, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-probs[top], kind="stable")]
        cum = np.cumsum(probs[top])
        if cum[-1] >= top_p or k == n:
            cut = int(np.searchsorted(cum, top_p, side="left"))
            return top[: min(cut, k - 1) + 1]
        k = min(k * 4, n)
