"""What the f16 KV cache changes against the f32 one, in one run.

  python benchmarks/kv_type.py quality MINI.gguf EVAL.txt [--prompts 16] [--tokens 128]
      perplexity over every window of EVAL.txt, and greedy agreement: for each of --prompts prompts
      (the starts of evenly spaced windows of EVAL.txt) whether --tokens greedy tokens are identical,
      and where the first difference falls.
  python benchmarks/kv_type.py speed MODEL.gguf [--ctx 1536] [--steps 32] [--reps 3] [--threads 2]
      decode time per token after --ctx cached positions (filled with random keys and values through
      the state API: speed does not depend on their values), f16 and f32 interleaved; medians with
      min-max, and the ratio of medians.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import phi2cpu
from phi2cpu.perplexity import perplexity


def quality(args) -> None:
    text = open(args.eval, encoding="utf-8").read()
    models = {t: phi2cpu.load(args.model, threads=args.threads, kv_type=t) for t in ("f16", "f32")}
    for t, m in models.items() if not args.skip_perplexity else ():
        r = perplexity(m, text, window=args.window)
        print(f"perplexity kv={t}: {r.ppl:.4f} over {r.n_windows} windows of {args.window} tokens")
    ids = models["f32"].tokenize(text)
    step = max(1, (len(ids) - 64) // args.prompts)
    same, firsts = 0, []
    for i in range(args.prompts):
        prompt = models["f32"].detokenize(ids[i * step:i * step + 64])
        got = {t: m.complete(prompt, max_tokens=args.tokens, temperature=0).token_ids for t, m in models.items()}
        a, b = got["f16"], got["f32"]
        if a == b:
            same += 1
        else:
            firsts.append(next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    print(f"greedy agreement: {same}/{args.prompts} prompts give identical {args.tokens}-token continuations"
          + (f"; first differences at tokens {sorted(firsts)}" if firsts else ""))


def speed(args) -> None:
    models = {t: phi2cpu.load(args.model, threads=args.threads, n_ctx=args.ctx + args.steps + 1, kv_type=t)
              for t in ("f16", "f32")}
    c = models["f16"].config
    rng = np.random.default_rng(0)
    k = rng.normal(0, 1, (c.n_layer, args.ctx, c.n_embd)).astype(np.float32)
    v = rng.normal(0, 1, (c.n_layer, args.ctx, c.n_embd)).astype(np.float32)
    times = {t: [] for t in models}
    for _ in range(args.reps):
        for t, m in models.items():  # interleaved: both see the same machine load
            m._engine.set_state(k, v)
            m._tokens = [1] * args.ctx
            m.eval([1])  # warm
            t0 = time.perf_counter()
            for _ in range(args.steps):
                m.eval([1])
            times[t].append((time.perf_counter() - t0) / args.steps * 1000)
    med = {t: statistics.median(x) for t, x in times.items()}
    for t, x in times.items():
        print(f"kv={t}: {med[t]:.1f} ms/token (min {min(x):.1f}, max {max(x):.1f}) decoding at {args.ctx} positions")
    print(f"f32 / f16 median ratio: {med['f32'] / med['f16']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("model")
    q.add_argument("eval")
    q.add_argument("--prompts", type=int, default=16)
    q.add_argument("--tokens", type=int, default=128)
    q.add_argument("--window", type=int, default=512)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--skip-perplexity", action="store_true", help="only the greedy agreement")
    s = sub.add_parser("speed")
    s.add_argument("model")
    s.add_argument("--ctx", type=int, default=1536)
    s.add_argument("--steps", type=int, default=32)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    quality(args) if args.cmd == "quality" else speed(args)


if __name__ == "__main__":
    main()
