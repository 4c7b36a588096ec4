"""What interventions and captures cost per token: prefill and decode tokens/s with nothing active,
then each kind of intervention at every layer and captures of growing size, each timed in pairs
alternating with a run that has nothing active (so machine noise hits both alike).

    python benchmarks/interp_cost.py MODEL.gguf [--threads 2] [--repeats 5] [--prefill 256] [--decode 64]

Run it against two builds on the same file (before and after a change to the forward pass,
alternating processes) to see what the hooks cost when nothing is asked for: a build without
them prints only the two "nothing active" rows. Prints medians with min-max, and for each paired
run the median of (time with / time without) - 1.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import phi2cpu


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: page faults and first-call allocations
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def paired(fn, base, repeats: int) -> tuple[list[float], list[float]]:
    """Times of fn and of base, run alternately."""
    fn()
    base()
    a, b = [], []
    for _ in range(repeats):
        for f, out in ((base, b), (fn, a)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return a, b


def report(label: str, n_tokens: int, secs: list[float], base: list[float] | None = None) -> None:
    rates = sorted(n_tokens / s for s in secs)
    extra = ""
    if base is not None:
        extra = f" {100 * statistics.median(s / b - 1 for s, b in zip(secs, base)):+.1f}% |"
    print(f"| {label} | {statistics.median(rates):.1f} | {rates[0]:.1f}-{rates[-1]:.1f} |{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--plain", action="store_true", help="only the runs with nothing active")
    args = ap.parse_args()

    m = phi2cpu.load(args.model, threads=args.threads, n_ctx=args.prefill + args.decode + 8)
    c = m.config
    ids = list(np.random.default_rng(0).integers(0, 50000, args.prefill + args.decode))
    hooks = hasattr(m, "run_with_cache")

    def decode() -> None:
        m.reset()
        m.eval(ids[:8])
        for t in ids[8:8 + args.decode]:
            logits = m.eval([t])
        assert np.isfinite(logits).all()

    def prefill() -> None:
        assert np.isfinite(m.logits(ids[:args.prefill])).all()

    print(f"{args.model}: {c.n_layer} layers, n_embd {c.n_embd}, {args.threads} threads; tokens/s, "
          f"median of {args.repeats} (min-max)")
    print("| run | tokens/s | min-max | time vs nothing active |\n|---|---|---|---|")
    report(f"prefill {args.prefill}, nothing active", args.prefill, timed(prefill, args.repeats))
    report(f"decode {args.decode}, nothing active", args.decode, timed(decode, args.repeats))
    if not hooks or args.plain:
        return
    from phi2cpu import interp

    every = range(c.n_layer)
    rng = np.random.default_rng(1)
    kinds = {
        "steer (add at resid_pre) every layer": interp.steer(rng.normal(0, 1, c.n_embd), layers=every),
        "ablate one head every layer": [interp.scale_heads(i, [0], 0.0, c.n_head, c.head_dim) for i in every],
        "patch mlp_post at one position every layer": [
            interp.patch(f"mlp_post.{i}", rng.normal(0, 1, c.n_ff), positions=[20]) for i in every],
    }
    for label, ivs in kinds.items():
        def steered() -> None:
            with m.intervene(*ivs):
                decode()
        report(f"decode {args.decode}, {label}", args.decode, *paired(steered, decode, args.repeats))
    for label, names in (("no names", []), ("resid_post.*", ["resid_post.*"]),
                         ("attn_probs.*", ["attn_probs.*"]), ("every point", None)):
        secs, base = paired(lambda: m.run_with_cache(ids[:args.prefill], names=names), prefill, args.repeats)
        report(f"prefill {args.prefill}, run_with_cache {label}", args.prefill, secs, base)


if __name__ == "__main__":
    main()
