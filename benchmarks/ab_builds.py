"""Decode and prefill speed of two phi2cpu builds, interleaved A B A B ... so the VM's drift hits
both alike; for checking that a refactor costs nothing. Each trial is a fresh process.

    python benchmarks/ab_builds.py PYTHON_A PYTHON_B MODEL.gguf [MODEL.gguf ...] [--trials 3]
        [--threads 2] [--pp 128] [--tg 32]

PYTHON_A / PYTHON_B: interpreters whose `import phi2cpu` is each build. Prints tok/s medians and
the B/A ratios."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess

TRIAL = """
import json, sys, time
import phi2cpu
path, threads, pp, tg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = phi2cpu.load(path, threads=threads, n_ctx=pp + tg + 8, repack_cache=False)
ids = [(i * 7919) % 50000 for i in range(pp)]
m.eval(ids[:8]); m.reset()                      # warm the pages and the pool
t0 = time.perf_counter(); m.eval(ids); t1 = time.perf_counter()
for i in range(tg):
    m.eval([(i * 31) % 50000])
t2 = time.perf_counter()
print(json.dumps({"pp": pp / (t1 - t0), "tg": tg / (t2 - t1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=32)
    args = ap.parse_args()
    for model in args.models:
        got: dict[str, list[dict]] = {"A": [], "B": []}
        for _ in range(args.trials):
            for name, py in (("A", args.a), ("B", args.b)):
                out = subprocess.run([py, "-c", TRIAL, model, str(args.threads), str(args.pp), str(args.tg)],
                                     check=True, capture_output=True, text=True).stdout
                got[name].append(json.loads(out.splitlines()[-1]))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("pp", "tg")} for k, v in got.items()}
        print(f"{model}: prefill A {med['A']['pp']:.2f} B {med['B']['pp']:.2f} tok/s (B/A {med['B']['pp'] / med['A']['pp']:.3f}); "
              f"decode A {med['A']['tg']:.2f} B {med['B']['tg']:.2f} tok/s (B/A {med['B']['tg'] / med['A']['tg']:.3f})")


if __name__ == "__main__":
    main()
