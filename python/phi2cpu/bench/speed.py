"""Speed: prompt processing and generation, engines alternating within a group.

A group is one (format, thread count): every engine that runs that format is loaded in its own
child process, all are warmed up, then counted rounds alternate A B A B ... so that machine
noise and drift fall on every engine alike. Groups run in priority order (all threads first,
then fewer); a group whose estimated cost (from its warm-up) overruns the time budget drops its
lowest-priority engines, phi2cpu last, each drop recorded with its reason. An engine whose
warm-up rates at another thread count already show it cannot fit is not even loaded.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .engines import HF_BF16, HF_FP32, LLAMA_CPP, PHI2CPU, TORCH_INT8
from .worker import Worker, WorkerError

GIB = 1 << 30


@dataclass
class Workload:
    pp: int = 512            # prompt tokens, fresh cache
    tg: int = 128            # generated tokens, one per step
    tg_prompt: int = 16      # prompt before generation
    runs: int = 3            # counted runs per engine
    warmup_pp: int = 64      # warm-up sizes: enough to fault the weights in and estimate cost
    warmup_tg: int = 8

    def ids(self, vocab: int = 50000) -> tuple[list[int], list[int]]:
        """The same fixed token ids for every engine: a prompt of `pp`, and one of `tg_prompt`."""
        rng = np.random.default_rng(20240)
        return ([int(i) for i in rng.integers(100, vocab, self.pp)],
                [int(i) for i in rng.integers(100, vocab, self.tg_prompt)])


@dataclass
class Cell:
    """One engine on one format at one thread count."""
    engine: str
    format: str
    threads: int
    model: str = ""
    status: str = "pending"          # ok | skipped | failed
    reason: str = ""
    load_s: Optional[float] = None
    peak_rss: Optional[int] = None
    pp_tps: list[float] = field(default_factory=list)
    tg_tps: list[float] = field(default_factory=list)
    alternated_with: list[str] = field(default_factory=list)

    def summary(self, which: str) -> Optional[dict]:
        xs = self.pp_tps if which == "pp" else self.tg_tps
        return summarize(xs) if xs else None


def summarize(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def memory_need(engine: str, fmt: str, model_bytes: int, n_params: int) -> int:
    """Rough resident bytes of one engine (GGUF engines map the file; torch holds its dtype, the
    int8 one after loading fp32; the exports hold their own weights)."""
    if engine in (HF_FP32, TORCH_INT8):
        return int(n_params * 4 * 1.1)
    if fmt in ("int4", "int8"):
        return int(n_params * (0.7 if fmt == "int4" else 1.2))
    if engine == HF_BF16:
        return int(n_params * 2 * 1.1)
    return model_bytes


def mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def split_by_memory(engines: list[str], need: Callable[[str], int], budget: int) -> list[list[str]]:
    """Greedy packing in priority order: GGUF engines on one file share its pages, so they are
    counted once; a torch engine that does not fit beside the others gets a group of its own."""
    groups: list[list[str]] = []
    for e in engines:
        for g in groups:
            gguf_bytes = max((need(x) for x in g + [e] if x in (PHI2CPU, LLAMA_CPP)), default=0)
            torch_bytes = sum(need(x) for x in g + [e] if x not in (PHI2CPU, LLAMA_CPP))
            if gguf_bytes + torch_bytes <= budget:
                g.append(e)
                break
        else:
            groups.append([e])
    return groups


class GroupRunner:
    """Runs one group of cells to completion: load, warm up, estimate, alternate, close."""

    def __init__(self, workload: Workload, log: Callable[[str], None], log_path: Optional[str] = None):
        self.w = workload
        self.log = log
        self.log_path = log_path
        self.pp_ids, self.tg_prompt = workload.ids()
        self.known: dict[tuple[str, str], tuple[float, float]] = {}  # best warm-up rates seen

    def _start(self, cell: Cell, path: str, n_ctx: int) -> Optional[Worker]:
        worker = Worker(cell.engine, cell.threads, self.log_path)
        try:
            cell.load_s = worker.call("load", path=path, threads=cell.threads, n_ctx=n_ctx)["load_s"]
            cell.model = Path(path).name
            return worker
        except (WorkerError, OSError) as e:
            cell.peak_rss = worker.close()
            cell.status, cell.reason = "failed", str(e)
            self.log(f"  {cell.engine} {cell.format} failed to load: {e}")
            return None

    def _one(self, worker: Worker, cell: Cell, pp: int, tg: int) -> tuple[float, float]:
        """One run: pp tokens from a fresh cache, then tg tokens after the short prompt (tokens/s)."""
        pp_s = worker.call("pp", ids=self.pp_ids[:pp])["s"]
        tg_s = worker.call("tg", prompt=self.tg_prompt, n=tg)["s"]
        return pp / pp_s, tg / tg_s

    def estimate_s(self, rates: dict[str, tuple[float, float]], engines: list[str]) -> float:
        return self.w.runs * sum(self.w.pp / rates[e][0] + (self.w.tg + self.w.tg_prompt) / rates[e][1]
                                 for e in engines)

    def _hopeless(self, cell: Cell, deadline: Optional[float]) -> bool:
        """Skip without loading when the best rates seen for this engine and format (at any thread
        count) already need more than the time left."""
        if deadline is None:
            return False
        left = deadline - time.monotonic()
        rates = self.known.get((cell.engine, cell.format))
        need = self.estimate_s({cell.engine: rates}, [cell.engine]) if rates else 0.0
        if left > 0 and need <= left:
            return False
        cell.status = "skipped"
        cell.reason = (f"time budget: ~{need:.0f} s of counted runs at the best rates seen, {max(left, 0):.0f} s "
                       "were left" if rates else "time budget: no time was left")
        self.log(f"  skipping {cell.engine} {cell.format} t={cell.threads}: {cell.reason}")
        return True

    def run(self, cells: list[Cell], paths: dict[str, str], deadline: Optional[float]) -> None:
        n_ctx = max(self.w.pp, self.w.tg_prompt + self.w.tg) + 8
        workers: dict[str, Worker] = {}
        cells = [c for c in cells if not self._hopeless(c, deadline)]
        try:
            for c in cells:
                w = self._start(c, paths[c.engine], n_ctx)
                if w is not None:
                    workers[c.engine] = w
            live = [c for c in cells if c.engine in workers]
            rates = {}
            for c in list(live):
                try:
                    rates[c.engine] = self._one(workers[c.engine], c, min(self.w.warmup_pp, self.w.pp),
                                                min(self.w.warmup_tg, self.w.tg))
                    old = self.known.get((c.engine, c.format), (0.0, 0.0))
                    self.known[(c.engine, c.format)] = (max(old[0], rates[c.engine][0]),
                                                        max(old[1], rates[c.engine][1]))
                except WorkerError as e:
                    c.status, c.reason = "failed", str(e)
                    live.remove(c)
            live = self._fit_budget(live, rates, deadline)
            for c in live:
                c.alternated_with = [o.engine for o in live if o is not c]
            for r in range(self.w.runs):
                for c in list(live):
                    try:
                        pp, tg = self._one(workers[c.engine], c, self.w.pp, self.w.tg)
                    except WorkerError as e:
                        c.status, c.reason = "failed", str(e)
                        live.remove(c)
                        self.log(f"  {c.engine} {c.format} t={c.threads} failed: {e}")
                        continue
                    c.pp_tps.append(pp)
                    c.tg_tps.append(tg)
                    self.log(f"  run {r + 1}/{self.w.runs} {c.engine:9s} {c.format:5s} t={c.threads}: "
                             f"pp{self.w.pp} {pp:7.2f} tok/s  tg{self.w.tg} {tg:6.2f} tok/s")
            for c in live:
                c.status = "ok"
        finally:
            for c in cells:
                if c.engine in workers:
                    c.peak_rss = workers[c.engine].close()

    def _fit_budget(self, live: list[Cell], rates: dict, deadline: Optional[float]) -> list[Cell]:
        if deadline is None:
            return live
        live = list(live)
        while live:
            need = self.estimate_s(rates, [c.engine for c in live])
            left = deadline - time.monotonic()
            if need <= left:
                return live
            drop = live[-1]  # lowest priority: cells are in priority order
            drop.status = "skipped"
            drop.reason = (f"time budget: the group needed ~{need:.0f} s of counted runs, {max(left, 0):.0f} s "
                           f"were left (warm-up rates: pp {rates[drop.engine][0]:.2f}, "
                           f"tg {rates[drop.engine][1]:.2f} tok/s)")
            self.log(f"  skipping {drop.engine} {drop.format} t={drop.threads}: {drop.reason}")
            live.pop()
        return live
