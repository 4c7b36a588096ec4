"""Draft-free speculative decoding ("prompt lookup").

Each step guesses the next tokens by copying what followed the latest earlier occurrence of the
context's last n-gram (n from `ngram_max` down to `ngram_min`), evaluates the last sampled token
and the guess in one batched forward pass, and keeps the longest prefix of the guess the model
agrees with plus one token of the model's own; the cache is then cut back to what was kept.
Outputs that repeat their input (edited code, summaries, quotes) get several tokens per pass.

Greedy decoding keeps exactly the argmax at every position, as plain decoding does. Sampling
keeps a guessed token x at a position whose distribution is p with probability p(x), and
otherwise draws from p with x removed and renormalised (speculative sampling's rule for a draft
that is one fixed guess), so every emitted token has the distribution plain sampling gives it.
A constraint's mask applies at every position; a guessed token the constraint forbids ends the guess.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np

from .errors import SamplingError
from .sampling import _is_int

MAX_DRAFT = 64


@dataclass(frozen=True)
class LookupParams:
    """Prompt-lookup settings: at most `k` guessed tokens per step, from the longest n-gram match
    with ngram_min <= n <= ngram_max. With `adaptive` each step guesses only as many tokens as pay
    for their verification, judged from this generation's own measured forward times per batch
    size and its guesses' hit rate (none while guesses keep failing); without it every step
    guesses all it can (up to k), which makes the number of model calls reproducible."""

    k: int = 8
    ngram_max: int = 3
    ngram_min: int = 1
    adaptive: bool = True

    def validate(self) -> "LookupParams":
        if not (_is_int(self.k) and 1 <= self.k <= MAX_DRAFT):
            raise SamplingError(f"lookup k (guessed tokens per step) must be an integer in 1..{MAX_DRAFT}, "
                                f"got {self.k!r}")
        for name in ("ngram_min", "ngram_max"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise SamplingError(f"lookup {name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.adaptive, bool):
            raise SamplingError(f"lookup adaptive must be true or false, got {self.adaptive!r}")
        if self.ngram_min > self.ngram_max:
            raise SamplingError(f"lookup ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max})")
        return self


LOOKUP_OPTIONS = tuple(f.name for f in fields(LookupParams))


def lookup_params(value: Any) -> Optional[LookupParams]:
    """generate()'s `lookup` argument: None or False (off), True (the defaults), an int (k), a dict
    of LookupParams fields, or a LookupParams."""
    if value is None or value is False:
        return None
    if value is True:
        return LookupParams()
    if isinstance(value, LookupParams):
        return value.validate()
    if _is_int(value):
        return LookupParams(k=value).validate()
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(LOOKUP_OPTIONS))
        if unknown:
            raise SamplingError(f"unknown lookup option {unknown[0]!r}; known: {', '.join(LOOKUP_OPTIONS)}")
        return LookupParams(**value).validate()
    raise SamplingError(f"lookup must be true, false, an integer k or a dict of {', '.join(LOOKUP_OPTIONS)}; "
                        f"got {value!r}")


def propose(history: Sequence[int], k: int, ngram_max: int, ngram_min: int = 1) -> List[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's last n-gram, for
    the largest n in ngram_min..ngram_max that occurs earlier; [] when none does."""
    arr = np.asarray(history, dtype=np.int64)
    size = arr.size
    for n in range(min(ngram_max, size - 1), ngram_min - 1, -1):
        tail = arr[size - n:]
        hit = arr[: size - n] == tail[0]  # hit[j]: arr[j:j+n] == tail, for j < size - n
        for i in range(1, n):
            hit &= arr[i: size - n + i] == tail[i]
        starts = np.flatnonzero(hit)
        if starts.size:
            j = int(starts[-1]) + n
            return arr[j: j + k].tolist()
    return []


def lookup_loop(model, history: List[int], logits: np.ndarray, sampler, budget: int, st, lp: LookupParams,
                n_top: int = 0, matcher=None) -> Iterator[int]:
    """generate_tokens' loop after the prefill, with prompt lookup. `history` is the prompt (it
    grows with the output), `logits` the prefill's last row. Yields what plain decoding would."""
    from .generate import STOP_EOS, token_logprob, top_token_logprobs

    eos = model.tokenizer.eos_id
    policy = _DraftPolicy() if lp.adaptive else None
    produced = 0
    pending: Optional[int] = None  # the last emitted token: not yet in the cache
    while produced < budget:
        t = time.perf_counter()
        guess: List[int] = []
        draft: List[int] = []
        masks: List[np.ndarray] = []
        done_after_draft = False
        if pending is None:
            rows = logits[None]
        else:
            guess = propose(history, min(lp.k, budget - produced - 1), lp.ngram_max, lp.ngram_min)
            draft = guess if policy is None else guess[: policy.length(len(guess))]
            if matcher is not None:
                draft, masks, done_after_draft = _admitted(matcher, draft)
            t_eval = time.perf_counter()
            rows = model.eval([pending] + draft, all_logits=True)
            if policy is not None:
                policy.timed(1 + len(draft), time.perf_counter() - t_eval)
        out: List[int] = []
        stop = False
        n_kept = 0
        for i in range(len(draft) + 1):
            mask = None
            if matcher is not None:
                mask = masks[i] if i < len(draft) else matcher.allowed()
            x = rows[i] if mask is None else np.where(mask, rows[i][: mask.size], np.float32(-np.inf))
            tok = sampler.verify(x, history, draft[i]) if i < len(draft) else sampler.sample(x, history)
            produced += 1
            st.generated_tokens += 1
            if tok == eos:
                st.stop_reason, stop = STOP_EOS, True
                break
            history.append(tok)
            out.append(tok)
            st.token_ids.append(tok)
            st.token_logprobs.append(token_logprob(rows[i], tok))
            if n_top:
                st.top_logprobs.append(top_token_logprobs(rows[i], n_top, sampler.n_valid))
            if i < len(draft) and tok == draft[i]:
                n_kept += 1
                if i == len(draft) - 1 and done_after_draft:
                    st.stop_reason, stop = STOP_EOS, True
                    break
                continue
            break  # the model's own token ends the step
        st.drafted_tokens += len(draft)
        st.accepted_tokens += n_kept
        if draft:
            st.lookup_steps += 1
        if pending is not None:
            model.truncate(model.n_past - (len(draft) - n_kept))
        if matcher is not None:
            matcher.rollback(len(draft) - n_kept)
            if out and not (n_kept == len(out)):  # the model's own token (not a kept draft token)
                matcher.consume(out[-1])
                if matcher.done:
                    st.stop_reason, stop = STOP_EOS, True
        if policy is not None:
            policy.observe(guess, out)
        pending = out[-1] if out else None
        st.gen_seconds += time.perf_counter() - t
        yield from out
        if stop:
            return


class _DraftPolicy:
    """How many guessed tokens a step verifies: the d that maximises expected tokens per second,
    (1 + a + ... + a^d) / seconds(1 + d), where a is the recent rate at which a guessed token
    matched the model's (given the ones before it did) and seconds(n) the measured time of a
    forward pass of n tokens (a size not yet timed counts as the largest smaller one timed: an
    optimistic guess that gets it tried). Guesses not verified are still scored against the
    tokens the model emitted, so the rate recovers once the output starts repeating."""

    def __init__(self):
        self.hits, self.tries = 1.0, 2.0  # the prior: a = 1/2
        self.seconds: dict = {}           # batch size -> moving average of forward seconds

    def length(self, n_guess: int) -> int:
        if n_guess == 0 or 1 not in self.seconds:
            return 0
        a = self.hits / self.tries
        best, best_rate, expected = 0, 1.0 / self.seconds[1], 1.0
        for d in range(1, n_guess + 1):
            expected += a ** d
            rate = expected / self.seconds[max(n for n in self.seconds if n <= d + 1)]
            if rate > best_rate:
                best, best_rate = d, rate
        return best

    def timed(self, n: int, seconds: float) -> None:
        prev = self.seconds.get(n)
        self.seconds[n] = seconds if prev is None else 0.7 * prev + 0.3 * seconds

    def observe(self, guess: Sequence[int], emitted: Sequence[int]) -> None:
        for g, e in zip(guess, emitted):
            self.hits = 0.9 * self.hits + (g == e)
            self.tries = 0.9 * self.tries + 1.0
            if g != e:
                break


def _admitted(matcher, draft: List[int]):
    """The draft cut at its first token the constraint forbids, the mask before each kept token,
    and whether the constraint is complete after the last one. The matcher is left having consumed
    the kept draft (the caller rolls back what the model rejects)."""
    masks: List[np.ndarray] = []
    for i, tok in enumerate(draft):
        allowed = matcher.allowed()
        if tok >= allowed.size or not allowed[tok]:
            return draft[:i], masks, False
        masks.append(allowed)
        matcher.consume(tok)
        if matcher.done:
            return draft[: i + 1], masks, True
    return draft, masks, False
