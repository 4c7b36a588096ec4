"""Convert a Hugging Face Phi-2 checkpoint (or an existing phi2 GGUF) to a phi2cpu GGUF file.

Recipe: the block matrices (attn_qkv, attn_output, ffn_up, ffn_down) and token_embd take the
requested type (the embedding lookup dequantizes one row per token, so it costs nothing);
norms and all biases stay F32. output.weight (lm_head) is F16 in f16 files and Q8_0 in q8_0
AND q4_0 files: it is the most error-sensitive matrix (llama.cpp keeps it at a higher type too).

Works one tensor at a time (load, quantize, write, drop), so memory stays near one tensor.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from tqdm import tqdm

from . import _core
from .checkpoint import HFCheckpoint, expected_gguf_shapes, gguf_tensor_names
from .errors import ModelFileError, Phi2Error, error_message
from .gguf_io import Vocab, read_model_file, tensor_nbytes, write_gguf

QTYPES = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}
FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
              "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}
_LM_HEAD = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q8_0}
LM_HEAD_REASON = "lm_head is the most error-sensitive matrix; it is kept at Q8_0 (F16/F32 in float files)"


def recipe_for(qtype: str) -> dict[str, Any]:
    q = QTYPES[qtype].name
    return {"qtype": qtype, "blocks": q, "token_embd.weight": q, "output.weight": _LM_HEAD[qtype].name,
            "norms_and_biases": "F32", "output.weight_reason": LM_HEAD_REASON}


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> T:
    if len(shape) == 1:
        return T.F32
    if name == "output.weight":
        return _LM_HEAD[qtype]
    return QTYPES[qtype]


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _gguf_source(path: Path):
    """(config, vocab, names, loader) for an existing phi2 GGUF; separate q/k/v are fused."""
    mf = read_model_file(path)

    def raw_f32(name: str) -> np.ndarray:
        t, raw = mf.tensors[name], mf.raw(name)
        return _core.dequantize(raw.reshape(-1, raw.shape[-1]), t.ggml_type, t.shape[-1]).reshape(t.shape)

    def load(name: str) -> np.ndarray:
        if ".attn_qkv." in name and name not in mf.tensors:
            return np.concatenate([raw_f32(name.replace("attn_qkv", f"attn_{x}")) for x in "qkv"])
        return raw_f32(name)

    vocab = None
    if mf.tokens:
        vocab = Vocab(mf.tokens, [int(t) for t in mf.token_types], mf.merges, mf.tokenizer_json,
                      int(mf.kv.get("tokenizer.ggml.eos_token_id", 50256)))
    return mf.config, vocab, gguf_tensor_names(mf.config.n_layer), load


def _model_name(src: Path) -> str:
    """general.name: kept from a GGUF source, else the checkpoint folder's name."""
    if _is_gguf(src):
        return str(read_model_file(src).kv.get("general.name") or src.stem)
    return src.resolve().name


def _hf_source(path: Path):
    ck = HFCheckpoint(path)
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise ModelFileError(f"{path}: no tokenizer.json (needed to write the GGUF vocabulary)")
    return ck.config, tok, ck.tensor_names(), ck.load


def quantize(src: str | Path, out: str | Path, qtype: str = "q8_0", progress: bool = True) -> dict[str, Any]:
    """Convert `src` (HF checkpoint dir or phi2 GGUF) to a GGUF at `out`. Returns a summary."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, not {qtype!r}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or directory")
    if not out.parent.is_dir():
        raise Phi2Error(f"{out.parent}: output directory does not exist")
    t0 = time.perf_counter()
    config, tokenizer, names, load = _gguf_source(src) if _is_gguf(src) else _hf_source(src)
    shapes = expected_gguf_shapes(config)
    recipe = recipe_for(qtype)
    bar = tqdm(total=len(names), desc=f"quantize {qtype}", unit="tensor", disable=None if progress else True)

    def producer(name: str, ttype: T) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            x = load(name)
            data = x if ttype == T.F32 else _core.quantize(x, int(ttype))
            bar.update(1)
            return data
        return make

    plan = [(n, producer(n, tensor_type(n, shapes[n], qtype)), int(tensor_type(n, shapes[n], qtype)), shapes[n])
            for n in names]
    try:
        write_gguf(out, config, plan, tokenizer, int(FILE_TYPES[qtype]), recipe, name=_model_name(src))
    finally:
        bar.close()
    return {"src": str(src), "out": str(out), "qtype": qtype, "n_tensors": len(plan),
            "n_params": sum(int(np.prod(s)) for s in shapes.values()),
            "tensor_bytes": sum(tensor_nbytes(t, s) for _, _, t, s in plan),
            "file_bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 3), "recipe": recipe}


def main(argv: list[str] | None = None, prog: str = "tools/quantize.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Convert a Phi-2 checkpoint to a phi2cpu GGUF file.")
    ap.add_argument("src", help="Hugging Face checkpoint directory, or an existing phi2 GGUF file")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--type", dest="qtype", choices=list(QTYPES), default="q8_0",
                    help="weight type for the block matrices (default q8_0; f32 is for tests)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        s = quantize(args.src, args.out, args.qtype, progress=not args.quiet)
    except (Phi2Error, OSError) as e:
        print(f"{prog.split()[0]}: error: {error_message(e)}", file=sys.stderr)
        return 1
    print(f"wrote {s['out']}: {s['qtype']}, {s['n_params'] / 1e9:.2f}B params, "
          f"{s['file_bytes'] / 2**20:.1f} MiB in {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
