"""The server's generation worker: one model, one KV cache, one job at a time.

Every job runs on a single worker thread, first come, first served, and starts from an empty
cache, so no request sees another's tokens. A job holds one or more prompts and `n` choices per
prompt: each prompt is evaluated once, and each choice samples from that one prefill (the cache is
truncated back to the prompt between choices; choice j uses seed + j). The worker relays typed
events to the event loop: `TextEvent` (a piece of text with the log-probs of the tokens that
begin in it), `EndEvent` and `ErrorEvent`.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .generate import STOP_STRING, GenerationStats, TextStream, generate_tokens, top_token_logprobs
from .grammar import Constraint
from .lookup import LookupParams
from .perplexity import window_nll
from .sampling import SamplingParams
from .server_errors import APIError

MAX_SEED = 2 ** 64 - 1


@dataclass
class TokenLogprob:
    token_id: int
    logprob: Optional[float]             # None for a prompt's first token: it has no context
    top: List[Tuple[int, float]] = field(default_factory=list)  # (id, log p), most likely first


@dataclass
class TextEvent:
    index: int                           # the choice
    text: str
    logprobs: List[TokenLogprob]         # tokens that begin in this text (when log-probs were asked for)
    echo: bool = False                   # the prompt itself, for `echo`


@dataclass
class EndEvent:
    index: int
    finish_reason: str                   # "stop" or "length"
    prompt_tokens: int                   # counted once per prompt: 0 for its later choices
    completion_tokens: int
    mean_logprob: float                  # of the sampled tokens (0 for none): what best_of ranks by


@dataclass
class ErrorEvent:
    error: BaseException


Event = Union[TextEvent, EndEvent, ErrorEvent]


@dataclass(eq=False)  # hashed by identity: the engine keeps a set of live jobs
class Job:
    """One request's work: `n` choices for each prompt, run one after another on the worker thread."""
    prompts: List[List[int]]
    params: SamplingParams
    max_tokens: int                      # 0: no generation (echo only)
    stops: List[str]
    n: int = 1
    lstrip: bool = False                 # drop whitespace before the first visible character (chat replies)
    prompt_texts: Optional[List[str]] = None  # per prompt, its text (for echo and text offsets)
    echo: bool = False                   # send each prompt's text (and log-probs) before its choices
    logprobs: Optional[int] = None       # None: no log-probs; k: those of the tokens and k alternatives each
    constraint: Optional[Constraint] = None  # a JSON schema or grammar every choice must match
    lookup: Optional[LookupParams] = None    # prompt-lookup speculative decoding
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    first_token_at: Optional[float] = None


class NoMetrics:
    def first_token(self, seconds: float) -> None: ...
    def token_interval(self, seconds: float) -> None: ...
    def tokens(self, prompt: int, completion: int) -> None: ...


def _char_count(b: bytes) -> int:
    """Characters that begin in the UTF-8 bytes `b` (every byte but continuation bytes)."""
    return len(b) - sum(1 for x in b if x & 0xC0 == 0x80)


def _until_cancelled(tokens: Iterator[int], cancel: threading.Event) -> Iterator[int]:
    """Passes tokens through; stops before asking the engine for another once `cancel` is set."""
    try:
        for tok in tokens:
            yield tok
            if cancel.is_set():
                return
    finally:
        tokens.close()


class Engine:
    """Runs jobs one at a time on a single thread, in arrival order, and relays their events to
    the event loop."""

    def __init__(self, model, max_queue: int = 64, metrics=None):
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics or NoMetrics()
        self.n_valid = min(model.tokenizer.n_vocab, model.config.n_vocab)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi2cpu-generate")
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self._jobs: set = set()

    def check_capacity(self) -> None:
        with self._lock:
            if self.waiting >= self.max_queue:
                raise APIError(503, f"the server is busy: {self.waiting} requests are waiting; retry later",
                               code="server_busy")

    async def events(self, job: Job) -> AsyncIterator[Event]:
        """Queue `job` and yield its events. Leaving the iteration early (the client went away)
        cancels the job."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def emit(event: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed: the server is shutting down
                job.cancel.set()

        with self._lock:
            self.waiting += 1
            self._jobs.add(job)
        try:
            self._pool.submit(self._work, job, emit, done)
        except RuntimeError:  # the pool was shut down
            with self._lock:
                self.waiting -= 1
                self._jobs.discard(job)
            raise APIError(503, "the server is shutting down", code="server_shutting_down") from None
        try:
            while True:
                event = await queue.get()
                if event is done:
                    return
                yield event
        finally:
            job.cancel.set()

    def _work(self, job: Job, emit: Callable[[object], None], done: object) -> None:
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            for p, ids in enumerate(job.prompts):
                if job.cancel.is_set():
                    return
                prompt_logprobs, last = self._prefill(job, ids)
                for j in range(job.n):
                    if job.cancel.is_set():
                        return
                    index = p * job.n + j
                    if job.echo:
                        emit(TextEvent(index, job.prompt_texts[p], prompt_logprobs, echo=True))
                    if not self._choice(job, ids, last, index, j, emit):
                        return
        except Exception as e:  # reported to the client; the worker lives on
            emit(ErrorEvent(e))
        finally:
            with self._lock:
                self.running -= 1
                self._jobs.discard(job)
            emit(done)

    def _prefill(self, job: Job, ids: List[int]) -> Tuple[List[TokenLogprob], np.ndarray]:
        """Evaluate the prompt once: (its tokens' log-probs when echoed with log-probs, the last logits)."""
        model = self.model
        model.reset()
        if not job.echo or job.logprobs is None:
            return [], model.eval(ids)
        logits = model.eval(ids, all_logits=True)  # as Model.token_logprobs computes them
        lp = -window_nll(logits, ids)
        k = job.logprobs
        out = [TokenLogprob(ids[0], None)]
        for t in range(1, len(ids)):
            own = float(lp[t - 1])  # the prompt token among the alternatives shows this same number
            top = top_token_logprobs(logits[t - 1], k, self.n_valid) if k else []
            out.append(TokenLogprob(ids[t], own, [(i, own if i == ids[t] else v) for i, v in top]))
        return out, logits[-1].copy()

    def _timed(self, tokens: Iterator[int], job: Job) -> Iterator[int]:
        last = None
        try:
            for tok in tokens:
                now = time.perf_counter()
                if job.first_token_at is None:
                    job.first_token_at = now
                    self.metrics.first_token(now - job.queued_at)
                elif last is not None:
                    self.metrics.token_interval(now - last)
                last = now
                yield tok
        finally:
            tokens.close()

    def _choice(self, job: Job, ids: List[int], last: np.ndarray, index: int, j: int,
                emit: Callable[[object], None]) -> bool:
        """Sample choice `index` (the j-th of its prompt) and relay it; False if it was cancelled."""
        model = self.model
        model.truncate(len(ids))  # back to the prompt, as the prefill left it
        n_prompt = len(ids) if j == 0 else 0
        if job.max_tokens == 0:
            self.metrics.tokens(n_prompt, 0)
            emit(EndEvent(index, "length", n_prompt, 0, 0.0))
            return True
        params = job.params
        if j and params.seed is not None:
            params = replace(params, seed=(params.seed + j) % (MAX_SEED + 1))
        stats = GenerationStats()
        tokens = generate_tokens(model, ids, params, job.max_tokens, stats, top_logprobs=job.logprobs or 0,
                                 prefilled=last, constraint=job.constraint, lookup=job.lookup)
        stream = TextStream(model, _until_cancelled(self._timed(tokens, job), job.cancel), job.stops, stats)
        aligner = _LogprobAligner(model.tokenizer, stats, job.logprobs is not None)
        started = not job.lstrip
        try:
            for piece in stream:
                lps = aligner.take(len(piece))
                if not started:
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece or lps:
                    emit(TextEvent(index, piece, lps))
        finally:
            stream.close()
        if job.cancel.is_set():
            return False
        rest = aligner.rest(stats.stop_reason != STOP_STRING)
        if rest:
            emit(TextEvent(index, "", rest))
        self.metrics.tokens(n_prompt, stats.generated_tokens)
        lps = stats.token_logprobs
        emit(EndEvent(index, stats.finish_reason, n_prompt, stats.generated_tokens,
                      float(np.mean(lps)) if lps else 0.0))
        return True

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancel.set()
        self._pool.shutdown(wait=True)


class _LogprobAligner:
    """Hands out each sampled token's log-probs with the piece of text in which the token begins.
    Text held back for a possible stop string delays them; tokens past a stop string never come."""

    def __init__(self, tokenizer, stats: GenerationStats, enabled: bool):
        self.tokenizer, self.stats, self.enabled = tokenizer, stats, enabled
        self.text_chars = 0   # characters of text handed out so far
        self.next = 0         # the next token to hand out
        self.next_start = 0   # the character at which it begins

    def take(self, n_chars: int) -> List[TokenLogprob]:
        self.text_chars += n_chars
        return self._until(self.text_chars)

    def rest(self, all_tokens: bool) -> List[TokenLogprob]:
        """What is left: every token (`all_tokens`: no stop string cut the text), else only those
        that begin inside the text."""
        return self._until(float("inf") if all_tokens else self.text_chars)

    def _until(self, limit: float) -> List[TokenLogprob]:
        if not self.enabled:
            return []
        st, out = self.stats, []
        while self.next < len(st.token_ids) and self.next_start < limit:
            k = self.next
            tok = st.token_ids[k]
            out.append(TokenLogprob(tok, st.token_logprobs[k], st.top_logprobs[k] if k < len(st.top_logprobs) else []))
            self.next_start += _char_count(self.tokenizer.token_bytes(tok))
            self.next += 1
        return out
