"""Memory read bandwidth: the physical ceiling of single-stream decoding.

Generating one token reads every weight once, so tokens/s can never exceed
bandwidth / weight bytes per token. The probe reads a buffer far larger than the caches with N
threads, each reducing its own slice with a NumPy loop that releases the GIL, and keeps the
best of a few passes (GB/s = 1e9 bytes per second). A byte-wise max is the cheapest reduction
per byte NumPy has (one SIMD compare per 32 or 64 bytes), so the loop is limited by memory, not
by arithmetic; a float sum or a 64-bit OR reads measurably slower on the same machine.
"""
from __future__ import annotations

import threading
import time

import numpy as np

DEFAULT_BYTES = 1 << 30


def _read(chunk: np.ndarray) -> None:
    chunk.max()


def read_bandwidth(threads: int, nbytes: int = DEFAULT_BYTES, passes: int = 5) -> float:
    """Best read bandwidth over `passes` in GB/s with `threads` threads over an `nbytes` buffer."""
    if threads < 1 or nbytes < threads:
        raise ValueError("need at least one thread and one byte per thread")
    buf = np.ones(nbytes, dtype=np.uint8)  # written once, so every page is really mapped
    chunks = np.array_split(buf, threads)
    best = 0.0
    for _ in range(passes):
        barrier = threading.Barrier(threads + 1)

        def work(chunk: np.ndarray) -> None:
            barrier.wait()
            _read(chunk)

        pool = [threading.Thread(target=work, args=(c,)) for c in chunks]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        best = max(best, buf.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def decode_ceiling(bandwidth_gbs: float, bytes_per_token: int) -> float:
    """Upper bound on tokens/s when each token must read `bytes_per_token` from memory."""
    return bandwidth_gbs * 1e9 / bytes_per_token


def weight_bytes_per_token(gguf_path) -> int:
    """Bytes of every tensor decoding reads: all of them except token_embd (one row is looked up)."""
    from ..gguf_io import read_model_file

    mf = read_model_file(gguf_path)
    return sum(t.nbytes for name, t in mf.tensors.items() if name != "token_embd.weight")
