"""The server's scheduler (phi2cpu.server_batch) and engine on a fake model that records every
forward pass: engine-thread failures end every request with an error instead of hanging, a slow
task does not hold the other streams, verifications do not wait for other slots' prompts, prefix
copies between slots, and a failed prefill keeps the prompt's other choices from starting."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest

from phi2cpu.errors import Phi2Error
from phi2cpu.lookup import MAX_DRAFT
from phi2cpu.sampling import SamplingParams
from phi2cpu.server_batch import EngineError, Scheduler, Task
from phi2cpu.server_engine import Engine, ErrorEvent, Job

N_VOCAB = 8
WAIT = 10  # seconds: far beyond any step here; reaching it means a hang


class FakeModel:
    """The part of Model the scheduler uses, computing nothing: a step takes `step_seconds`."""

    def __init__(self, n_seq: int, step_seconds: float = 0.0, n_ctx: int = 4096):
        self.n_seq, self.n_ctx, self.step_seconds = n_seq, n_ctx, step_seconds
        self._seq_tokens: List[List[int]] = [[] for _ in range(n_seq)]
        self.copies: List[tuple] = []
        self.tokenizer = SimpleNamespace(n_vocab=N_VOCAB)
        self.config = SimpleNamespace(n_vocab=N_VOCAB)

    def seq_n_past(self, seq: int) -> int:
        return len(self._seq_tokens[seq])

    def truncate(self, n: int, seq: int) -> None:
        del self._seq_tokens[seq][n:]

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        self.copies.append((src, dst, n))
        self._seq_tokens[dst] = self._seq_tokens[src][:n]

    def forward_batch(self, tokens, positions, seqs, wants) -> np.ndarray:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        for t, p, s in zip(tokens, positions, seqs):
            assert p == len(self._seq_tokens[s])
            self._seq_tokens[s].append(t)
        return np.zeros((sum(wants), N_VOCAB), np.float32)


class Recorder:
    """A task's outcome: `ran` when run returned, else the error it raised or was dropped with."""

    def __init__(self):
        self.finished = threading.Event()
        self.error = None
        self.dropped = False

    def task(self, prompt: List[int], body) -> Task:
        def run(m):
            try:
                body(m)
            except BaseException as e:
                self.error = e
            finally:
                self.finished.set()

        def dropped(error=None):
            self.dropped, self.error = True, error
            self.finished.set()

        return Task(list(prompt), threading.Event(), run=run, dropped=dropped)

    def wait(self):
        assert self.finished.wait(WAIT), "the task hung"
        return self


def test_an_engine_thread_failure_fails_every_request_instead_of_hanging():
    model = FakeModel(1)
    sched = Scheduler(model, chunk=8)

    def truncate_fails(n, seq):
        raise RuntimeError("boom")

    model.truncate = truncate_fails
    running, queued = Recorder(), Recorder()

    def body(m):
        m.eval([1, 2, 3])
        m.truncate(1)   # applied by the engine thread before the next request: it raises there
        m.eval([4])

    sched.submit([running.task([1, 2, 3], body), queued.task([5], lambda m: m.eval([5]))])
    assert isinstance(running.wait().error, EngineError) and "boom" in str(running.error)
    assert queued.wait().dropped and queued.error is running.error
    assert sched.error is running.error
    with pytest.raises(EngineError, match="boom"):
        sched.submit([Recorder().task([1], lambda m: m.eval([1]))])
    sched.shutdown()


def test_a_failed_thread_start_drops_that_task_and_frees_its_slot(monkeypatch):
    import phi2cpu.server_batch as sb

    real = sb.threading.Thread
    fails = [1]

    class Thread(real):
        def start(self):
            if fails:
                fails.pop()
                raise RuntimeError("can't start new thread")
            super().start()

    sched = Scheduler(FakeModel(1), chunk=8)
    monkeypatch.setattr(sb.threading, "Thread", Thread)  # for the slots' threads, not the engine's
    first, second = Recorder(), Recorder()
    sched.submit([first.task([1], lambda m: m.eval([1])), second.task([2], lambda m: m.eval([2]))])
    assert first.wait().dropped and "can't start" in str(first.error)
    assert second.wait().error is None and not second.dropped
    assert sched.error is None and sched.queued == 0
    sched.shutdown()


def test_a_failed_prefix_copy_is_a_cache_miss():
    model = FakeModel(2)

    def copy_fails(src, dst, n):
        raise MemoryError("no room")

    sched = Scheduler(model, chunk=8)
    prompt = list(range(40))
    hold, holder = _fill(sched, model, prompt)
    model.copy_seq = copy_fails
    got = Recorder()
    seen = []

    def body(m):
        seen.append(m.n_past)  # nothing cached: the copy failed
        m.eval(prompt)

    sched.submit([got.task(prompt, body)])
    assert got.wait().error is None and seen == [0]
    hold.set()
    holder.wait()
    assert sched.error is None
    sched.shutdown()


def test_a_slow_task_does_not_hold_up_the_other_stream():
    """Task `slow` sleeps between its evals (as echo with log-probs of a long prompt computes top
    log-probs on its thread); `fast` must get step after step meanwhile, each within the grace
    plus one step, not one step per eval of the slow task."""
    sched = Scheduler(FakeModel(2, step_seconds=0.002), chunk=8)
    done = threading.Event()
    gaps: List[float] = []
    slow, fast = Recorder(), Recorder()
    pause, rounds = 0.3, 3

    def slow_body(m):
        m.eval([1])
        for _ in range(rounds):
            time.sleep(pause)
            m.eval([1])
        done.set()

    def fast_body(m):
        m.eval([2])
        last = time.monotonic()
        while not done.is_set():
            m.eval([2])
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    sched.submit([slow.task([1], slow_body), fast.task([2], fast_body)])
    assert slow.wait().error is None and fast.wait().error is None
    assert len(gaps) >= 4 * (rounds + 1)  # before: one step per slow eval, each gap about `pause`
    assert sorted(gaps)[len(gaps) // 2] < pause / 3  # the typical gap: the grace plus one step
    sched.shutdown()


def test_a_verification_does_not_wait_for_another_slots_prompt():
    chunk = 8
    model = FakeModel(2, step_seconds=0.002)
    sched = Scheduler(model, chunk=chunk)
    long_prompt = list(range(400))
    prefill, verifier = Recorder(), Recorder()
    started = threading.Event()

    def long_body(m):
        started.wait(WAIT)
        m.eval(long_prompt)

    def verify_body(m):
        started.set()
        m.eval([7])
        deadline = time.monotonic() + WAIT
        while model.seq_n_past(0) == 0 and time.monotonic() < deadline:  # the long prompt is being fed
            time.sleep(0.001)
        before = sched.steps
        m.eval([7, 1, 2, 3, 4])  # [pending] + a 4-token draft: a later request of several tokens
        waited.append((sched.steps - before, model.seq_n_past(0)))

    waited = []
    sched.submit([prefill.task(long_prompt, long_body), verifier.task([7], verify_body)])
    assert prefill.wait().error is None and verifier.wait().error is None
    ((steps, prompt_fed),) = waited
    assert steps <= 2 and prompt_fed < len(long_prompt)  # not after the 400-token prompt's 50 chunks
    log = list(sched.step_log)
    (at,) = [i for i, s in enumerate(log) if s.verify]
    assert log[at].verify == ((1, 5),)
    assert sum(s.prompt_tokens for s in log[at + 1:]) > 0  # the long prompt was still being fed
    assert all(s.prompt_tokens <= chunk for s in log)
    k, n_seq = 4, 2  # the stated bound: n_seq x (k + 1) + chunk tokens a step
    assert all(len(s.decode) + sum(n for _, n in s.verify) + s.prompt_tokens <= n_seq * (k + 1) + chunk for s in log)
    sched.shutdown()


def _fill(sched: Scheduler, model: FakeModel, prompt: List[int]):
    """A busy slot (0) holding `prompt`, and the event that frees it."""
    hold, holder = threading.Event(), Recorder()

    def body(m):
        m.eval(prompt)
        hold.wait(WAIT)

    sched.submit([holder.task(prompt, body)])
    deadline = time.monotonic() + WAIT
    while model.seq_n_past(0) < len(prompt) and time.monotonic() < deadline:
        time.sleep(0.005)
    return hold, holder


def test_a_later_request_longer_than_any_draft_is_fed_in_chunks():
    """A task that feeds a whole prompt again after its first request (a reset, then a re-feed) shares
    the chunk budget: only requests a verification can be (MAX_DRAFT + 1 tokens) go outside it."""
    chunk = 8
    model = FakeModel(1)
    sched = Scheduler(model, chunk=chunk)
    again = list(range(3, 3 + MAX_DRAFT + 40))
    got = Recorder()

    def body(m):
        m.eval([1, 2])
        m.reset()
        m.eval(again)

    sched.submit([got.task([1, 2], body)])
    assert got.wait().error is None
    log = list(sched.step_log)
    assert all(s.prompt_tokens <= chunk and not s.verify for s in log)
    assert sum(s.prompt_tokens for s in log) + sum(len(s.decode) for s in log) == 2 + len(again)
    sched.shutdown()


def test_a_prefix_is_copied_only_when_it_saves_enough():
    model = FakeModel(3)
    sched = Scheduler(model, chunk=8)
    donor = list(range(100))
    hold, holder = _fill(sched, model, donor)
    model._seq_tokens[1] = donor[:99]            # a free slot holding all but one of the donor's tokens
    seen = []
    r = Recorder()
    sched.submit([r.task(donor + [500, 501], lambda m: (seen.append((m.seq, m.n_past)), m.eval([0])))])
    r.wait()
    assert model.copies == [] and seen == [(1, 99)]  # one token more was not worth a 100-position copy
    model._seq_tokens[1] = []
    r = Recorder()
    sched.submit([r.task(donor, lambda m: (seen.append((m.seq, m.n_past)), m.eval([0])))])
    r.wait()
    assert model.copies == [(0, 2, 99)] and seen[-1] == (2, 99)  # choice 2 of a prompt: all but its last token
    hold.set()
    holder.wait()
    sched.shutdown()


def test_batch_chunk_is_checked_once_with_a_clear_error():
    with pytest.raises(Phi2Error, match="batch_chunk must be an integer >= 1, got 0"):
        Scheduler(FakeModel(1), chunk=0)


def test_a_failed_prefill_cancels_the_other_choices_before_releasing_them():
    """The prompt does not fit the context, so choice 0's prefill raises; choice 1 must never
    start (it is released only once the job is cancelled)."""
    model = FakeModel(2, n_ctx=8)
    engine = Engine(model, chunk=8)
    started = []
    engine._choice = lambda job, m, ids, last, evaluated, index, j, emit: started.append(j)
    wake = engine.scheduler.wake

    def slow_wake():  # widen the window between the release and the cancel
        wake()
        time.sleep(0.3)

    engine.scheduler.wake = slow_wake
    job = Job(prompts=[list(range(20))], params=SamplingParams(), max_tokens=4, stops=[], n=2)

    async def collect():
        return [e async for e in engine.events(job)]

    events = asyncio.run(asyncio.wait_for(collect(), WAIT))
    assert [type(e.error).__name__ for e in events if isinstance(e, ErrorEvent)] == ["ContextFullError"]
    time.sleep(0.1)
    assert started == []
    engine.shutdown()
