"""Where a quantized file's loss comes from: one tensor group quantized at a time, the rest F16.

    python benchmarks/quant_attribution.py MODEL_DIR EVAL_TXT --out DIR [--types Q4_0,Q4_K,Q6_K]
        [--groups token_embd,output,blocks] [--windows N] [--imatrix]

For each TYPE and GROUP one file: the f16 mix with GROUP's matrices in TYPE (`quantize(...,
tensor_types=...)`, the same path as `--tensor-type`), scored like benchmarks/quant_quality.py
(perplexity and mean KL from F16 over the same windows, one pass). Groups: token_embd, output
(lm_head), blocks (every attn_qkv, attn_output, ffn_up, ffn_down) or any regular expression given as
NAME=PATTERN. With --imatrix the files use DIR/imatrix.gguf (made as quant_quality.py makes it).
Writes DIR/attribution.json after every window and DIR/attribution.md at the end.

With --budget-of MIX[,MIX...] it then lists, for each mix, the one-type-per-group choices whose
matrices take no more bytes than that mix's, least summed KL first (the groups' KLs add to first
order; measure the chosen file with quant_quality.py). --from-json scores nothing and allocates
from an earlier run's attribution.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import quant_quality as qq
from phi2cpu.checkpoint import HFCheckpoint, expected_gguf_shapes
from phi2cpu.gguf_io import tensor_nbytes
from phi2cpu.quantize import T, quantize, tensor_type

GROUPS = {"token_embd": r"^token_embd\.weight$", "output": r"^output\.weight$",
          "blocks": r"^blk\.\d+\.(attn_qkv|attn_output|ffn_up|ffn_down)\.weight$"}


def build(f16: Path, out: Path, types: list[str], groups: dict[str, str], imatrix: Path | None) -> dict[str, Path]:
    files = {}
    for t in types:
        for g, pattern in groups.items():
            label = f"{g} {t}" + (" +imatrix" if imatrix else "")
            p = out / f"attr.{g}.{t}{'.im' if imatrix else ''}.gguf"
            if not p.exists():
                quantize(f16, p, "f16", progress=False, imatrix=imatrix, tensor_types=[(pattern, t)])
            files[label] = p
    return files


def allocate(rows: list[dict], shapes: dict[str, tuple[int, ...]], groups: dict[str, str], mix: str,
             n_layer: int, top: int = 3) -> tuple[int, list[tuple[float, int, dict[str, str]]]]:
    """(the mix's bytes for the groups' matrices, the `top` cheapest-KL choices within them:
    (summed KL, bytes, group -> type))."""
    members = {g: [n for n, s in shapes.items() if len(s) == 2 and re.search(p, n)] for g, p in groups.items()}
    budget = sum(tensor_nbytes(tensor_type(n, shapes[n], mix, n_layer), shapes[n]) for m in members.values() for n in m)
    measured: dict[str, dict[str, float]] = {}
    for r in rows:
        g, _, t = r["file"].partition(" ")
        if g in groups:
            measured.setdefault(g, {})[t.split()[0]] = r["kl"]
    options = []
    for choice in itertools.product(*[sorted(measured.get(g, {}).items()) for g in groups]):
        nbytes = sum(tensor_nbytes(T[t.upper()], shapes[n]) for g, (t, _) in zip(groups, choice) for n in members[g])
        if nbytes <= budget:
            options.append((sum(kl for _, kl in choice), nbytes, {g: t for g, (t, _) in zip(groups, choice)}))
    return budget, sorted(options, key=lambda o: o[0])[:top]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("eval_text", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--types", default="Q4_0,Q4_K,Q6_K")
    ap.add_argument("--groups", default="token_embd,output,blocks",
                    help="comma-separated group names (token_embd, output, blocks) or NAME=PATTERN")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--imatrix", action="store_true", help="quantize with DIR/imatrix.gguf")
    ap.add_argument("--budget-of", default=None, metavar="MIX[,MIX]", help="allocate within these mixes' sizes")
    ap.add_argument("--from-json", action="store_true", help="allocate from DIR/attribution.json, score nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    groups = {}
    for g in args.groups.split(","):
        name, eq, pattern = g.partition("=")
        if not eq and name not in GROUPS:
            ap.error(f"unknown group {g!r}: one of {', '.join(GROUPS)} or NAME=PATTERN")
        groups[name] = pattern if eq else GROUPS[name]
    if args.from_json:
        res = json.loads((args.out / "attribution.json").read_text())
    else:
        eval_text = args.eval_text.read_text(encoding="utf-8")
        f16, _ = qq.build_files(args.model_dir, eval_text, args.out, [], None, None)
        files = build(f16, args.out, args.types.split(","), groups, args.out / "imatrix.gguf" if args.imatrix else None)
        res = qq.score(f16, files, eval_text, args.windows, args.out / "attribution.json")
        (args.out / "attribution.md").write_text(qq.markdown(res))
        print(qq.markdown(res))
    config = HFCheckpoint(args.model_dir).config
    for mix in (args.budget_of or "").split(",") if args.budget_of else []:
        budget, options = allocate(res["rows"], expected_gguf_shapes(config), groups, mix, config.n_layer)
        print(f"within {mix}'s {budget / 2**20:.2f} MiB of these matrices:")
        for kl, nbytes, choice in options:
            print(f"  {', '.join(f'{g} {t}' for g, t in choice.items())}: {nbytes / 2**20:.2f} MiB, summed KL {kl:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
