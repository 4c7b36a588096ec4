"""One engine in its own process, driven over JSON lines on stdin/stdout.

Every measurement runs in a fresh child so that its load time and peak RSS belong to that engine
and format alone. The parent keeps several children loaded and alternates between them.

Requests are objects with "cmd"; replies are {"ok": true, ...} or {"ok": false, "error": "..."}:
    load      path, threads, n_ctx, all_logits  -> load_s (phi2cpu also: weights, where its matrices came from)
    first                                       -> s (one token through a fresh cache)
    pp        ids                               -> s (fresh cache, one call)
    tg        prompt, n                         -> s (n single-token steps after the prompt), tokens
    greedy    ids, n                            -> tokens, margins (top-2 logit gap per step), top (first step's top 5)
    next      ids, ends                         -> tokens: the greedy next token after each prefix ids[:end]
    tokenize  text                              -> ids
    logits    ids, out                          -> writes every position's logits to `out` (.npy)
    nll       ids, window, max_windows          -> nll_sum, n_scored, n_windows
    quit                                        -> peak_rss (bytes, this process)
"""
from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import time
import traceback
from typing import Any, Optional, Sequence

import numpy as np

from .engines import make_engine

N_TOKENIZER_VOCAB = 50295  # ids past the tokenizer's never win the argmax
FIRST_TOKEN = 50256        # <|endoftext|>: the token `first` runs
CALL_TIMEOUT_S = 3600.0


def _argmax(logits: np.ndarray) -> int:
    return int(np.argmax(logits[:N_TOKENIZER_VOCAB]))


def peak_rss_bytes() -> int:
    """This process's peak resident set (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Server:
    def __init__(self, engine_name: str):
        self.engine = make_engine(engine_name)

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> dict:
        t0 = time.perf_counter()
        self.engine.load(path, threads, n_ctx, all_logits)
        return {"load_s": time.perf_counter() - t0, **self.engine.load_info()}

    def first(self) -> dict:
        self.engine.reset()
        t0 = time.perf_counter()
        self.engine.eval([FIRST_TOKEN])
        return {"s": time.perf_counter() - t0}

    # An engine that runs whole generations in its own loop (no per-token call) times itself:
    # prefill_s(ids) -> s, decode(prompt, n) -> (s, tokens), greedy(ids, n) -> the reply below.
    def pp(self, ids: Sequence[int]) -> dict:
        if hasattr(self.engine, "prefill_s"):
            return {"s": self.engine.prefill_s(ids)}
        self.engine.reset()
        t0 = time.perf_counter()
        self.engine.eval(ids)
        return {"s": time.perf_counter() - t0}

    def tg(self, prompt: Sequence[int], n: int) -> dict:
        if hasattr(self.engine, "decode"):
            s, tokens = self.engine.decode(prompt, n)
            return {"s": s, "tokens": tokens}
        self.engine.reset()
        tok = _argmax(self.engine.eval(prompt))
        tokens = []
        t0 = time.perf_counter()
        for _ in range(n):
            tokens.append(tok)
            tok = _argmax(self.engine.eval([tok]))
        return {"s": time.perf_counter() - t0, "tokens": tokens}

    def greedy(self, ids: Sequence[int], n: int) -> dict:
        """tokens, margins (top-2 logit gap per step, None when the engine gives no logits), top."""
        if hasattr(self.engine, "greedy"):
            return self.engine.greedy(ids, n)
        self.engine.reset()
        logits = self.engine.eval(ids)
        top = np.argsort(-logits[:N_TOKENIZER_VOCAB])[:5]
        first = {"ids": [int(i) for i in top], "logits": [float(logits[i]) for i in top]}
        tokens, margins = [], []
        for step in range(n):
            two = np.partition(logits[:N_TOKENIZER_VOCAB], -2)[-2:]
            margins.append(float(two[1] - two[0]))
            tokens.append(_argmax(logits))
            if step + 1 < n:
                logits = self.engine.eval([tokens[-1]])
        return {"tokens": tokens, "margins": margins, "top": first}

    def next(self, ids: Sequence[int], ends: Sequence[int]) -> dict:
        return {"tokens": [self.greedy(list(ids[:e]), 1)["tokens"][0] for e in ends]}

    def tokenize(self, text: str) -> dict:
        return {"ids": self.engine.tokenize(text)}

    def logits(self, ids: Sequence[int], out: str) -> dict:
        self.engine.reset()
        np.save(out, np.asarray(self.engine.eval_all(ids), dtype=np.float32))
        return {}

    def nll(self, ids: Sequence[int], window: int, max_windows: Optional[int] = None) -> dict:
        from ..perplexity import window_nll

        n_windows = len(ids) // window
        if max_windows is not None:
            n_windows = min(n_windows, max_windows)
        total, count = 0.0, 0
        for w in range(n_windows):
            chunk = list(ids[w * window:(w + 1) * window])
            self.engine.reset()
            nll = window_nll(self.engine.eval_all(chunk), chunk)
            total += float(nll.sum())
            count += int(nll.size)
        return {"nll_sum": total, "n_scored": count, "n_windows": n_windows}

    def handle(self, req: dict) -> dict:
        cmd = req.pop("cmd")
        if cmd == "quit":
            return {"ok": True, "peak_rss": peak_rss_bytes()}
        if cmd not in ("load", "first", "pp", "tg", "greedy", "next", "tokenize", "logits", "nll"):
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return {"ok": True, **getattr(self, cmd)(**req)}


def serve(engine_name: str) -> int:
    """The child's loop. Its stdout carries replies only; everything else goes to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # engines that print go to stderr
    server = Server(engine_name)
    for line in sys.stdin:
        req = json.loads(line)
        quitting = req.get("cmd") == "quit"
        try:
            reply = server.handle(req)
        except Exception as e:  # reported to the parent, which records the engine as failed
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}".strip()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if quitting:
            break
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """Parent side: a child process running one engine."""

    def __init__(self, engine: str, threads: int, log_path: Optional[str] = None):
        self.engine = engine
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        self.log = open(log_path, "a") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "phi2cpu.bench.worker", engine],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> dict:
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.engine} worker exited with status {self.proc.returncode}")
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        # One request is outstanding at a time and each reply is one line, so nothing is left
        # in the pipe's read buffer between calls and select() on the descriptor is reliable.
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise WorkerError(f"{self.engine}: {cmd} took longer than {timeout:.0f} s; the worker was stopped")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{self.engine} worker died during {cmd!r} (exit status {code}; "
                              f"{'killed by signal ' + str(-code) if code < 0 else 'see the log'})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(f"{self.engine}: {cmd} failed: {reply['error']}")
        return reply

    def close(self) -> Optional[int]:
        """Stop the child; returns its peak RSS in bytes (None if it had already died)."""
        peak = None
        try:
            peak = self.call("quit", timeout=120)["peak_rss"]
        except (WorkerError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return peak

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
