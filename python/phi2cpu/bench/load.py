"""Load time: what a user waits for on every `phi2cpu run`, next to llama.cpp's on the same file.

Each trial is a fresh worker process: `load` times the engine's own load call (phi2cpu.load, its
tokenizer included; llama_cpp.Llama), `first` the forward of one token after it, since an engine
may defer work to its first token (llama.cpp's mapped pages fault in then); ready = load + first.
The file is read through once first, so every trial finds it in the page cache, and each engine
loads once untimed: for phi2cpu that writes its repack cache when there is none, and that first
load's time is reported on its own. Counted trials then alternate the engines.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .worker import Worker, WorkerError

N_CTX = 2048  # the CLI's default context


@dataclass
class LoadCell:
    engine: str
    format: str
    threads: int
    status: str = "pending"            # ok | skipped | failed
    reason: str = ""
    first_load_s: Optional[float] = None  # the untimed first load (phi2cpu: writes the repack cache)
    first_weights: str = ""            # phi2cpu: where its matrices came from on that first load
    weights: str = ""                  # ... and on the counted trials ("cache" when the cache served)
    load_s: list[float] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)
    peak_rss: Optional[int] = None     # the largest of the counted trials


def read_through(path: Path) -> None:
    """Reads the whole file, so that it is in the page cache."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def summarize(xs: list[float]) -> Optional[dict]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else None


class LoadRunner:
    def __init__(self, trials: int, log: Callable[[str], None], log_path: Optional[str] = None, n_ctx: int = N_CTX):
        self.trials, self.log, self.log_path, self.n_ctx = trials, log, log_path, n_ctx

    def _trial(self, cell: LoadCell, path: str) -> tuple[float, float, str, Optional[int]]:
        """One fresh process: (load s, ready s, phi2cpu's weights source, peak RSS)."""
        worker = Worker(cell.engine, cell.threads, self.log_path)
        try:
            reply = worker.call("load", path=path, threads=cell.threads, n_ctx=self.n_ctx)
            first = worker.call("first")["s"]
        finally:
            peak = worker.close()
        return reply["load_s"], reply["load_s"] + first, reply.get("weights", ""), peak

    def run(self, cells: list[LoadCell], path: str) -> None:
        """Cells of one format, all with this file; fills them in place."""
        read_through(Path(path))
        live = [c for c in cells if c.status == "pending"]
        for c in list(live):
            try:
                c.first_load_s, _, c.first_weights, _ = self._trial(c, path)
            except (WorkerError, OSError) as e:
                c.status, c.reason = "failed", str(e)
                live.remove(c)
                self.log(f"  {c.engine} {c.format} failed to load: {e}")
        for t in range(self.trials):
            for c in list(live):
                try:
                    load_s, ready_s, c.weights, peak = self._trial(c, path)
                except (WorkerError, OSError) as e:
                    c.status, c.reason = "failed", str(e)
                    live.remove(c)
                    self.log(f"  {c.engine} {c.format} failed: {e}")
                    continue
                c.load_s.append(load_s)
                c.ready_s.append(ready_s)
                c.peak_rss = max(c.peak_rss or 0, peak or 0) or None
                self.log(f"  trial {t + 1}/{self.trials} {c.engine:9s} {c.format:5s} t={c.threads}: "
                         f"load {load_s:.2f} s, ready {ready_s:.2f} s")
        for c in live:
            c.status = "ok"


def cell_dict(c: LoadCell) -> dict:
    from dataclasses import asdict

    d = asdict(c)
    d["load"], d["ready"] = summarize(c.load_s), summarize(c.ready_s)
    return d
