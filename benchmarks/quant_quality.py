"""Quantization fidelity: perplexity on the eval text and mean KL divergence from F16, per file.

    python benchmarks/quant_quality.py MODEL_DIR EVAL_TXT --out DIR [--types q4_0,q4_k_m,...]
        [--windows N] [--llama-cpp-bin DIR] [--awq] [--gptq]

Makes the F16 file, the calibration text (CALIBRATION_FILES of this Python's standard library,
refused if any shares a 32+ character line with the eval text), its imatrix, then for each type
one file without and one with `--imatrix` (with --awq a third, `--imatrix --awq`; with --gptq
`--gptq` over the same calibration text, without and with the imatrix); with llama.cpp's
tools (`--llama-cpp-bin`, or the
LLAMA_CPP_BIN environment variable: a directory holding llama-quantize) also llama-quantize's file
of each type from the same F16 and the same imatrix. Every file is scored over the same windows in
one pass (the F16 logits of a window are computed once and compared with every file's), by
phi2cpu.perplexity's protocol (float64 log-softmax; the same numbers as `phi2cpu perplexity
--kl-base`, tested in tests/test_imatrix.py and tests/test_quant_harness.py). Writes DIR/quant_quality.json after every window and
DIR/quant_quality.md at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import phi2cpu
from phi2cpu import imatrix as imx
from phi2cpu.perplexity import _log_softmax
from phi2cpu.quantize import quantize

# The calibration text: these files of the standard library, in this order (none is in the eval text).
CALIBRATION_FILES = ("textwrap.py", "shlex.py", "heapq.py", "fractions.py", "json/decoder.py", "json/encoder.py",
                     "string.py", "pprint.py", "csv.py", "tokenize.py", "calendar.py", "statistics.py")
# llama-quantize's name of each of our mixes.
LLAMA_FTYPE = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "iq4_nl": "IQ4_NL",
               "q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K", "q8_0": "Q8_0", "iq4_xs": "IQ4_XS",
               "q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L", "q4_k_s": "Q4_K_S",
               "q5_k_s": "Q5_K_S"}


def llama_tool(bin_dir: str | None, name: str) -> Path | None:
    d = bin_dir or os.environ.get("LLAMA_CPP_BIN")
    if not d:
        return None
    p = Path(d) / name
    return p if p.is_file() and os.access(p, os.X_OK) else None


def build_files(model_dir: Path, eval_text: str, out: Path, types: list[str], llama_bin: str | None,
                chunks: int | None, plain: bool = True, awq: bool = False,
                gptq: bool = False) -> tuple[Path, dict[str, Path]]:
    f16 = out / "f16.gguf"
    if not f16.exists():
        quantize(model_dir, f16, "f16", progress=False)
    calib = out / "calibration.txt"
    calib.write_text(imx.stdlib_calibration(CALIBRATION_FILES, eval_text), encoding="utf-8")
    im_path = out / "imatrix.gguf"
    if not im_path.exists():
        im = imx.collect(phi2cpu.load(f16), calib.read_text(encoding="utf-8"), max_chunks=chunks,
                         dataset=calib.name, progress=True)
        imx.save(im, im_path)
    files: dict[str, Path] = {}
    lq = llama_tool(llama_bin, "llama-quantize")
    for t in types:
        variants = ((t, {}), (f"{t}+imatrix", {"imatrix": im_path}))[0 if plain else 1:]
        if awq:
            variants += ((f"{t}+imatrix+awq", {"imatrix": im_path, "awq": True}),)
        if gptq:
            g = {"gptq": calib, "gptq_chunks": chunks}
            variants += ((f"{t}+gptq", g), (f"{t}+gptq+imatrix", {**g, "imatrix": im_path}))[0 if plain else 1:]
        for label, kw in variants:
            p = out / f"{label.replace('+', '.')}.gguf"
            if not p.exists():
                quantize(f16, p, t, progress=False, **kw)
            files[label] = p
        if lq is not None and t in LLAMA_FTYPE:
            p = out / f"llama.{t}.imatrix.gguf"
            if not p.exists():
                subprocess.run([str(lq), "--imatrix", str(im_path), str(f16), str(p), LLAMA_FTYPE[t]],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            files[f"llama.cpp {t}+imatrix"] = p
    return f16, files


def score(f16: Path, files: dict[str, Path], eval_text: str, windows: int | None, json_path: Path,
          window: int = 512) -> dict:
    base = phi2cpu.load(f16, n_ctx=window)
    ids = base.tokenizer.encode(eval_text)
    n_windows = len(ids) // window if windows is None else min(windows, len(ids) // window)
    models = {k: phi2cpu.load(p, n_ctx=window) for k, p in files.items()}
    acc = {k: {"nll": 0.0, "kl": 0.0} for k in ["F16", *models]}
    count = 0
    t0 = time.time()
    for w in range(n_windows):
        chunk = ids[w * window: (w + 1) * window]
        base.reset()
        lb = _log_softmax(base.eval(chunk, all_logits=True)[: window - 1])
        targets = np.asarray(chunk[1:])
        pb = np.exp(lb)
        pb_lb = np.einsum("ij,ij->i", pb, lb)  # sum_j p log p per row
        acc["F16"]["nll"] -= float(lb[np.arange(targets.size), targets].sum())
        del lb
        for k, m in models.items():
            m.reset()
            nll, kl = _nll_kl(m.eval(chunk, all_logits=True)[: window - 1], targets, pb, pb_lb)
            acc[k]["nll"] += nll
            acc[k]["kl"] += kl
        count += targets.size
        rows = _rows(acc, count, f16, files)
        json_path.write_text(json.dumps({"windows_done": w + 1, "windows": n_windows, "scored": count,
                                         "seconds": round(time.time() - t0), "rows": rows}, indent=1))
        print(f"window {w + 1}/{n_windows}", file=sys.stderr, flush=True)
    return json.loads(json_path.read_text())


def _nll_kl(logits: np.ndarray, targets: np.ndarray, pb: np.ndarray, pb_lb: np.ndarray) -> tuple[float, float]:
    """(sum of NLL, sum of KL(base || model)) over the rows, float64 throughout: with lse the row's
    log-sum-exp, log q = x - lse, so KL = sum p log p - (sum p x - lse) (the rows of p sum to 1)."""
    x = np.asarray(logits, dtype=np.float64)
    mx = x.max(axis=1)
    lse = mx + np.log(np.exp(x - mx[:, None]).sum(axis=1))
    nll = float((lse - x[np.arange(targets.size), targets]).sum())
    kl = float((pb_lb - (np.einsum("ij,ij->i", pb, x) - lse * pb.sum(axis=1))).sum())
    return nll, kl


def _rows(acc: dict, count: int, f16: Path, files: dict[str, Path]) -> list[dict]:
    base_ppl = float(np.exp(acc["F16"]["nll"] / count))
    rows = []
    for k, a in acc.items():
        p = f16 if k == "F16" else files[k]
        ppl = float(np.exp(a["nll"] / count))
        rows.append({"file": k, "bytes": p.stat().st_size, "ppl": ppl, "delta_pct": 100 * (ppl / base_ppl - 1),
                     "kl": a["kl"] / count})
    return rows


def markdown(res: dict) -> str:
    lines = [f"{res['windows']} windows x 512 tokens, {res['scored']} scored tokens", "",
             "| file | size (MiB) | ppl | vs F16 | mean KL (nats) |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['file']} | {r['bytes'] / 2**20:.2f} | {r['ppl']:.4f} | {r['delta_pct']:+.2f}% | "
                     f"{r['kl']:.5f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("eval_text", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--types", default="q4_0,q4_k_m,iq4_nl")
    ap.add_argument("--windows", type=int, default=None, help="score at most N windows (default: all)")
    ap.add_argument("--chunks", type=int, default=None, help="calibration chunks (default: all)")
    ap.add_argument("--llama-cpp-bin", default=None)
    ap.add_argument("--no-plain", action="store_true", help="only the files made with the imatrix")
    ap.add_argument("--awq", action="store_true", help="also each type with --imatrix --awq")
    ap.add_argument("--gptq", action="store_true", help="also each type with --gptq (and --gptq --imatrix)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    eval_text = args.eval_text.read_text(encoding="utf-8")
    f16, files = build_files(args.model_dir, eval_text, args.out, args.types.split(","), args.llama_cpp_bin,
                             args.chunks, plain=not args.no_plain, awq=args.awq, gptq=args.gptq)
    res = score(f16, files, eval_text, args.windows, args.out / "quant_quality.json")
    (args.out / "quant_quality.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
