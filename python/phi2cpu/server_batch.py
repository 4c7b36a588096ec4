"""The server's batch scheduler: one engine thread owns the model's `n_seq` KV-cache sequences
(the slots) and runs every forward pass; each admitted task runs on a worker thread of its own and
sees its slot as a single-sequence model (:class:`SlotModel`).

A step is one `Model.forward_batch` call holding one entry for every slot whose request has one
token left (a decode step, or the last token of a prompt) and at most `chunk` tokens of the longer
requests (prompts, and prompt-lookup verifications), taken first come, first served across slots.
So a step evaluates at most ``n_seq + chunk`` tokens, and that bounds how long a long prompt can
hold up the other streams: one step, never the whole prompt. The engine steps once every busy
slot has posted its next request (or freed the slot), so each step carries every stream.

Admission is first in, first out: a task waiting for its prompt's first choice to be prefilled
(the other `n` choices of a prompt) keeps its place and is admitted as soon as it can be. A task
takes the free slot whose cached tokens share the longest prefix with its prompt; when a busy or
less recently used slot shares a longer one, those positions are copied into the least recently
used free slot first (`Model.copy_seq`), so a chat that resends its history, or choice 2 of a
prompt, evaluates only the new tokens. Every entry of a step is computed as it would be alone
(see `Model.forward_batch`), so a task's logits do not depend on the other slots nor on where its
prefix came from.

All KV-cache changes happen on the engine thread: a task's truncate or reset is recorded and
applied before its next request is fed.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

from .errors import ContextFullError

DEFAULT_CHUNK = 64      # prompt tokens per step, over all slots
STEP_LOG = 4096         # steps kept in Scheduler.step_log


class Cancelled(Exception):
    """Raised in a task's thread when its request was dropped (the client went away)."""


@dataclass
class Step:
    """What one forward pass held: the slots fed one token, and (slot, tokens) of the longer requests."""
    decode: Tuple[int, ...]
    chunks: Tuple[Tuple[int, int], ...]

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
    dropped: Callable[[], None] = lambda: None  # called instead of run when cancelled while queued


@dataclass(eq=False)
class _Request:
    ids: List[int]
    all_logits: bool
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
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
        self.model = model
        self.chunk = chunk
        self.slots = [_Slot(s) for s in range(model.n_seq)]
        self.queue: Deque[Task] = deque()
        self.step_log: Deque[Step] = deque(maxlen=STEP_LOG)
        self.steps = 0
        self.tokens_evaluated = 0      # entries fed to the model, every kind
        self.cond = threading.Condition()
        self._closing = False
        self._admitted = 0
        self._freed = 0
        self._thread = threading.Thread(target=self._loop, name="phi2cpu-engine", daemon=True)
        self._thread.start()

    # --- called from any thread ------------------------------------------------------------
    @property
    def slots_busy(self) -> int:
        return sum(1 for s in self.slots if s.task is not None)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def submit(self, tasks: List[Task]) -> None:
        with self.cond:
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
        req = _Request(list(ids), all_logits)
        with self.cond:
            if self._closing:
                raise Cancelled()
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
        while True:
            with self.cond:
                while True:
                    if self._closing:
                        self._close()
                        return
                    self._apply_truncates()
                    self._drop_cancelled()
                    self._admit()
                    busy = [s for s in self.slots if s.task is not None]
                    if busy and all(s.request is not None and s.request.open for s in busy):
                        break
                    self.cond.wait()
                entries, fed = self._batch(busy)
            try:
                out = self.model.forward_batch(*entries)
            except BaseException as e:  # every request of this step gets the error
                with self.cond:
                    for slot, _, _ in fed:
                        slot.request.fail(e)
                continue
            with self.cond:
                self._deliver(out, fed)

    def _close(self) -> None:
        for s in self.slots:
            if s.request is not None and s.request.open:
                s.request.fail(Cancelled())
        while self.queue:
            self.queue.popleft().dropped()

    def _apply_truncates(self) -> None:
        for s in self.slots:
            if s.keep is not None and (s.task is None or (s.request is not None and s.request.open)):
                self.model.truncate(min(s.keep, self.model.seq_n_past(s.seq)), s.seq)
                s.keep = None

    def _drop_cancelled(self) -> None:
        for task in [t for t in self.queue if t.cancel.is_set()]:
            self.queue.remove(task)
            task.dropped()
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
            self.queue.remove(task)
            slot = self._place(task.prompt, free)
            self._admitted += 1
            slot.task, slot.order = task, self._admitted
            threading.Thread(target=self._work, args=(task, slot), name=f"phi2cpu-slot-{slot.seq}", daemon=True).start()

    def _place(self, prompt: List[int], free: List[_Slot]) -> _Slot:
        """The free slot for `prompt`: the one with the longest cached prefix of it, or the least
        recently used one after copying a longer prefix from another slot into it."""
        def lcp(s: _Slot) -> int:
            return common_prefix(self._tokens(s), prompt)

        best = max(free, key=lambda s: (lcp(s), -s.used))
        have = lcp(best)
        if have == 0:
            best = min(free, key=lambda s: s.used)
        donors = [s for s in self.slots if s is not best]
        donor = max(donors, key=lcp, default=None)
        if donor is not None and lcp(donor) > have:
            target = min(free, key=lambda s: (s is donor, s.used))
            if target is not donor:
                self.model.copy_seq(donor.seq, target.seq, lcp(donor))
                return target
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
        room = self.chunk
        for s in sorted((s for s in busy if s.request.left > 1), key=lambda s: s.order):
            if room == 0:
                break
            n = min(room, s.request.left)
            add(s, n)
            room -= n
        self.steps += 1
        self.tokens_evaluated += len(tokens)
        self.step_log.append(Step(tuple(s.seq for s in decode), tuple((s.seq, n) for s, n, _ in fed if s not in decode)))
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
