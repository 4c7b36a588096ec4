"""Where a quantized file's loss comes from: one tensor group quantized at a time, the rest F16.

    python benchmarks/quant_attribution.py MODEL_DIR EVAL_TXT --out DIR [--types Q4_0,Q4_K,Q6_K]
        [--groups token_embd,output,blocks] [--windows N] [--imatrix]

For each TYPE and GROUP one file: the f16 mix with GROUP's matrices in TYPE (`quantize(...,
tensor_types=...)`, the same path as `--tensor-type`), scored like benchmarks/quant_quality.py
(perplexity and mean KL from F16 over the same windows, one pass). Groups: token_embd, output
(lm_head), blocks (every attn_qkv, attn_output, ffn_up, ffn_down) or any regular expression given as
NAME=PATTERN. With --imatrix the files use DIR/imatrix.gguf (made as quant_quality.py makes it).
Writes DIR/attribution.json after every window and DIR/attribution.md at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import quant_quality as qq
from phi2cpu.quantize import quantize

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
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    groups = {}
    for g in args.groups.split(","):
        name, eq, pattern = g.partition("=")
        if not eq and name not in GROUPS:
            ap.error(f"unknown group {g!r}: one of {', '.join(GROUPS)} or NAME=PATTERN")
        groups[name] = pattern if eq else GROUPS[name]
    eval_text = args.eval_text.read_text(encoding="utf-8")
    f16, _ = qq.build_files(args.model_dir, eval_text, args.out, [], None, None)
    files = build(f16, args.out, args.types.split(","), groups, args.out / "imatrix.gguf" if args.imatrix else None)
    res = qq.score(f16, files, eval_text, args.windows, args.out / "attribution.json")
    (args.out / "attribution.md").write_text(qq.markdown(res))
    print(qq.markdown(res))
    print(json.dumps({"windows": res["windows"]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
