"""Convert a Hugging Face Phi-2 checkpoint (or an existing phi2 GGUF) to a phi2cpu GGUF file.

Recipe: the block matrices (attn_qkv, attn_output, ffn_up, ffn_down) and token_embd take the
requested type (the embedding lookup dequantizes one row per token, so it costs nothing);
norms and all biases stay F32. output.weight (lm_head) is F16 in f16 files and Q8_0 in q8_0
AND q4_0 files: it is the most error-sensitive matrix (llama.cpp keeps it at a higher type too).

K-quant mixes: q4_k_m and q5_k_m put the block matrices and token_embd in Q4_K / Q5_K, but ffn_down
(whose inputs, the gelu outputs, have the heaviest tails) and lm_head in Q6_K; q6_k is Q6_K
throughout. q4_1, q5_0, q5_1, iq4_nl and iq4_xs are llama.cpp's mixes of those types: every matrix
in the type, lm_head in Q6_K, and for iq4_nl/iq4_xs ffn_down of the first n_layer/8 layers in Q5_K.
q2_k, q3_k_s/m/l, q4_k_s and q5_k_s follow llama.cpp's per-tensor choices for a phi2 file (fused
attn_qkv; the rule applied is beside each row of MIXES). A matrix whose rows are not a multiple of
its type's block (256 values for K-quants) falls back to Q8_0 (to F16 when not even a multiple of 32).

Per-tensor overrides (llama-quantize's --token-embedding-type, --output-tensor-type and
--tensor-type PATTERN=TYPE) replace a mix's choice for matching matrices; with --imatrix, --awq folds
searched per-channel scales into the LayerNorms and V rows first (phi2cpu.awq). --gptq TEXT runs the
float model over a calibration text and rounds every Q4_0, Q8_0, IQ4_NL, Q4_K, Q5_K, IQ4_XS and Q6_K
matrix that has inputs with error feedback through their covariance (phi2cpu.gptq); the types and
bytes layout stay the mix's.

The types themselves (names, block sizes) come from the engine, phi2cpu._core.types().

Works one tensor at a time (load, quantize, write, drop), so memory stays near one tensor; --awq
holds one group (a layer's attn_qkv, ffn_up and attn_output, or lm_head) at a time, and --gptq its
input covariances (phi2cpu.gptq.MEMORY_BUDGET).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from tqdm import tqdm

from . import _core
from . import gptq as gptq_mod
from .atomic import sigterm_raises
from .checkpoint import HFCheckpoint, expected_gguf_shapes, gguf_tensor_names
from .errors import ModelFileError, Phi2Error, error_message
from .gguf_io import Vocab, read_model_file, tensor_nbytes, type_name, write_gguf

# The engine's tensor types by name (block geometry from _core: the one place a type is described).
TYPES = {t["name"]: t for t in _core.types() if t["weight"]}


@dataclass(frozen=True)
class Mix:
    """A --type: the type of the block matrices and token_embd, of lm_head, and of ffn_down where it
    differs (llama.cpp's mixes keep the most error-sensitive matrices at a higher type)."""
    blocks: str
    lm_head: str
    file_type: LlamaFileType
    ffn_down: str | None = None
    attn_qkv: str | None = None
    attn_output: str | None = None
    # (type, d): the ffn_down of layers i < n_layer // d takes this type instead (first-layers bump)
    ffn_down_first: tuple[str, int] | None = None
    # (type, n): the attn_qkv of layers i < n takes this type instead
    attn_qkv_first: tuple[str, int] | None = None


MIXES = {
    "f32": Mix("F32", "F32", LlamaFileType.ALL_F32),
    "f16": Mix("F16", "F16", LlamaFileType.MOSTLY_F16),
    "q8_0": Mix("Q8_0", "Q8_0", LlamaFileType.MOSTLY_Q8_0),
    "q4_0": Mix("Q4_0", "Q8_0", LlamaFileType.MOSTLY_Q4_0),
    "q4_1": Mix("Q4_1", "Q6_K", LlamaFileType.MOSTLY_Q4_1),
    "q5_0": Mix("Q5_0", "Q6_K", LlamaFileType.MOSTLY_Q5_0),
    "q5_1": Mix("Q5_1", "Q6_K", LlamaFileType.MOSTLY_Q5_1),
    "iq4_nl": Mix("IQ4_NL", "Q6_K", LlamaFileType.MOSTLY_IQ4_NL, ffn_down_first=("Q5_K", 8)),
    "iq4_xs": Mix("IQ4_XS", "Q6_K", LlamaFileType.MOSTLY_IQ4_XS, ffn_down_first=("Q5_K", 8)),
    "q4_k_m": Mix("Q4_K", "Q6_K", LlamaFileType.MOSTLY_Q4_K_M, ffn_down="Q6_K"),
    "q5_k_m": Mix("Q5_K", "Q6_K", LlamaFileType.MOSTLY_Q5_K_M, ffn_down="Q6_K"),
    "q6_k": Mix("Q6_K", "Q6_K", LlamaFileType.MOSTLY_Q6_K),
    # llama.cpp's rules for these file types on phi2's tensors (lm_head Q6_K in all). Its quantizer gives
    # the fused attn_qkv the rules of attn_v (category_is_attn_v), one count per layer:
    # Q2_K: attn_qkv, attn_output and ffn_down bumped to Q3_K, the rest Q2_K
    "q2_k": Mix("Q2_K", "Q6_K", LlamaFileType.MOSTLY_Q2_K, ffn_down="Q3_K", attn_qkv="Q3_K", attn_output="Q3_K"),
    # Q3_K_S: no bumps
    "q3_k_s": Mix("Q3_K", "Q6_K", LlamaFileType.MOSTLY_Q3_K_S),
    # Q3_K_M: attn_qkv Q5_K in layers < 2, else Q4_K; attn_output Q4_K; ffn_down Q5_K in layers < n_layer/16,
    # else Q4_K
    "q3_k_m": Mix("Q3_K", "Q6_K", LlamaFileType.MOSTLY_Q3_K_M, ffn_down="Q4_K", attn_qkv="Q4_K", attn_output="Q4_K",
                  ffn_down_first=("Q5_K", 16), attn_qkv_first=("Q5_K", 2)),
    # Q3_K_L: attn_qkv, attn_output and ffn_down Q5_K
    "q3_k_l": Mix("Q3_K", "Q6_K", LlamaFileType.MOSTLY_Q3_K_L, ffn_down="Q5_K", attn_qkv="Q5_K", attn_output="Q5_K"),
    # Q4_K_S: attn_qkv Q5_K in layers < 4; ffn_down Q5_K in layers < n_layer/8
    "q4_k_s": Mix("Q4_K", "Q6_K", LlamaFileType.MOSTLY_Q4_K_S, ffn_down_first=("Q5_K", 8), attn_qkv_first=("Q5_K", 4)),
    # Q5_K_S: no bumps
    "q5_k_s": Mix("Q5_K", "Q6_K", LlamaFileType.MOSTLY_Q5_K_S),
}
QTYPES = tuple(MIXES)
LM_HEAD_REASON = ("lm_head is the most error-sensitive matrix; it is kept at Q8_0 in q4_0 files, Q6_K in "
                  "K-quant, q4_1, q5_0, q5_1, iq4_nl and iq4_xs files (as llama.cpp does), F16/F32 in float files")


def _block(type_name: str) -> int:
    return TYPES[type_name]["block_size"]


def recipe_for(qtype: str) -> dict[str, Any]:
    mix = MIXES[qtype]
    recipe = {"qtype": qtype, "blocks": mix.blocks, "token_embd.weight": mix.blocks, "output.weight": mix.lm_head,
              "norms_and_biases": "F32", "output.weight_reason": LM_HEAD_REASON}
    for part in ("ffn_down", "attn_qkv", "attn_output"):
        if getattr(mix, part):
            recipe[part] = getattr(mix, part)
    if mix.ffn_down_first:
        t, d = mix.ffn_down_first
        recipe["ffn_down_first_layers"] = f"{t} in layers < n_layer // {d}"
    if mix.attn_qkv_first:
        t, n = mix.attn_qkv_first
        recipe["attn_qkv_first_layers"] = f"{t} in layers < {n}"
    if _block(mix.blocks) > 32:
        recipe["k_quant_fallback"] = f"Q8_0 (F16) for matrices whose rows are not a multiple of {_block(mix.blocks)} (32)"
    return recipe


def tensor_type(name: str, shape: tuple[int, ...], qtype: str, n_layer: int = 0) -> T:
    """The type of tensor `name` in a `qtype` file of `n_layer` layers (needed by the mixes whose
    ffn_down depends on the layer)."""
    if len(shape) == 1:
        return T.F32
    mix = MIXES[qtype]
    if name == "output.weight":
        t = mix.lm_head
    elif name.endswith(".ffn_down.weight"):
        t = mix.ffn_down or mix.blocks
        if mix.ffn_down_first:
            first, d = mix.ffn_down_first
            if n_layer <= 0:
                raise ValueError(f"{qtype}: the type of {name} depends on the layer count")
            if int(name.split(".")[1]) < n_layer // d:
                t = first
    elif name.endswith(".attn_qkv.weight"):
        t = mix.attn_qkv or mix.blocks
        if mix.attn_qkv_first and int(name.split(".")[1]) < mix.attn_qkv_first[1]:
            t = mix.attn_qkv_first[0]
    elif name.endswith(".attn_output.weight"):
        t = mix.attn_output or mix.blocks
    else:
        t = mix.blocks
    if shape[-1] % _block(t):
        t = "Q8_0" if shape[-1] % 32 == 0 else "F16"
    return T[t]


def parse_tensor_types(pairs: Sequence[tuple[str, ...]] | None) -> list[tuple[re.Pattern, str, str]]:
    """Validate (PATTERN, TYPE[, LABEL]) overrides: a regular expression searched in each 2-D tensor's
    GGUF name, and a weight type name (case-blind); LABEL names the override in errors (the option
    that made it), else the pattern does. Returns (compiled pattern, pattern, TYPE) in order."""
    out = []
    for pattern, tname, *label in pairs or ():
        t = str(tname).upper()
        if t not in TYPES:
            where = label[0] if label else repr(pattern)
            raise Phi2Error(f"tensor type {tname!r} for {where} is not one of {', '.join(TYPES)}")
        try:
            out.append((re.compile(pattern), pattern, t))
        except re.error as e:
            raise Phi2Error(f"tensor type pattern {pattern!r} is not a regular expression ({e})") from None
    return out


def overridden_type(name: str, shape: tuple[int, ...], default: T, overrides) -> T:
    """The first override whose pattern is found in `name` (2-D tensors only), else `default`; a
    type whose block does not divide the rows falls back as the mixes do."""
    if len(shape) != 2:
        return default
    for rx, _, t in overrides:
        if rx.search(name):
            if shape[-1] % _block(t):
                t = "Q8_0" if shape[-1] % 32 == 0 else "F16"
            return T[t]
    return default


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


FLOAT_TYPES = (T.F32, T.F16, T.BF16)


def _check_source(src: Path, out: Path, allow_requantize: bool) -> None:
    """Refuse OUT == SRC (also through a link) and, unless allowed, an already-quantized GGUF."""
    if out.exists() and (out.resolve() == src.resolve() or os.path.samefile(src, out)):
        raise Phi2Error(f"{out}: OUT is the same file as SRC; write the result to a new file")
    if not allow_requantize and _is_gguf(src):
        quantized = sorted({t.type_name for t in read_model_file(src).tensors.values()
                            if len(t.shape) > 1 and t.ggml_type not in FLOAT_TYPES})
        if quantized:
            raise Phi2Error(f"{src}: its weights are already quantized ({', '.join(quantized)}); quantizing "
                            "them again adds a second rounding error. Convert from the F16/F32 checkpoint, "
                            "or pass --allow-requantize")


def _model_name(src: Path) -> str:
    """general.name: kept from a GGUF source, else the checkpoint folder's name (the repo's name for a
    snapshot in the HF cache, .../models--OWNER--NAME/snapshots/COMMIT)."""
    if _is_gguf(src):
        return str(read_model_file(src).kv.get("general.name") or src.stem)
    folder = src.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def _hf_source(path: Path):
    ck = HFCheckpoint(path)
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise ModelFileError(f"{path}: no tokenizer.json (needed to write the GGUF vocabulary)")
    return ck.config, tok, ck.tensor_names(), ck.load


def chat_template_of(src: Path) -> Optional[str]:
    """The chat template a source carries: a GGUF's tokenizer.chat_template, or a checkpoint folder's
    chat_template.jinja or tokenizer_config.json "chat_template" (its "default" one when named)."""
    if _is_gguf(src):
        t = read_model_file(src).kv.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t else None
    jinja, cfg = src / "chat_template.jinja", src / "tokenizer_config.json"
    try:
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8") or None
        if not cfg.is_file():
            return None
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{jinja if jinja.is_file() else cfg}: not valid UTF-8 (offset {e.start})") from None
    except (json.JSONDecodeError, AttributeError, RecursionError) as e:
        raise ModelFileError(f"{cfg}: not a JSON object ({e})") from None
    if isinstance(t, list):  # named templates
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) and t else None


def quantize(src: str | Path, out: str | Path, qtype: str = "q8_0", progress: bool = True,
             allow_requantize: bool = False, imatrix: str | Path | None = None,
             threads: int | None = None, tensor_types: Sequence[tuple[str, str]] | None = None,
             awq: bool = False, gptq: str | Path | None = None, gptq_chunks: int | None = None,
             gptq_chunk_size: int = 512) -> dict[str, Any]:
    """Convert `src` (HF checkpoint dir or phi2 GGUF) to a GGUF at `out`. Returns a summary.
    `qtype` is case-blind (q4_k_m or Q4_K_M). A GGUF whose matrices are not F32/F16/BF16 is refused
    unless `allow_requantize`, and so is an `out` that is `src`. With `imatrix` (an importance-matrix
    file, see phi2cpu.imatrix) every matrix it has statistics for is quantized by its type's
    importance-weighted search; the others (token_embd, a lookup) as without it. Each tensor's rows
    are quantized by `threads` threads (default: every core); the file's bytes do not depend on it.
    `tensor_types`: (PATTERN, TYPE) pairs, as llama-quantize's --tensor-type: a 2-D tensor whose GGUF
    name matches PATTERN (re.search, first pair wins) takes TYPE in place of the mix's choice.
    `awq` (needs `imatrix`): per-channel scales searched on the imatrix and folded into the LayerNorms
    and V rows before quantizing (phi2cpu.awq); the float model computes the same function, the
    file is a standard GGUF, and the summary's "awq" says which scaling each group took.
    `gptq` (a calibration text file; needs a float GGUF `src`, which the engine runs over the text in
    `gptq_chunk_size`-token chunks, at most `gptq_chunks`): error-feedback rounding (phi2cpu.gptq) of
    every matrix with inputs whose type it supports; the scales still come from the type's search
    (weighted by `imatrix` when given). The calibration file's name and size go in the recipe."""
    if not isinstance(qtype, str) or qtype.lower() not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, not {qtype!r}")
    threads = (os.cpu_count() or 1) if threads is None else threads
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise Phi2Error(f"threads must be a whole number of at least 1, not {threads!r}")
    qtype = qtype.lower()
    overrides = parse_tensor_types(tensor_types)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or directory")
    if not out.parent.is_dir():
        raise Phi2Error(f"{out.parent}: output directory does not exist")
    if out.is_dir():
        raise Phi2Error(f"{out}: is a directory; OUT is the file to write, e.g. {out / f'phi-2.{qtype}.gguf'}")
    if awq and imatrix is None:
        raise Phi2Error("--awq searches its scales on an importance matrix: pass --imatrix FILE too")
    if gptq is not None and awq:
        raise Phi2Error("--gptq and --awq cannot be combined: the covariances are of the unscaled inputs")
    if gptq is None and gptq_chunks is not None:
        raise Phi2Error("--gptq-chunks limits the --gptq calibration: pass --gptq TEXT too")
    if gptq is not None and not _is_gguf(src):
        raise Phi2Error(f"{src}: --gptq runs the float model over the calibration text, so SRC must be a GGUF "
                        f"file; convert first (quantize {src} model.f16.gguf f16)")
    _check_source(src, out, allow_requantize)
    t0 = time.perf_counter()
    config, tokenizer, names, load = _gguf_source(src) if _is_gguf(src) else _hf_source(src)
    template = chat_template_of(src)
    shapes = expected_gguf_shapes(config)
    recipe = recipe_for(qtype)
    im = None
    if imatrix is not None:
        from . import imatrix as imx
        im = imx.load(imatrix)
        imx.check_fits(im, imatrix, shapes)
        recipe["imatrix"] = {"file": Path(imatrix).name, "datasets": im.datasets, "chunks": im.chunk_count,
                             "entries": len(im.sums)}
    weighted_types = {t["id"] for t in _core.types() if t.get("weighted")}
    types = {n: overridden_type(n, shapes[n], tensor_type(n, shapes[n], qtype, config.n_layer), overrides)
             for n in names}
    covs = None
    if gptq is not None:
        from .imatrix import matrix_inputs
        fed = {w for ws in matrix_inputs(config.n_layer).values() for w in ws}
        done = [n for n in names if n in fed and int(types[n]) in gptq_mod.CODECS]
        if not done:
            raise Phi2Error(f"--gptq: no matrix of this file has a type the error-feedback rounding supports "
                            f"({', '.join(type_name(t) for t in gptq_mod.CODECS)})")
        covs, recipe["gptq"] = _gptq_covariances(src, gptq, gptq_chunks, gptq_chunk_size, threads, progress, im)
        recipe["gptq"]["tensors"] = len(done)
    bar = tqdm(total=len(names), desc=f"quantize {qtype}", unit="tensor", disable=None if progress else True)
    folder = None
    if awq and all(t in FLOAT_TYPES for n, t in types.items() if len(shapes[n]) == 2 and n != "token_embd.weight"):
        raise Phi2Error(f"--awq scales the inputs of quantized matrices, and {qtype} quantizes none of them: "
                        "choose a quantized TYPE")
    if awq:
        from . import awq as awq_mod
        folder = awq_mod.Folder(load, {n: int(t) for n, t in types.items()}, im.importance, config.n_embd, threads)
        recipe["awq"] = {"alphas": list(folder.alphas), "folded": "attn_norm -> attn_qkv, ffn_up; V -> attn_output; "
                                                                  "output_norm -> output"}

    def producer(name: str, ttype: T) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            done = folder.quantized(name) if folder is not None else None
            if done is not None:
                bar.update(1)
                return done
            x = folder.tensor(name) if folder is not None else load(name)
            imp = im.importance(name) if im is not None and int(ttype) in weighted_types else None
            u = covs.factor(name) if covs is not None and int(ttype) in gptq_mod.CODECS else None
            if u is not None:
                data = gptq_mod.quantize_matrix(x, None, int(ttype), imp, threads=threads, u=u)[0]
            else:
                data = x if ttype == T.F32 else _core.quantize(x, int(ttype), imp, threads)
            bar.update(1)
            return data
        return make

    if overrides:
        recipe["tensor_types"] = [[p, t] for _, p, t in overrides]
        for n in names:
            if len(shapes[n]) == 2 and types[n] != tensor_type(n, shapes[n], qtype, config.n_layer):
                recipe.setdefault("overridden", {})[n] = types[n].name
    plan = [(n, producer(n, types[n]), int(types[n]), shapes[n]) for n in names]
    try:
        with sigterm_raises():  # a terminated run removes its temporary file too
            write_gguf(out, config, plan, tokenizer, int(MIXES[qtype].file_type), recipe, name=_model_name(src),
                       chat_template=template)
    finally:
        bar.close()
    return {"src": str(src), "out": str(out), "qtype": qtype, "n_tensors": len(plan),
            "n_params": sum(int(np.prod(s)) for s in shapes.values()),
            "tensor_bytes": sum(tensor_nbytes(t, s) for _, _, t, s in plan),
            "file_bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 3), "recipe": recipe,
            **({"awq": folder.report} if folder is not None else {})}


def _gptq_covariances(src: Path, text_path: str | Path, chunks: int | None, chunk_size: int, threads: int,
                      progress: bool, im) -> tuple[Any, dict[str, Any]]:
    """The lazily collected input covariances of `src` over the calibration text, and its recipe entry."""
    from . import load as load_model

    if chunks is not None and (not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1):
        raise Phi2Error(f"--gptq-chunks must be a whole number of at least 1, not {chunks!r}")
    p = Path(text_path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise Phi2Error(f"{p}: the calibration text is not valid UTF-8 (offset {e.start})") from None
    except OSError as e:
        raise Phi2Error(f"{p}: cannot read the calibration text ({e.strerror or e})") from None
    model = load_model(src, threads=threads, n_ctx=chunk_size, repack_cache=False)
    if not (isinstance(chunk_size, int) and 2 <= chunk_size <= model.n_ctx):
        raise Phi2Error(f"GPTQ chunk size must be an integer in 2..{model.n_ctx}, got {chunk_size!r}")
    ids = model.tokenize(text)
    n = len(ids) // chunk_size if chunks is None else min(chunks, len(ids) // chunk_size)
    if n < 1:
        raise Phi2Error(f"{p}: the calibration text is {len(ids)} tokens; --gptq needs at least one chunk of "
                        f"{chunk_size}")
    covs = gptq_mod.Covariances(model, ids, chunk_size, n, progress=progress)
    entry = {"calibration": p.name, "calibration_bytes": len(text.encode("utf-8")), "chunks": n,
             "chunk_size": chunk_size, "damp": gptq_mod.DAMP, "layers_per_pass": covs.per_pass,
             "scales": "imatrix-weighted search" if im is not None else "the type's quantizer"}
    return covs, entry


def main(argv: list[str] | None = None, prog: str = "tools/quantize.py") -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Convert a Phi-2 checkpoint to a phi2cpu GGUF file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""examples:
  {prog} phi-2/ phi-2.q4_0.gguf --type q4_0        # smallest and fastest to decode
  {prog} phi-2/ phi-2.q4_k_m.gguf --type q4_k_m    # about the same size, lower quality loss
  {prog} phi-2.f16.gguf phi-2.q8_0.gguf --type Q8_0  # from an F16 GGUF; type names are case-blind
  {prog} phi-2.f16.gguf phi-2.q4_k_m.gguf Q4_K_M     # TYPE after OUT, as llama-quantize takes it

Norms and biases stay F32; in q4_0 files lm_head is Q8_0. With the K types, matrices whose rows are
not a multiple of 256 values fall back to Q8_0. The file is written to a temporary name and
renamed at the end, so an interrupted run leaves no partial OUT. A GGUF that is already quantized
is refused unless --allow-requantize (each rounding adds error); OUT == SRC is always refused.""")
    ap.add_argument("src", help="Hugging Face checkpoint directory, or an existing phi2 GGUF file")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("type", nargs="?", type=str.lower, choices=list(QTYPES), metavar="TYPE",
                    help="the weight type, in place of --type (as llama-quantize takes it)")
    ap.add_argument("--type", dest="qtype", type=str.lower, choices=list(QTYPES), default=None,
                    help="weight type for the block matrices (default q8_0; f32 is for tests; "
                         "q4_k_m/q5_k_m keep ffn_down and lm_head in Q6_K)")
    ap.add_argument("--allow-requantize", action="store_true",
                    help="accept a source GGUF whose weights are already quantized (Q8_0, Q4_K, ...)")
    ap.add_argument("--imatrix", metavar="FILE", default=None,
                    help="importance matrix (from `phi2cpu imatrix` or llama-imatrix, GGUF or .dat): weights each "
                         "column's rounding error by how large its inputs are on the calibration text")
    ap.add_argument("--awq", action="store_true",
                    help="with --imatrix: per-channel scales searched on the imatrix, folded into the LayerNorms "
                         "and the V rows (the float model is unchanged; the rounding error where inputs are large drops)")
    ap.add_argument("--gptq", metavar="TEXT", default=None,
                    help="calibration text: run SRC (a float GGUF) over it and round each matrix with error "
                         "feedback through its input covariance (GPTQ); the types and layout stay the mix's")
    ap.add_argument("--gptq-chunks", type=int, default=None, metavar="N",
                    help="with --gptq: use at most N chunks of 512 tokens of the text (default: all)")
    ap.add_argument("--token-embedding-type", metavar="TYPE", default=None,
                    help="type of token_embd in place of the mix's (as llama-quantize's option)")
    ap.add_argument("--output-tensor-type", metavar="TYPE", default=None,
                    help="type of output (lm_head) in place of the mix's (as llama-quantize's option)")
    ap.add_argument("--tensor-type", metavar="PATTERN=TYPE", action="append", default=[],
                    help="matrices whose GGUF name matches the regular expression PATTERN take TYPE "
                         "(repeatable; the first match wins, after the two options above)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="threads sharing each tensor's rows (default: every core; the output is the same)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.type and args.qtype and args.type != args.qtype:
        ap.error(f"TYPE {args.type} and --type {args.qtype} differ; give one")
    overrides = ([(r"^token_embd\.weight$", args.token_embedding_type, "--token-embedding-type")]
                 if args.token_embedding_type else [])
    if args.output_tensor_type:
        overrides.append((r"^output\.weight$", args.output_tensor_type, "--output-tensor-type"))
    for item in args.tensor_type:
        pattern, eq, tname = item.rpartition("=")
        if not eq or not pattern or not tname:
            ap.error(f"--tensor-type {item!r}: expected PATTERN=TYPE, e.g. ffn_down=q6_k")
        overrides.append((pattern, tname))
    try:
        s = quantize(args.src, args.out, args.type or args.qtype or "q8_0", progress=not args.quiet,
                     allow_requantize=args.allow_requantize, imatrix=args.imatrix, threads=args.threads,
                     tensor_types=overrides, awq=args.awq, gptq=args.gptq, gptq_chunks=args.gptq_chunks)
    except (Phi2Error, OSError) as e:
        print(f"{prog.split()[0]}: error: {error_message(e)}", file=sys.stderr)
        return 1
    print(f"wrote {s['out']}: {s['qtype']}, {s['n_params'] / 1e9:.2f}B params, "
          f"{s['file_bytes'] / 2**20:.1f} MiB in {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
