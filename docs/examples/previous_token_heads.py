"""Worked example: previous-token heads, their ablation, and a steering vector, on the bundled
demo model (phi2-mini-code, 31M parameters, trained on Python code from site-packages, never the
standard library, so the standard library's own source is held-out text for it).

    python docs/examples/previous_token_heads.py [--json]

1. Score every head by the attention it pays to the previous token on held-out code.
2. Zero the three strongest previous-token heads and measure the perplexity change; as a control,
   zero three other heads drawn at random.
3. Steer generation with a difference-of-means vector: the mean residual stream of lines written
   with double quotes minus that of the same lines with single quotes, added before one layer.
"""
from __future__ import annotations

import argparse
import inspect
import json

import numpy as np

import phi2cpu
from phi2cpu import interp

LINES = ["name = 'alice'", "mode = 'r'", "x = {'a': 1, 'b': 2}", "print('hello world')", "key = 'value'",
         "parser.add_argument('--verbose')", "path = os.path.join('a', 'b')", "msg = 'error: %s' % e",
         "return 'ok'", "if s == 'yes':", "d['k'] = 'v'", "open('f.txt', 'w')"]
# held-out prompts that a string literal follows
PROMPTS = ["color =", "label =", "filename =", "return", "if mode ==", "sep =", "default = x or"]
STEER_LAYER = 3


def head_scores(m: phi2cpu.Model, ids: list[int]) -> np.ndarray:
    """(n_layer, n_head): mean probability each head puts on key q-1 from query q."""
    cache = m.run_with_cache(ids, names=["attn_probs.*"], logits=False)
    probs = cache.stack("attn_probs")                      # (layer, head, query, key)
    q = np.arange(1, len(ids))
    return probs[:, :, q, q - 1].mean(-1)


def ablation(m: phi2cpu.Model, heads: list[tuple[int, int]]) -> list[interp.Intervention]:
    c = m.config
    return [interp.scale_heads(layer, [h], 0.0, c.n_head, c.head_dim) for layer, h in heads]


def quote_log_odds(m: phi2cpu.Model) -> float:
    """Mean over PROMPTS of log p(double quote) - log p(single quote) for the next token."""
    out = []
    for p in PROMPTS:
        base = m.tokenize(p)
        dq, sq = m.tokenize(p + ' "'), m.tokenize(p + " '")
        assert dq[:-1] == base and sq[:-1] == base, p   # each quote (with its space) is one token
        lg = m.logits(base)[-1].astype(np.float64)
        out.append(lg[dq[-1]] - lg[sq[-1]])
    return float(np.mean(out))


def main() -> dict:
    m = phi2cpu.load(threads=2)
    c = m.config
    text = inspect.getsource(argparse)                     # held-out Python
    ids = m.tokenize(text)[:512]

    # 1. previous-token heads
    scores = head_scores(m, ids)
    order = sorted(((float(scores[l, h]), l, h) for l in range(c.n_layer) for h in range(c.n_head)), reverse=True)
    top = [(l, h) for _, l, h in order[:3]]

    # 2. ablation and perplexity (4 windows of 256 tokens after the scoring text)
    ppl_text = m.detokenize(m.tokenize(text)[512:512 + 4 * 256])
    ppl = lambda: m.perplexity(ppl_text, window=256).ppl  # noqa: E731
    base_ppl = ppl()
    with m.intervene(*ablation(m, top)):
        top_ppl = ppl()
    rng = np.random.default_rng(0)
    others = [(l, h) for _, l, h in order[3:]]
    random_ppl = []
    for _ in range(3):
        pick = [others[i] for i in rng.choice(len(others), 3, replace=False)]
        with m.intervene(*ablation(m, pick)):
            random_ppl.append(ppl())

    # 3. difference-of-means steering vector at resid_pre.STEER_LAYER
    name = f"resid_pre.{STEER_LAYER}"
    mean = lambda lines: np.concatenate(  # noqa: E731
        [x[name] for x in m.run_with_cache(lines, names=[name], logits=False)]).mean(0)
    v = mean([s.replace("'", '"') for s in LINES]) - mean(LINES)
    steering = {}
    prompt = "x = {'a': 1}\ny ="
    for s in (0.0, 2.0, 4.0):
        with m.intervene(*interp.steer(v, layers=STEER_LAYER, scale=s)):
            gen = m.generate(prompt, max_tokens=16, temperature=0)
            steering[s] = {"log_odds": quote_log_odds(m), "text": gen,
                           "double": gen.count('"'), "single": gen.count("'")}

    return {"top_heads": [{"layer": l, "head": h, "score": float(scores[l, h])} for l, h in top],
            "scores": scores.round(3).tolist(), "ppl_base": base_ppl, "ppl_top3_ablated": top_ppl,
            "ppl_random3_ablated": random_ppl, "steer_norm": float(np.linalg.norm(v)),
            "steering": {str(k): val for k, val in steering.items()}}


def show(r: dict) -> None:
    print("previous-token score per head (rows: layers, columns: heads):")
    for i, row in enumerate(r["scores"]):
        print(f"  layer {i}: " + "  ".join(f"{x:.3f}" for x in row))
    tops = ", ".join(f"{t['layer']}.{t['head']} ({t['score']:.2f})" for t in r["top_heads"])
    print(f"strongest previous-token heads (layer.head): {tops}")
    rnd = r["ppl_random3_ablated"]
    print(f"perplexity: {r['ppl_base']:.2f} intact, {r['ppl_top3_ablated']:.2f} with those three zeroed, "
          f"{np.mean(rnd):.2f} on average with three random other heads zeroed ({', '.join(f'{x:.2f}' for x in rnd)})")
    print(f"steering vector (double minus single quotes) at resid_pre.{STEER_LAYER}, norm {r['steer_norm']:.2f}:")
    for s, v in r["steering"].items():
        print(f"  scale {s}: log p(\") - log p(') = {v['log_odds']:+.2f}; greedy text has {v['double']} double and "
              f"{v['single']} single quotes: {v['text']!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    as_json = ap.parse_args().json
    results = main()
    if as_json:
        print(json.dumps(results))
    else:
        show(results)
