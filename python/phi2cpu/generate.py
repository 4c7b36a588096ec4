"""Text generation: one batched prefill, then one model call per token, streamed as text.

An empty prompt starts from `<|endoftext|>` (id 50256), the token Phi-2 saw between documents,
so generation from nothing is unconditional text rather than an error.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ContextFullError, SamplingError
from .grammar import Constraint, constraint_from
from .lookup import lookup_loop, lookup_params
from .sampling import Sampler, SamplingParams, _is_int, sampling_params
from .tokenizer import StreamDecoder, check_text

# why generation ended
STOP_EOS, STOP_STRING, STOP_MAX_TOKENS, STOP_CONTEXT = "eos", "stop_string", "max_tokens", "context_full"


@dataclass
class GenerationStats:
    """What one generation did; filled in as it runs."""

    prompt_tokens: int = 0
    prompt_evaluated: int = 0      # prompt tokens the prefill processed (fewer when a cached prefix was reused)
    prompt_seconds: float = 0.0    # the prefill call
    generated_tokens: int = 0      # sampled tokens, including a final end-of-text token
    gen_seconds: float = 0.0       # time inside the engine and sampler after the prefill
    stop_reason: str = ""
    token_ids: List[int] = field(default_factory=list)         # sampled ids, end-of-text excluded
    token_logprobs: List[float] = field(default_factory=list)  # log p(id) under the model's own logits
    # per sampled id, the `top_logprobs` most likely (id, log p) at its position, most likely first
    top_logprobs: List[List[Tuple[int, float]]] = field(default_factory=list)
    # prompt lookup (phi2cpu.lookup): guessed tokens checked, those the model kept, steps with a guess
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    lookup_steps: int = 0

    @property
    def finish_reason(self) -> str:
        """OpenAI's name for why it ended: "stop" (end-of-text or a stop string) or "length"."""
        return "stop" if self.stop_reason in (STOP_EOS, STOP_STRING) else "length"

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tokens_per_s(self) -> float:
        return self.generated_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def summary(self) -> str:
        cached = self.prompt_tokens - self.prompt_evaluated
        reused = f" ({cached} cached)" if cached > 0 else ""
        lookup = (f" | lookup: {self.accepted_tokens}/{self.drafted_tokens} guessed tokens kept"
                  if self.drafted_tokens else "")
        return (f"prompt: {self.prompt_tokens} tokens{reused}, {self.prompt_tokens_per_s:.1f} tok/s | "
                f"generated: {self.generated_tokens} tokens, {self.gen_tokens_per_s:.1f} tok/s{lookup}")


def _check_max_tokens(max_tokens: object) -> int:
    if not (_is_int(max_tokens) and max_tokens >= 1):
        raise SamplingError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    return int(max_tokens)


def _check_stop(stop: object) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise SamplingError(f"stop must be a list of non-empty strings, got {stop!r}")
    return [check_text(s, "stop string") for s in stop]


def prompt_ids(model, prompt: str) -> List[int]:
    """Token ids for `prompt`; an empty prompt becomes the single `<|endoftext|>` token."""
    if not isinstance(prompt, str):
        raise SamplingError(f"prompt must be a str, got {type(prompt).__name__}")
    check_text(prompt, "prompt")
    ids = model.tokenizer.encode(prompt)
    return ids or [model.tokenizer.eos_id]


def _fit_context(model, n_prompt: int, max_tokens: int) -> int:
    if n_prompt + 1 > model.n_ctx:
        raise ContextFullError(f"prompt is {n_prompt} tokens; the context holds {model.n_ctx}")
    return min(max_tokens, model.n_ctx - n_prompt)


def generate_tokens(
    model,
    ids: Sequence[int],
    params: SamplingParams,
    max_tokens: int = 128,
    stats: Optional[GenerationStats] = None,
    reuse_prefix: bool = False,
    top_logprobs: int = 0,
    prefilled: Optional[np.ndarray] = None,
    constraint: Optional[Constraint] = None,
    lookup: Any = None,
) -> Iterator[int]:
    """Yields sampled token ids after prefilling `ids` (end-of-text is not yielded; it ends the
    stream). Stops after max_tokens or when the context window is full. Arguments are checked
    before the first token is requested.

    The cache is emptied first, unless `reuse_prefix`: then the longest prefix of `ids` already in
    the model's cache is kept and only the rest is processed (how chat avoids re-reading history).
    `prefilled` says the cache already holds exactly `ids` and these are the last one's logits (a
    prompt evaluated once, sampled several times). `top_logprobs` > 0 records that many
    alternatives per sampled token in `stats.top_logprobs`. With a `constraint` (a
    :class:`phi2cpu.grammar.Constraint`) only tokens that keep the output valid are sampled, and
    generation ends (as at end-of-text) once the output is complete; log-probs stay the model's own.
    `lookup` turns on prompt-lookup speculative decoding (see :func:`phi2cpu.lookup.lookup_params`
    for its forms): the same greedy output, the same sampling distribution, fewer model calls."""
    lp = lookup_params(lookup)
    sampler = Sampler(params, n_valid=min(model.tokenizer.n_vocab, model.config.n_vocab))
    requested = _check_max_tokens(max_tokens)
    ids = list(ids)
    budget = _fit_context(model, len(ids), requested)
    st = stats if stats is not None else GenerationStats()
    st.prompt_tokens = len(ids)
    if prefilled is not None and model.tokens != ids:
        raise SamplingError("prefilled logits need the model's cache to hold exactly the prompt")
    matcher = constraint.matcher(model.tokenizer, sampler.n_valid) if constraint is not None else None
    return _token_loop(model, ids, sampler, budget, requested, st, reuse_prefix, top_logprobs, prefilled,
                       matcher, lp)


def _keep_cached_prefix(model, ids: List[int]) -> int:
    """Truncate the cache to its longest common prefix with `ids`, leaving at least one token of
    `ids` to evaluate; returns the number of positions kept."""
    cached = model.tokens
    n = 0
    limit = min(len(cached), len(ids) - 1)
    while n < limit and cached[n] == ids[n]:
        n += 1
    model.truncate(n)
    return n


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log p(token) under a float64 log-softmax of all the logits (as in perplexity)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = x.max()
    return float(x[token] - m - math.log(np.exp(x - m).sum()))


def top_token_logprobs(logits: np.ndarray, k: int, n_valid: int) -> List[Tuple[int, float]]:
    """The k most likely ids below n_valid with their log p under a float64 log-softmax of all the
    logits, most likely first (ties by id)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = x.max()
    log_sum = math.log(np.exp(x - m).sum())
    valid = x[:n_valid]
    k = min(k, valid.size)
    top = np.argpartition(-valid, k - 1)[:k]
    top = top[np.lexsort((top, -valid[top]))]
    return [(int(i), float(valid[i] - m - log_sum)) for i in top]  # as token_logprob computes it


def _token_loop(model, ids, sampler, budget, requested, st, reuse_prefix, n_top=0, prefilled=None,
                matcher=None, lookup=None) -> Iterator[int]:
    eos = model.tokenizer.eos_id
    t = time.perf_counter()
    if prefilled is not None:
        start, logits = len(ids), prefilled
    else:
        if reuse_prefix:
            start = _keep_cached_prefix(model, ids)
        else:
            model.reset()
            start = 0
        logits = model.eval(ids[start:])
    st.prompt_evaluated = len(ids) - start
    st.prompt_seconds = time.perf_counter() - t
    st.stop_reason = STOP_MAX_TOKENS if budget == requested else STOP_CONTEXT
    history = list(ids)
    if lookup is not None:
        yield from lookup_loop(model, history, logits, sampler, budget, st, lookup, n_top, matcher)
        return
    tok = None
    for _ in range(budget):
        t = time.perf_counter()
        if tok is not None:
            logits = model.eval([tok])
        tok = sampler.sample(logits if matcher is None else matcher.masked(logits), history)
        st.generated_tokens += 1
        st.gen_seconds += time.perf_counter() - t
        if tok == eos:
            st.stop_reason = STOP_EOS
            return
        history.append(tok)
        st.token_ids.append(tok)
        st.token_logprobs.append(token_logprob(logits, tok))
        if n_top:
            st.top_logprobs.append(top_token_logprobs(logits, n_top, sampler.n_valid))
        if matcher is not None:
            matcher.consume(tok)
            if matcher.done:  # nothing but end-of-text may follow: stop without another forward pass
                st.stop_reason = STOP_EOS
                yield tok
                return
        yield tok


class TextStream:
    """Iterator of text pieces from `generate(..., stream=True)`; `.stats` fills in as it runs."""

    def __init__(self, model, tokens: Iterator[int], stop: List[str], stats: GenerationStats):
        self.stats = stats
        self._pieces = _text_pieces(model, tokens, stop, stats)

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


def _held_back(text: str, stop: List[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _text_pieces(model, tokens: Iterator[int], stop: List[str], st: GenerationStats) -> Iterator[str]:
    decoder = StreamDecoder(model.tokenizer)
    pending = ""  # decoded text not yet emitted: a possible start of a stop string
    try:
        for tok in tokens:
            pending += decoder.push(tok)
            if not stop:
                if pending:
                    yield pending
                    pending = ""
                continue
            hits = [i for i in (pending.find(s) for s in stop) if i >= 0]
            if hits:
                st.stop_reason = STOP_STRING
                if min(hits):
                    yield pending[: min(hits)]
                return
            keep = _held_back(pending, stop)
            if len(pending) > keep:
                yield pending[: len(pending) - keep]
                pending = pending[len(pending) - keep:]
        pending += decoder.flush()
        hits = [i for i in (pending.find(s) for s in stop) if i >= 0]
        if hits:
            st.stop_reason = STOP_STRING
            pending = pending[: min(hits)]
        if pending:
            yield pending
    finally:
        tokens.close()


def generate(
    model,
    prompt: str,
    max_tokens: int = 128,
    stop: Optional[List[str]] = None,
    stream: bool = False,
    reuse_prefix: bool = False,
    json_schema: Any = None,
    grammar: Optional[str] = None,
    lookup: Any = None,
    **sampling: Any,
) -> Union[str, TextStream]:
    """Continue `prompt` with up to `max_tokens` tokens.

    `sampling` takes the SamplingParams fields (temperature, top_k, top_p, min_p, seed,
    repeat_penalty, presence_penalty, frequency_penalty, penalty_last_n, logit_bias); unset ones
    keep llama.cpp's defaults, temperature=0 is greedy.

    Stops at end-of-text (not included), after max_tokens, when the context window is full, or
    just before the first occurrence of any `stop` string (which may span tokens; it is not
    included). An empty prompt starts from `<|endoftext|>`. With `reuse_prefix` the part of the
    prompt already in the model's cache is not processed again. Raises SamplingError for invalid
    arguments and ContextFullError when the prompt leaves no room to generate, both before any
    model work. Returns the text, or with stream=True an iterator of text pieces whose `.stats`
    (a GenerationStats, with the sampled ids and their log-probs) is complete once it is exhausted.

    `json_schema` (a dict or its JSON text) makes the output JSON valid against it; `grammar` (a
    llama.cpp GBNF text) makes it match that grammar (see :mod:`phi2cpu.grammar`; GrammarError for
    a bad one, before any model work). The output is complete when generation ends with
    `stats.finish_reason` "stop"; "length" means max_tokens or the context cut it short.

    `lookup` (True, an int k, a dict of :class:`phi2cpu.lookup.LookupParams` fields, or one)
    turns on prompt-lookup speculative decoding: the greedy output is plain decoding's and
    sampling keeps its distribution, with fewer model calls when the output repeats the prompt.
    """
    params = sampling_params(**sampling)
    _check_max_tokens(max_tokens)
    stops = _check_stop(stop)
    constraint = constraint_from(json_schema, grammar)
    lookup_params(lookup)
    stats = GenerationStats()
    tokens = generate_tokens(model, prompt_ids(model, prompt), params, max_tokens, stats, reuse_prefix,
                             constraint=constraint, lookup=lookup)
    pieces = TextStream(model, tokens, stops, stats)
    return pieces if stream else "".join(pieces)
