"""Cost of one decode step of B tokens against B = 1: how much a batch of B rows costs over one
when the weights are read once for all of them. A step of B tokens is one forward call of B
tokens at a short context (the matmuls of B decoding sequences; attention over a few positions).

    python benchmarks/batch_step.py MODEL.gguf [MODEL.gguf ...] [--python PY ...] [--threads 2]
        [--batches 1 2 4 8] [--rounds 5] [--steps 4]

Each round is a fresh process per interpreter (--python: one per build, default this one) that
times every B in turn, the order rotated from round to round. Prints per-step medians with min-max,
the ratio to B = 1, and the load average at the start and end."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TRIAL = """
import json, sys, time
import phi2cpu
path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batches = json.loads(sys.argv[4])
m = phi2cpu.load(path, threads=threads, n_ctx=512, repack_cache=False)
ids = [(i * 7919) % 50000 for i in range(512)]
m.eval(ids[:8]); m.reset()                      # warm the pages and the pool
out = {}
for b in batches:
    m.reset(); m.eval(ids[:8])
    m.eval(ids[8:8 + b])                        # one untimed step at this size
    t0 = time.perf_counter()
    for s in range(steps):
        m.eval(ids[16 + s * b:16 + (s + 1) * b])
    out[b] = (time.perf_counter() - t0) / steps
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--python", nargs="+", default=[sys.executable])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for model in args.models:
        got = {py: {b: [] for b in args.batches} for py in args.python}
        for r in range(args.rounds):
            order = args.batches[r % len(args.batches):] + args.batches[:r % len(args.batches)]
            for py in args.python:
                out = subprocess.run([py, "-c", TRIAL, model, str(args.threads), str(args.steps), json.dumps(order)],
                                     check=True, capture_output=True, text=True).stdout
                for b, s in json.loads(out.splitlines()[-1]).items():
                    got[py][int(b)].append(s)
        print(model)
        for py in args.python:
            one = statistics.median(got[py][args.batches[0]])
            for b in args.batches:
                v = got[py][b]
                med = statistics.median(v)
                print(f"  {py}  B={b}: {med * 1e3:7.1f} ms/step (min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f})"
                      f"  x{med / one:.2f} of B={args.batches[0]}  {b / med:6.2f} tok/s")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
