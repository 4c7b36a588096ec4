"""The server's batch scheduler: one engine thread owns the model's `n_seq` KV-cache sequences
(the slots) and runs every forward pass; each admitted task runs on a worker thread of its own and
sees its slot as a single-sequence model (:class:`SlotModel`).

A step is one `Model.forward_batch` call. It holds every request of a slot after the slot's first
(a decode token, or a prompt-lookup verification of `[pending] + draft`, at most k + 1 tokens), and
the slots' first requests (their prompts) as follows: one with a single token left is fed whole,
and the longer ones share `chunk` tokens a step, first come, first served across slots. So a step
evaluates at most ``n_seq * (k + 1) + chunk`` tokens (k: the largest lookup draft, 0 without
lookup), and a long prompt holds the other streams up by one step, never by the whole prompt.

The engine steps as soon as every busy slot has posted its request (or freed the slot). When some
have and others are still busy between requests (sampling, or computing log-probs), it waits for
them at most GRACE: 10 ms or a quarter of the last step's time, whichever is longer, counted from
the later of the last step's end and the first open request, and then steps with the open ones.
So a stream's next token comes at most the grace plus one step after it asks (plus the rest of a
step already running), whatever the other tasks do.

Admission is first in, first out, by readiness: the oldest task that may start (a prompt's later
choices wait until its first choice has prefilled it, keeping their place, and ones behind them
may go first) takes the free slot whose cached tokens share the longest prefix with its prompt.
When a busy slot holds a prefix longer by at least `chunk` tokens, or by all that the free slot
lacks, those positions are copied into the least recently used free slot (`Model.copy_seq`), and
that slot is taken: a chat that resends its history, or choice 2 of a prompt, evaluates only the
new tokens. Every entry of a step is computed as it would be alone (see `Model.forward_batch`), so
a task's logits do not depend on the other slots nor on where its prefix came from.

All KV-cache changes happen on the engine thread: a task's truncate or reset is recorded and
applied before its next request is fed. An exception on the engine thread outside a forward pass
stops the scheduler: every open request fails with :class:`EngineError`, every queued task is
dropped with it, and later submits raise it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

from .errors import ContextFullError, Phi2Error
from .lookup import MAX_DRAFT

DEFAULT_CHUNK = 64      # prompt tokens per step, over all slots
STEP_LOG = 4096         # steps kept in Scheduler.step_log (read by the tests)
GRACE_SECONDS = 0.010   # the least time the engine waits for a busy slot's next request ...
GRACE_FRACTION = 0.25   # ... or this fraction of the last step's time, when longer

log = logging.getLogger("phi2cpu.server")


class Cancelled(Exception):
    """Raised in a task's thread when its request was dropped (the client went away)."""


class EngineError(Phi2Error):
    """The engine thread failed outside a forward pass: the scheduler serves nothing more."""


@dataclass
class Step:
    """What one forward pass held: the slots fed one token, (slot, tokens) of the prompts fed in
    chunks, and (slot, tokens) of the verifications (a slot's later requests of several tokens)."""
    decode: Tuple[int, ...]
    chunks: Tuple[Tuple[int, int], ...]
    verify: Tuple[Tuple[int, int], ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


@dataclass(eq=False)
class Task:
    """One unit of work for a slot. `ready()` says whether it may be admitted now; `run(slot_model)`
    is called on a worker thread once it has a slot, and the slot is freed when it returns."""
    prompt: List[int]
    cancel: threading.Event
    run: Callable[["SlotModel"], None]
    ready: Callable[[], bool] = lambda: True
    # called instead of run when cancelled while queued (None), or when it cannot run (the error)
    dropped: Callable[[Optional[BaseException]], None] = lambda error: None


@dataclass(eq=False)
class _Request:
    ids: List[int]
    all_logits: bool
    first: bool = True                 # the task's first request (its prompt), else a decode or verification
    posted: float = 0.0                # time.monotonic() when posted
    fed: int = 0
    rows: List[np.ndarray] = field(default_factory=list)
    result: Optional[np.ndarray] = None
    error: Optional[BaseException] = None
    done: threading.Event = field(default_factory=threading.Event)  # result or error is set

    def fail(self, e: BaseException) -> None:
        self.error = e
        self.done.set()

    @property
    def open(self) -> bool:  # posted, and neither answered nor failed yet
        return self.result is None and self.error is None

    @property
    def left(self) -> int:
        return len(self.ids) - self.fed


@dataclass(eq=False)
class _Slot:
    seq: int
    task: Optional[Task] = None
    order: int = 0                     # admission number: prompt chunks go first come, first served
    used: int = 0                      # when it was last freed (least recently used is overwritten first)
    keep: Optional[int] = None         # a truncate the task asked for, applied on the engine thread
    request: Optional[_Request] = None
    posts: int = 0                     # requests the task has posted


def common_prefix(a: List[int], b: List[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """Owns `model` (loaded with n_seq slots): admits tasks into slots and steps them together."""

    def __init__(self, model, chunk: int = DEFAULT_CHUNK):
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise Phi2Error(f"batch_chunk must be an integer >= 1, got {chunk!r}")
        self.model = model
        self.chunk = chunk
        self.slots = [_Slot(s) for s in range(model.n_seq)]
        self.queue: Deque[Task] = deque()
        self.step_log: Deque[Step] = deque(maxlen=STEP_LOG)  # for the tests: what each step held
        self.steps = 0
        self.tokens_evaluated = 0      # entries fed to the model, every kind
        self.error: Optional[EngineError] = None  # set when the engine thread failed
        self.cond = threading.Condition()
        self._closing = False
        self.grace_seconds, self.grace_fraction = GRACE_SECONDS, GRACE_FRACTION
        self._step_end = 0.0           # time.monotonic() when the last step ended
        self._step_seconds = 0.0       # how long it took
        self._admitted = 0
        self._freed = 0
        self._thread = threading.Thread(target=self._loop, name="phi2cpu-engine", daemon=True)
        self._thread.start()

    # --- called from any thread ------------------------------------------------------------
    @property
    def slots_busy(self) -> int:
        return sum(1 for s in self.slots if s.task is not None)

    @property
    def queued(self) -> int:
        """Tasks (choices) waiting in the queue for a slot."""
        return len(self.queue)

    def submit(self, tasks: List[Task]) -> None:
        with self.cond:
            if self.error is not None:
                raise self.error
            if self._closing:
                raise RuntimeError("the scheduler is shut down")
            self.queue.extend(tasks)
            self.cond.notify_all()

    def wake(self) -> None:
        """A task's readiness or cancel flag changed."""
        with self.cond:
            self.cond.notify_all()

    def shutdown(self) -> None:
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        self._thread.join()

    # --- called from a task's thread --------------------------------------------------------
    def _eval(self, slot: _Slot, ids: List[int], all_logits: bool) -> np.ndarray:
        with self.cond:
            if self.error is not None:
                raise self.error
            if self._closing:
                raise Cancelled()
            req = _Request(list(ids), all_logits, first=slot.posts == 0, posted=time.monotonic())
            slot.posts += 1
            slot.request = req
            self.cond.notify()  # only the engine thread waits on cond; a task waits on its request
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _truncate(self, slot: _Slot, n: int) -> None:
        with self.cond:
            slot.keep = n if slot.keep is None else min(n, slot.keep)

    def _tokens(self, slot: _Slot) -> List[int]:
        ids = self.model._seq_tokens[slot.seq]
        return list(ids if slot.keep is None else ids[:slot.keep])

    def _release(self, slot: _Slot) -> None:
        with self.cond:
            slot.task = None
            slot.request = None
            self._freed += 1
            slot.used = self._freed
            self.cond.notify_all()

    # --- the engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._steps()
        except BaseException as e:  # a bug or a failed cache operation: fail loudly, never hang
            log.exception("the engine thread failed")
            with self.cond:
                self.error = EngineError(f"the engine failed ({type(e).__name__}: {e}); restart the server")
                self._closing = True
                self._close(self.error)

    def _steps(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self._closing:
                        self._close(None)
                        return
                    self._apply_truncates()
                    self._drop_cancelled()
                    self._admit()
                    busy = [s for s in self.slots if s.task is not None]
                    waiting = self._wait_for(busy)
                    if waiting == 0:
                        break
                    self.cond.wait(waiting)
                entries, fed = self._batch([s for s in busy if s.request is not None and s.request.open])
            t = time.monotonic()
            try:
                out = self.model.forward_batch(*entries)
            except BaseException as e:  # every request of this step gets the error
                with self.cond:
                    self._stepped(t)
                    for slot, _, _ in fed:
                        slot.request.fail(e)
                continue
            with self.cond:
                self._stepped(t)
                self._deliver(out, fed)

    def _wait_for(self, busy: List[_Slot]) -> Optional[float]:
        """0: step now; else how long to wait for more requests (None: until woken)."""
        posted = [s.request.posted for s in busy if s.request is not None and s.request.open]
        if not posted:
            return None
        if len(posted) == len(busy):
            return 0
        grace = max(self.grace_seconds, self.grace_fraction * self._step_seconds)
        left = max(self._step_end, min(posted)) + grace - time.monotonic()
        return max(left, 0)

    def _stepped(self, started: float) -> None:
        self._step_end = time.monotonic()
        self._step_seconds = self._step_end - started

    def _close(self, error: Optional[BaseException]) -> None:
        """Fail every open request (with `error`, else Cancelled) and drop every queued task."""
        for s in self.slots:
            if s.request is not None and s.request.open:
                s.request.fail(error if error is not None else Cancelled())
        while self.queue:
            task = self.queue.popleft()
            try:
                task.dropped(error)
            except Exception:
                log.exception("dropping a queued task failed")

    def _apply_truncates(self) -> None:
        for s in self.slots:
            if s.keep is not None and (s.task is None or (s.request is not None and s.request.open)):
                self.model.truncate(min(s.keep, self.model.seq_n_past(s.seq)), s.seq)
                s.keep = None

    def _drop_cancelled(self) -> None:
        for task in [t for t in self.queue if t.cancel.is_set()]:
            self.queue.remove(task)
            task.dropped(None)
        for s in self.slots:
            if s.request is not None and s.request.open and s.task is not None and s.task.cancel.is_set():
                s.request.fail(Cancelled())

    def _admit(self) -> None:
        for task in list(self.queue):
            free = [s for s in self.slots if s.task is None]
            if not free:
                return
            if not task.ready():
                continue
            slot = self._place(task.prompt, free)
            self._admitted += 1
            slot.task, slot.order, slot.posts = task, self._admitted, 0
            try:
                threading.Thread(target=self._work, args=(task, slot), name=f"phi2cpu-slot-{slot.seq}",
                                 daemon=True).start()
            except Exception as e:  # no thread for it (the process is out of threads or memory)
                log.exception("starting a slot's thread failed")
                slot.task = None
                self.queue.remove(task)
                task.dropped(e)
                continue
            self.queue.remove(task)

    def _place(self, prompt: List[int], free: List[_Slot]) -> _Slot:
        """The free slot for `prompt`: the one whose cached tokens share the longest prefix with it
        (the least recently used of equals). When a busy slot shares a longer prefix, longer by at
        least `chunk` tokens or by all that the free slot lacks, the prefix is copied into the least
        recently used free slot, which is taken instead. The prompt's last token is always
        evaluated, so a prefix counts up to the token before it. A failed copy is a cache miss."""
        want = len(prompt) - 1

        def have(s: _Slot) -> int:
            return min(common_prefix(self._tokens(s), prompt), want)

        best = max(free, key=lambda s: (have(s), -s.used))
        donor = max((s for s in self.slots if s.task is not None), key=have, default=None)
        if donor is None:
            return best
        gain = have(donor) - have(best)
        if gain > 0 and gain >= min(self.chunk, want - have(best)):
            target = min(free, key=lambda s: s.used)
            try:
                self.model.copy_seq(donor.seq, target.seq, have(donor))
                return target
            except Exception:
                log.exception("copying a cached prefix between slots failed; evaluating it instead")
        return best

    def _work(self, task: Task, slot: _Slot) -> None:
        try:
            task.run(SlotModel(self, slot))
        finally:
            self._release(slot)

    def _batch(self, busy: List[_Slot]):
        tokens: List[int] = []
        positions: List[int] = []
        seqs: List[int] = []
        wants: List[bool] = []
        fed: List[Tuple[_Slot, int, int]] = []  # (slot, tokens fed, rows asked)

        def add(s: _Slot, n: int) -> None:
            r = s.request
            base = self.model.seq_n_past(s.seq)
            take = r.ids[r.fed:r.fed + n]
            flags = [r.all_logits] * n
            if r.fed + n == len(r.ids):
                flags[-1] = True
            tokens.extend(take)
            positions.extend(range(base, base + n))
            seqs.extend([s.seq] * n)
            wants.extend(flags)
            fed.append((s, n, sum(flags)))

        decode = [s for s in busy if s.request.left == 1]
        for s in decode:
            add(s, 1)
        # a later request of at most MAX_DRAFT + 1 tokens is a verification, fed whole outside the
        # prompt budget like decode tokens; a longer one (a task that re-feeds a prompt) is chunked
        verify = [s for s in busy
                  if not s.request.first and s.request.fed == 0 and 1 < s.request.left <= MAX_DRAFT + 1]
        for s in verify:
            add(s, s.request.left)
        room = self.chunk
        chunks = []
        for s in sorted((s for s in busy if s.request.left > 1 and s not in verify), key=lambda s: s.order):
            if room == 0:
                break
            n = min(room, s.request.left)
            add(s, n)
            chunks.append((s.seq, n))
            room -= n
        self.steps += 1
        self.tokens_evaluated += len(tokens)
        self.step_log.append(Step(tuple(s.seq for s in decode), tuple(chunks),
                                  tuple((s.seq, s.request.left) for s in verify)))
        return (tokens, positions, seqs, wants), fed

    def _deliver(self, out: np.ndarray, fed) -> None:
        row = 0
        for slot, n, asked in fed:
            r = slot.request
            r.rows.extend(out[row:row + asked])
            row += asked
            r.fed += n
            if r.fed == len(r.ids):
                r.result = np.stack(r.rows) if r.all_logits else r.rows[-1].copy()
                r.rows = []
                r.done.set()


class SlotModel:
    """One slot seen as a single-sequence model, for the generation code (generate_tokens, prompt
    lookup): `eval` waits for the engine's next step that feeds it, `truncate` and `reset` are
    applied by the engine thread before the next eval."""

    def __init__(self, sched: Scheduler, slot: _Slot):
        self._sched, self._slot = sched, slot
        m = sched.model
        self.tokenizer, self.config, self.n_ctx = m.tokenizer, m.config, m.n_ctx

    @property
    def seq(self) -> int:
        return self._slot.seq

    @property
    def tokens(self) -> List[int]:
        return self._sched._tokens(self._slot)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("eval needs at least one token")
        if self.n_past + len(ids) > self.n_ctx:
            raise ContextFullError(f"{len(ids)} tokens do not fit: {self.n_past} of the {self.n_ctx}-token "
                                   f"context are in use")
        return self._sched._eval(self._slot, ids, all_logits)

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate needs 0..{self.n_past}, got {n}")
        self._sched._truncate(self._slot, n)

    def reset(self) -> None:
        self.truncate(0)
