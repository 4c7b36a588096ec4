"""Next-token sampling: mask padding ids -> temperature -> top-k -> softmax -> top-p -> draw."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

import numpy as np

from .errors import Phi2Error, SamplingError

PHI2_N_VALID = 50295  # real tokenizer ids; the embedding's other rows are padding


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


@dataclass
class SamplingParams:
    temperature: float = 0.8   # 0 = greedy
    top_k: int = 40            # 0 = off
    top_p: float = 0.95        # 1 = off
    seed: Optional[int] = None  # None = fresh entropy each Sampler

    def validate(self) -> "SamplingParams":
        t, k, p, s = self.temperature, self.top_k, self.top_p, self.seed
        if not (_is_real(t) and math.isfinite(t) and t >= 0):
            raise SamplingError(f"temperature must be a finite number >= 0, got {t!r}")
        if not (_is_int(k) and k >= 0):
            raise SamplingError(f"top_k must be an integer >= 0 (0 turns it off), got {k!r}")
        if not (_is_real(p) and 0 < p <= 1):
            raise SamplingError(f"top_p must be a number in (0, 1], got {p!r}")
        if s is not None and not (_is_int(s) and s >= 0):
            raise SamplingError(f"seed must be an integer >= 0 or None, got {s!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Draws token ids from logits. The same seed and settings give the same sequence of draws."""

    def __init__(self, params: Optional[SamplingParams] = None, n_valid: int = PHI2_N_VALID):
        self.params = (params or SamplingParams()).validate()
        if not (_is_int(n_valid) and n_valid >= 1):
            raise SamplingError(f"n_valid must be an integer >= 1, got {n_valid!r}")
        self.n_valid = int(n_valid)
        self.rng = np.random.Generator(np.random.PCG64(self.params.seed))

    def sample(self, logits: np.ndarray) -> int:
        x = np.asarray(logits).reshape(-1)[: self.n_valid]  # ids >= n_valid are never drawn
        if x.size == 0:
            raise Phi2Error("cannot sample from empty logits")
        if np.isnan(x).any():
            raise Phi2Error("the model produced NaN logits")
        p = self.params
        if p.greedy:
            return int(np.argmax(x))

        ids = None
        if 0 < p.top_k < x.size:  # selecting before scaling is the same set, on fewer values
            ids = np.argpartition(x, x.size - p.top_k)[x.size - p.top_k:]
            x = x[ids]
        m = x.max()
        if not np.isfinite(m):  # +inf wins outright; all -inf leaves nothing to sample
            if m < 0:
                raise Phi2Error("every allowed token has a logit of -inf")
            j = int(np.argmax(x))
            return int(j if ids is None else ids[j])
        probs = np.exp((x.astype(np.float64) - m) / p.temperature)
        probs /= probs.sum()
        if p.top_p < 1:
            keep = _top_p_indices(probs, p.top_p)
            probs = probs[keep]
            ids = keep if ids is None else ids[keep]
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
