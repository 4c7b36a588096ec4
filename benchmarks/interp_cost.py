"""What interventions and captures cost per token: prefill and decode tokens/s with nothing active,
then each kind of intervention at every layer and captures of growing size, each timed in pairs
alternating with a run that has nothing active (so machine noise hits both alike).

    python benchmarks/interp_cost.py MODEL.gguf [--threads 2] [--repeats 5] [--prefill 256] [--decode 64]

Run it against two builds on the same file (before and after a change to the forward pass,
alternating processes) to see what the hooks cost when nothing is asked for: a build without
them prints only the two "nothing active" rows. Prints medians with min-max, and for each paired
run the median of (time with / time without) - 1.

Wall-clock on a shared machine is noisy; instruction counts are not. `--workload KIND` runs one
fixed piece of work (decode-none, decode-steer, decode-ablate, decode-patch: an 8-token prompt and
32 single tokens; cap-none, cap-resid, cap-probs, cap-all: a 64-token run_with_cache) to count
under callgrind, only inside the forward pass:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='phi2cpu::Model::forward(*' \
        python benchmarks/interp_cost.py MODEL.gguf --threads 1 --workload decode-steer
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


LABELS = {"steer": "steer (add at resid_pre) every layer", "ablate": "ablate one head every layer",
          "patch": "patch mlp_post at one position every layer"}


def intervention_kinds(m) -> dict:
    from phi2cpu import interp

    c = m.config
    every = range(c.n_layer)
    rng = np.random.default_rng(1)
    return {
        "none": [],
        "steer": interp.steer(rng.normal(0, 1, c.n_embd), layers=every),
        "ablate": [interp.scale_heads(i, [0], 0.0, c.n_head, c.head_dim) for i in every],
        "patch": [interp.patch(f"mlp_post.{i}", rng.normal(0, 1, c.n_ff), positions=[20]) for i in every],
    }


def workload(m, kind: str) -> None:
    ids = [int(t) for t in np.random.default_rng(0).integers(0, 50000, 80)]
    if kind.startswith("decode-"):
        m.set_interventions(intervention_kinds(m)[kind[len("decode-"):]])
        m.eval(ids[:8])
        for t in ids[8:40]:
            m.eval([t])
        return
    names = {"cap-none": [], "cap-resid": ["resid_post.*"], "cap-probs": ["attn_probs.*"], "cap-all": None}[kind]
    m.run_with_cache(ids[:64], names=names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--plain", action="store_true", help="only the runs with nothing active")
    ap.add_argument("--workload", choices=[f"decode-{k}" for k in ("none", "steer", "ablate", "patch")] +
                    [f"cap-{k}" for k in ("none", "resid", "probs", "all")], help="run one fixed workload, untimed")
    args = ap.parse_args()

    m = phi2cpu.load(args.model, threads=args.threads, n_ctx=args.prefill + args.decode + 8)
    c = m.config
    ids = list(np.random.default_rng(0).integers(0, 50000, args.prefill + args.decode))
    hooks = hasattr(m, "run_with_cache")

    if args.workload:
        return workload(m, args.workload)

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
    kinds = intervention_kinds(m)
    for label, ivs in ((LABELS[k], kinds[k]) for k in ("steer", "ablate", "patch")):
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
