"""Importance matrices: the sum of squares of every weight matrix's input, per column, over a
calibration text, and how many input rows (tokens) it was summed over.

Files are llama.cpp's imatrix GGUF (`general.type` "imatrix"; `imatrix.datasets`,
`imatrix.chunk_count`, `imatrix.chunk_size`; per matrix an F32 `<weight name>.in_sum2` of shape
(n_mat, n_cols) and an F32 `<weight name>.counts` of shape (n_mat, 1)), so llama-quantize reads
ours and we read llama-imatrix's. Its older `.dat` files are read too: int32 entry count; per entry
int32 name length, the name, int32 ncall, int32 value count, float32 values (the mean square times
ncall); then optionally int32 chunk count, int32 length and the dataset name.

The inputs of Phi-2's matrices, as the engine's hook points name them: `ln.L` is read by
attn_qkv and ffn_up alike, `head_out.L` (the heads side by side) by attn_output, `mlp_post.L` by
ffn_down, and `ln_final` by output (lm_head).
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .atomic import replace_durably, temp_path
from .errors import ModelFileError, Phi2Error

SUM2, COUNTS = ".in_sum2", ".counts"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass
class IMatrix:
    """sums[name]: (n_cols,) float64 sums of squares of that matrix's input; counts[name]: rows summed."""
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def add(self, name: str, x: np.ndarray) -> None:
        """Accumulate the rows of x (n_rows, n_cols), the inputs of matrix `name`."""
        x = np.asarray(x, dtype=np.float64)
        s = np.einsum("ij,ij->j", x, x)
        if name in self.sums:
            self.sums[name] += s
        else:
            self.sums[name] = s
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]

    def importance(self, name: str) -> Optional[np.ndarray]:
        """The mean square of each input column of matrix `name` (float32), or None without data.
        A fused attn_qkv takes a separate attn_q's statistics (q, k and v read the same input)."""
        if name not in self.sums and ".attn_qkv." in name:
            name = name.replace(".attn_qkv.", ".attn_q.")
        if name not in self.sums or self.counts[name] <= 0:
            return None
        return (self.sums[name] / self.counts[name]).astype(np.float32)


def matrix_inputs(n_layer: int) -> dict[str, list[str]]:
    """Hook point -> the GGUF weights that read it."""
    out = {}
    for i in range(n_layer):
        out[f"ln.{i}"] = [f"blk.{i}.attn_qkv.weight", f"blk.{i}.ffn_up.weight"]
        out[f"head_out.{i}"] = [f"blk.{i}.attn_output.weight"]
        out[f"mlp_post.{i}"] = [f"blk.{i}.ffn_down.weight"]
    out["ln_final"] = ["output.weight"]
    return out


def collect(model, text: str, chunk_size: int = 512, max_chunks: Optional[int] = None, dataset: str = "",
            progress: bool = False) -> IMatrix:
    """Statistics of every matrix input over `text`, split into chunks of `chunk_size` tokens (the
    last partial chunk dropped), each run from an empty cache as llama-imatrix does."""
    if not (isinstance(chunk_size, int) and 2 <= chunk_size <= model.n_ctx):
        raise Phi2Error(f"chunk size must be an integer in 2..{model.n_ctx} (the context), got {chunk_size!r}")
    ids = model.tokenize(text)
    n_chunks = len(ids) // chunk_size
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise Phi2Error(f"the calibration text is {len(ids)} tokens; one chunk needs {chunk_size}")
    inputs = matrix_inputs(model.config.n_layer)
    im = IMatrix(datasets=[dataset] if dataset else [], chunk_size=chunk_size)
    from tqdm import tqdm

    for c in tqdm(range(n_chunks), disable=not progress, unit="chunk", file=sys.stderr, desc="imatrix"):
        cache = model.run_with_cache(ids[c * chunk_size: (c + 1) * chunk_size], list(inputs), logits=False)
        for point, weights in inputs.items():
            a = np.asarray(cache[point])
            a = a.reshape(a.shape[0], -1)
            for w in weights:
                im.add(w, a)
        im.chunk_count += 1
    model.reset()
    return im


# ----------------------------------------------------------------------------- files

def save(im: IMatrix, path: str | Path) -> Path:
    """Write `im` as llama.cpp's imatrix GGUF, atomically (temporary file, fsync, rename)."""
    import gguf

    out = Path(path)
    if not out.parent.is_dir():
        raise Phi2Error(f"{out.parent}: output directory does not exist")
    if out.is_dir():
        raise Phi2Error(f"{out}: is a directory; give the file to write")
    tmp = temp_path(out)
    w = gguf.GGUFWriter(tmp, "imatrix")
    w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix's files carry no architecture
    try:
        w.add_type("imatrix")
        w.add_array(KEY_DATASETS, list(im.datasets))
        w.add_uint32(KEY_CHUNK_COUNT, int(im.chunk_count))
        w.add_uint32(KEY_CHUNK_SIZE, int(im.chunk_size))
        for name in sorted(im.sums):
            w.add_tensor(name + SUM2, np.asarray(im.sums[name], np.float32).reshape(1, -1))
            w.add_tensor(name + COUNTS, np.full((1, 1), float(im.counts[name]), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        replace_durably(tmp, out)
    except BaseException:
        try:
            w.close()
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        raise
    return out


def load(path: str | Path) -> IMatrix:
    """Read an imatrix GGUF or a legacy .dat file; anything else is a ModelFileError."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"{p}: {e.strerror or e}") from None
    return _load_gguf(p) if magic == b"GGUF" else _load_dat(p)


def _load_gguf(p: Path) -> IMatrix:
    import gguf

    try:
        r = gguf.GGUFReader(p)
    except Exception as e:  # the reader raises whatever a truncated or garbled file trips
        raise ModelFileError(f"{p}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    kv = {k: v for k, v in r.fields.items()}
    missing = [k for k in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in kv]
    if missing:
        raise ModelFileError(f"{p}: not an imatrix file (no {', '.join(missing)})")
    # no datasets key: an empty list (the GGUF writer leaves out an empty array, so save() writes none)
    im = IMatrix(datasets=[str(x) for x in kv[KEY_DATASETS].contents()] if KEY_DATASETS in kv else [],
                 chunk_count=int(kv[KEY_CHUNK_COUNT].contents()), chunk_size=int(kv[KEY_CHUNK_SIZE].contents()))
    tensors = {t.name: t for t in r.tensors}
    names = {n[: -len(SUM2)] for n in tensors if n.endswith(SUM2)} | {n[: -len(COUNTS)] for n in tensors if n.endswith(COUNTS)}
    if not names:
        raise ModelFileError(f"{p}: the imatrix holds no entries")
    for name in sorted(names):
        s, c = tensors.get(name + SUM2), tensors.get(name + COUNTS)
        if s is None or c is None:
            raise ModelFileError(f"{p}: {name} has {'counts' if s is None else 'sums'} but no "
                                 f"{'sums' if s is None else 'counts'}")
        if s.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ModelFileError(f"{p}: {name}: sums and counts must be F32")
        sums, counts = np.asarray(s.data, np.float64), np.asarray(c.data, np.float64).reshape(-1)
        if counts.size != 1 or sums.ndim > 2 or (sums.ndim == 2 and sums.shape[0] != 1):
            raise ModelFileError(f"{p}: {name} has {counts.size} matrices (experts); Phi-2 has one per weight")
        _set(im, p, name, sums.reshape(-1), counts[0])
    return im


def _set(im: IMatrix, p: Path, name: str, sums: np.ndarray, count: float) -> None:
    if not np.all(np.isfinite(sums)) or np.any(sums < 0):
        raise ModelFileError(f"{p}: {name}: sums of squares must be finite and non-negative")
    if not (np.isfinite(count) and count >= 0 and count == int(count)):
        raise ModelFileError(f"{p}: {name}: count {count} is not a whole number of rows")
    im.sums[name], im.counts[name] = sums.astype(np.float64), int(count)


def _load_dat(p: Path) -> IMatrix:
    data = p.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ModelFileError(f"{p}: not an imatrix GGUF or .dat file (cut short reading {what} at byte {pos})")
        pos += n
        return data[pos - n: pos]

    def i32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count")
    if n_entries < 1 or n_entries > len(data) // 12:
        raise ModelFileError(f"{p}: not an imatrix GGUF or .dat file (entry count {n_entries})")
    im = IMatrix()
    for e in range(n_entries):
        name_len = i32(f"entry {e}")
        if not 0 < name_len <= 1024:
            raise ModelFileError(f"{p}: not an imatrix GGUF or .dat file (entry {e} name length {name_len})")
        try:
            name = take(name_len, f"entry {e}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{p}: entry {e}'s name is not UTF-8") from None
        ncall, nval = i32(f"{name}'s call count"), i32(f"{name}'s value count")
        if nval < 1:
            raise ModelFileError(f"{p}: {name} has {nval} values")
        values = np.frombuffer(take(4 * nval, f"{name}'s values"), "<f4").astype(np.float64)
        # values are mean squares times ncall: as sums over ncall rows they give the same means
        _set(im, p, name, values, max(ncall, 1))
    if pos < len(data):
        im.chunk_count = i32("the chunk count")
        if pos < len(data):
            n = i32("the dataset name length")
            if n > 0:
                im.datasets = [take(n, "the dataset name").decode("utf-8", "replace")]
    return im


def check_fits(im: IMatrix, path: str | Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse an imatrix made for another model: every entry must name one of the model's matrices
    (a separate attn_q/k/v stands for the fused attn_qkv) and hold one value per input column."""
    for name, s in im.sums.items():
        target = name
        for part in ("attn_q", "attn_k", "attn_v"):
            if f".{part}.weight" in name:
                target = name.replace(f".{part}.", ".attn_qkv.")
        shape = shapes.get(target)
        if shape is None or len(shape) != 2:
            raise Phi2Error(f"{path}: the imatrix does not fit this model: it has an entry for {name}, "
                            "which is not one of the model's matrices")
        if s.size != shape[1]:
            raise Phi2Error(f"{path}: the imatrix does not fit this model: {name} has {s.size} columns "
                            f"in the imatrix, {shape[1]} in the model")


def stdlib_calibration(files: Sequence[str], avoid: str = "") -> str:
    """The named files of this Python's standard library, joined; refuses a file that shares a line
    of 32 or more characters (stripped) with `avoid` (the evaluation text)."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    banned = {ln.strip() for ln in avoid.splitlines() if len(ln.strip()) >= 32}
    parts = []
    for rel in files:
        f = root / rel
        if not f.is_file():
            raise Phi2Error(f"{rel}: not in this Python's standard library ({root})")
        text = f.read_text(encoding="utf-8")
        shared = [ln.strip() for ln in text.splitlines() if ln.strip() in banned]
        if shared:
            raise Phi2Error(f"{rel} shares {len(shared)} lines with the evaluation text, e.g. {shared[0]!r}")
        parts.append(text)
    return "\n".join(parts)
