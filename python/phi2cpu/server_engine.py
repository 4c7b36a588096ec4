"""The server's generation work: jobs split into tasks that share the model's KV-cache slots.

A job holds one or more prompts and `n` choices per prompt; each choice is one task on a slot of
its own (:mod:`phi2cpu.server_batch` admits tasks first come, first served and steps every busy
slot together). A prompt is evaluated once, by its first choice; the others are admitted once it
has been and start from a copy of its cached prompt, evaluating only its last token again; choice
j uses seed + j. A slot keeps its tokens when it is freed, so a later prompt that begins the same
way evaluates only what is new. The tasks relay typed events to the event loop: `TextEvent` (a
piece of text with the log-probs of the tokens that begin in it), `EndEvent` and `ErrorEvent`.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .generate import (STOP_STRING, GenerationStats, TextStream, _keep_cached_prefix, generate_tokens,
                       top_token_logprobs)
from .grammar import Constraint
from .lookup import LookupParams
from .perplexity import window_nll
from .sampling import SamplingParams
from .server_batch import DEFAULT_CHUNK, Cancelled, EngineError, Scheduler, SlotModel, Task
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
    cached_tokens: int = 0               # of prompt_tokens, those a slot's cache held (not evaluated)


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
    def prompt_evaluated(self, n: int) -> None: ...
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


@dataclass(eq=False)
class _Prompt:
    ready: bool = False                  # its first choice has prefilled it (or given up)
    logprobs: List[TokenLogprob] = field(default_factory=list)  # for echo


@dataclass(eq=False)
class _Run:
    """A job on its way through the scheduler: its tasks left, and how to reach its client."""
    job: Job
    emit: Callable[[object], None]
    done: object
    prompts: List[_Prompt]
    left: int
    started_at: Optional[float] = None


class Engine:
    """Runs jobs over the model's `n_seq` slots (see :mod:`phi2cpu.server_batch`): each choice of
    each prompt is one task with a slot of its own, admitted first come, first served; the tasks
    of every busy slot step together. Events are relayed to the event loop."""

    def __init__(self, model, max_queue: int = 64, metrics=None, chunk: int = DEFAULT_CHUNK):
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics or NoMetrics()
        self.n_valid = min(model.tokenizer.n_vocab, model.config.n_vocab)
        self.scheduler = Scheduler(model, chunk)
        self._lock = threading.Lock()
        self.waiting = 0                 # jobs none of whose tasks has a slot yet
        self.running = 0
        self._jobs: set = set()
        self._job_seconds = 1.0          # running mean of a job's time in its slots, for Retry-After

    @property
    def slots_total(self) -> int:
        return self.model.n_seq

    @property
    def slots_busy(self) -> int:
        return self.scheduler.slots_busy

    @property
    def queued(self) -> int:
        """Choices waiting in the scheduler's queue for a slot (a request of n choices counts n)."""
        return self.scheduler.queued

    @property
    def error(self) -> Optional[EngineError]:
        """Why the engine serves nothing more (its thread failed), or None."""
        return self.scheduler.error

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead of it at the mean job time, over the slots."""
        return max(1, min(60, math.ceil(self._job_seconds * (self.waiting + 1) / self.slots_total)))

    def check_capacity(self) -> None:
        """503 before a response starts (streamed or not) when the engine failed or the queue is full."""
        if self.error is not None:
            raise APIError(503, str(self.error), code="engine_failed")
        with self._lock:  # requests that free slots are about to take do not count as queued
            if self.waiting - (self.slots_total - self.slots_busy) >= self.max_queue:
                raise APIError(503, f"the server is busy: {self.waiting} requests are waiting; retry later",
                               code="server_busy", headers={"Retry-After": str(self.retry_after())})

    async def events(self, job: Job) -> AsyncIterator[Event]:
        """Queue `job` and yield its events. Leaving the iteration early (the client went away)
        cancels the job: its tasks leave the queue, and a task in a slot is dropped at the next step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def emit(event: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed: the server is shutting down
                job.cancel.set()

        run = _Run(job, emit, done, [_Prompt() for _ in job.prompts], len(job.prompts) * job.n)
        tasks = [Task(ids, job.cancel, run=lambda m, p=p, j=j: self._task(run, p, j, m),
                      ready=lambda p=p, j=j: j == 0 or run.prompts[p].ready,
                      dropped=lambda error: self._dropped(run, error))
                 for p, ids in enumerate(job.prompts) for j in range(job.n)]
        with self._lock:
            self.waiting += 1
            self._jobs.add(job)
        try:
            self.scheduler.submit(tasks)
        except (RuntimeError, EngineError) as e:  # shut down, or the engine thread failed
            with self._lock:
                self.waiting -= 1
                self._jobs.discard(job)
            if isinstance(e, EngineError):
                raise APIError(503, str(e), code="engine_failed") from None
            raise APIError(503, "the server is shutting down", code="server_shutting_down") from None
        try:
            while True:
                event = await queue.get()
                if event is done:
                    return
                yield event
        finally:
            job.cancel.set()
            self.scheduler.wake()

    def _dropped(self, run: _Run, error: Optional[BaseException]) -> None:
        """A task left the queue without running: cancelled (`error` None), or it could not run."""
        if error is not None:
            run.emit(ErrorEvent(error))
            run.job.cancel.set()
        self._task_done(run)

    def _task_done(self, run: _Run) -> None:
        with self._lock:
            run.left -= 1
            if run.left:
                return
            if run.started_at is None:
                self.waiting -= 1
            else:
                self.running -= 1
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.perf_counter() - run.started_at)
            self._jobs.discard(run.job)
        run.emit(run.done)

    def _task(self, run: _Run, p: int, j: int, m: SlotModel) -> None:
        """Choice j of prompt p, on slot `m`, on a thread of its own."""
        job, emit = run.job, run.emit
        with self._lock:
            if run.started_at is None:
                run.started_at = time.perf_counter()
                self.waiting -= 1
                self.running += 1
        ids, ps, index = job.prompts[p], run.prompts[p], p * job.n + j
        try:
            if job.cancel.is_set():
                return
            last, evaluated = None, 0
            if j == 0:
                try:
                    ps.logprobs, last, evaluated = self._prefill(job, m, ids)
                except BaseException:  # the other choices must not start: cancel before releasing them
                    job.cancel.set()
                    raise
                finally:
                    ps.ready = True
                    self.scheduler.wake()
            if job.echo:
                emit(TextEvent(index, job.prompt_texts[p], ps.logprobs, echo=True))
            self._choice(job, m, ids, last, evaluated, index, j, emit)
        except Cancelled:
            job.cancel.set()
        except Exception as e:  # reported to the client; the job ends
            emit(ErrorEvent(e))
            job.cancel.set()
        finally:
            self._task_done(run)

    def _prefill(self, job: Job, m: SlotModel, ids: List[int]) -> Tuple[List[TokenLogprob], np.ndarray, int]:
        """Evaluate the prompt once: (its tokens' log-probs when echoed with log-probs, the last
        logits, the prompt tokens evaluated). The slot's cached prefix of the prompt is kept, except
        when every prompt token's logits are needed."""
        if not job.echo or job.logprobs is None:
            start = _keep_cached_prefix(m, ids)
            return [], m.eval(ids[start:]), len(ids) - start
        m.reset()
        logits = m.eval(ids, all_logits=True)  # as Model.token_logprobs computes them
        lp = -window_nll(logits, ids)
        k = job.logprobs
        out = [TokenLogprob(ids[0], None)]
        for t in range(1, len(ids)):
            own = float(lp[t - 1])  # the prompt token among the alternatives shows this same number
            top = top_token_logprobs(logits[t - 1], k, self.n_valid) if k else []
            out.append(TokenLogprob(ids[t], own, [(i, own if i == ids[t] else v) for i, v in top]))
        return out, logits[-1].copy(), len(ids)

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

    def _choice(self, job: Job, m: SlotModel, ids: List[int], last: Optional[np.ndarray], evaluated: int,
                index: int, j: int, emit: Callable[[object], None]) -> None:
        """Sample choice `index` (the j-th of its prompt) and relay it. `last`: the prompt's last
        logits when this task prefilled it; else the slot holds a cached prefix of the prompt
        (copied from the slot that prefilled it) and only the rest is evaluated."""
        n_prompt = len(ids) if j == 0 else 0
        if job.max_tokens == 0:
            self.metrics.tokens(n_prompt, 0)
            self.metrics.prompt_evaluated(evaluated)
            emit(EndEvent(index, "length", n_prompt, 0, 0.0, n_prompt - evaluated if j == 0 else 0))
            return
        params = job.params
        if j and params.seed is not None:
            params = replace(params, seed=(params.seed + j) % (MAX_SEED + 1))
        stats = GenerationStats()
        tokens = generate_tokens(m, ids, params, job.max_tokens, stats, reuse_prefix=last is None,
                                 top_logprobs=job.logprobs or 0, prefilled=last, constraint=job.constraint,
                                 lookup=job.lookup)
        stream = TextStream(m, _until_cancelled(self._timed(tokens, job), job.cancel), job.stops, stats)
        aligner = _LogprobAligner(m.tokenizer, stats, job.logprobs is not None)
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
        evaluated += stats.prompt_evaluated
        self.metrics.prompt_evaluated(evaluated)
        if job.cancel.is_set():
            raise Cancelled()
        rest = aligner.rest(stats.stop_reason != STOP_STRING)
        if rest:
            emit(TextEvent(index, "", rest))
        self.metrics.tokens(n_prompt, stats.generated_tokens)
        lps = stats.token_logprobs
        emit(EndEvent(index, stats.finish_reason, n_prompt, stats.generated_tokens,
                      float(np.mean(lps)) if lps else 0.0, n_prompt - evaluated if j == 0 else 0))

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancel.set()
        self.scheduler.shutdown()


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
