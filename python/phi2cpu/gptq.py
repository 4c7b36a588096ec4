"""GPTQ-style error-feedback rounding (Frantar et al., 2022) onto GGUF block grids.

A matrix W (rows, cols) reads inputs x; the output error of a quantized Q over a calibration text is
sum_x ||(W - Q) x||^2 = tr((W - Q) H (W - Q)^T) with H = sum x x^T (cols, cols). Columns are rounded
left to right; the error of column j, divided by U[j, j], is spread over the columns not yet rounded
through row j of U, the upper Cholesky factor of H^-1 (H dampened by 0.01 * mean(diag H) on its
diagonal), so that the later columns absorb what j lost. Updates are applied lazily: within a
batch of columns at once, to the columns after it with one matrix product.

GGUF blocks fix a scale (and min) per block of columns. At the first column of each span (a Q4_0 /
IQ4_NL / Q8_0 block of 32, a Q4_K / Q5_K / IQ4_XS / Q6_K super-block of 256) the type's own quantizer (its
importance-weighted search when an imatrix is given) picks the span's block header from the
current, error-updated weights (the importance-weighted searches see the span, not the whole row); its columns are then rounded one at a time to the nearest level of
that header's grid, with feedback. The bytes are the type's standard layout: only the rounding
differs, so any GGUF reader runs the file at the type's usual speed.

H per matrix input is collected in-process by running the engine over the calibration text (the
hook points that phi2cpu.imatrix reads: ln.L for attn_qkv and ffn_up, head_out.L for attn_output,
mlp_post.L for ffn_down, ln_final for output), in float64, a group of layers per pass so the
statistics stay under MEMORY_BUDGET (full-size Phi-2: 2 x 2560^2 + 10240^2 values, 944 MB per
layer, so 8 layers per pass and 4 passes; factoring ffn_down's 10240^2 covariance takes about four
more such matrices, 3.4 GB, while it runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _core
from .errors import Phi2Error
from .gguf_io import type_name
from .imatrix import matrix_inputs

DAMP = 0.01
BATCH = 256
MEMORY_BUDGET = 8 << 30
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)


# ----------------------------------------------------------------------------- block layouts

@dataclass(frozen=True)
class Codec:
    """One GGUF type as seen by the rounding: `span` columns share one call of the type's quantizer;
    within a span, value j of row r is a[r, j] * grid[code] + b[r, j]; `fields` places each code's
    bits in a block: (value index, byte, shift in the byte, bit count, first bit of the code)."""
    type_id: int
    block: int
    type_size: int
    span: int
    grid: np.ndarray
    fields: np.ndarray
    params: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # block bytes (r, n_blk, size) -> (a, b) (r, n_blk*block)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float64)


def _nibbles(n_groups: int, base: int, group: int) -> list[tuple[int, int, int, int, int]]:
    """Values 0..2*group-1 of each group of 2*group: low nibbles of `group` bytes, then the high ones."""
    out = []
    for g in range(n_groups):
        for j in range(group):
            out.append((2 * group * g + j, base + group * g + j, 0, 4, 0))
            out.append((2 * group * g + group + j, base + group * g + j, 4, 4, 0))
    return out


def _per_value(x: np.ndarray, width: int) -> np.ndarray:
    """(r, n_blk, k) per sub-block -> (r, n_blk * k * width) per value."""
    return np.repeat(x, width, axis=-1).reshape(x.shape[0], -1)


def _q4_0(b: np.ndarray):
    d = _f16(b, 0)[..., None]
    return _per_value(d, 32), np.zeros((b.shape[0], b.shape[1] * 32))


def _q4_k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = b[..., 4:16].astype(np.int64)
    sc = np.concatenate([q[..., 0:4] & 63, (q[..., 8:12] & 15) | ((q[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


def _q4_k(b: np.ndarray):
    sc, mn = _q4_k_scales(b)
    return _per_value(_f16(b, 0)[..., None] * sc, 32), -_per_value(_f16(b, 2)[..., None] * mn, 32)


def _iq4_xs(b: np.ndarray):
    h = b[..., 2].astype(np.int64) | (b[..., 3].astype(np.int64) << 8)
    lo = b[..., 4:8].astype(np.int64)
    ib = np.arange(8)
    ls = ((lo[..., ib // 2] >> (4 * (ib % 2))) & 15) | (((h[..., None] >> (2 * ib)) & 3) << 4)
    return _per_value(_f16(b, 0)[..., None] * (ls - 32), 32), np.zeros((b.shape[0], b.shape[1] * 256))


def _q6_k(b: np.ndarray):
    sc = b[..., 192:208].view(np.int8).astype(np.float64)
    return _per_value(_f16(b, 208)[..., None] * sc, 16), np.zeros((b.shape[0], b.shape[1] * 256))


def _q5_k_fields() -> list[tuple[int, int, int, int, int]]:
    """Q4_K's nibbles (qs at 48), and value 32j + l's fifth bit in bit j of qh[l] (qh at 16)."""
    return ([(v, 48 + b, s, w, o) for v, b, s, w, o in _nibbles(4, 0, 32)] +
            [(v, 16 + v % 32, v // 32, 1, 4) for v in range(256)])


def _q8_0(b: np.ndarray):
    return _per_value(_f16(b, 0)[..., None], 32), np.zeros((b.shape[0], b.shape[1] * 32))


def _q6_k_fields() -> list[tuple[int, int, int, int, int]]:
    out = []
    for n in range(2):  # two halves of 128 values: ql 64 bytes, qh 32 bytes each
        for l in range(32):
            for k, (ql, lo_shift) in enumerate(((l, 0), (l + 32, 0), (l, 4), (l + 32, 4))):
                v = 128 * n + 32 * k + l
                out.append((v, 64 * n + ql, lo_shift, 4, 0))
                out.append((v, 128 + 32 * n + l, 2 * k, 2, 4))
    return out


CODECS = {
    2: Codec(2, 32, 18, 32, np.arange(16) - 8.0, np.array(_nibbles(1, 2, 16)), _q4_0),
    20: Codec(20, 32, 18, 32, KVALUES_IQ4NL, np.array(_nibbles(1, 2, 16)), _q4_0),
    12: Codec(12, 256, 144, 256, np.arange(16.0), np.array([(v, 16 + b, s, w, o) for v, b, s, w, o in
                                                             _nibbles(4, 0, 32)]), _q4_k),
    23: Codec(23, 256, 136, 256, KVALUES_IQ4NL, np.array(_nibbles(8, 8, 16)), _iq4_xs),
    14: Codec(14, 256, 210, 256, np.arange(64) - 32.0, np.array(_q6_k_fields()), _q6_k),
    13: Codec(13, 256, 176, 256, np.arange(32.0), np.array(_q5_k_fields()), _q4_k),
    # Q8_0: the stored byte is the two's-complement value, so code c means int8(c)
    8: Codec(8, 32, 34, 32, (np.arange(256) ^ 128) - 128.0, np.array([(v, 2 + v, 0, 8, 0) for v in range(32)]),
             _q8_0),
}


def codes_of(codec: Codec, blocks: np.ndarray) -> np.ndarray:
    """The stored codes (r, n_blk * block) of block bytes (r, n_blk, type_size)."""
    v, byte, shift, width, off = codec.fields.T
    bits = ((blocks[..., byte].astype(np.int64) >> shift) & ((1 << width) - 1)) << off
    out = np.zeros(blocks.shape[:2] + (codec.block,), np.int64)
    np.add.at(out, (slice(None), slice(None), v), bits)
    return out.reshape(blocks.shape[0], -1)


def with_codes(codec: Codec, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Block bytes with every code field replaced by `codes` (r, n_blk * block); headers kept."""
    v, byte, shift, width, off = codec.fields.T
    c = codes.reshape(blocks.shape[0], blocks.shape[1], codec.block)
    out = blocks.copy()
    out[..., np.unique(byte)] = 0
    part = ((c[..., v] >> off) & ((1 << width) - 1)) << shift
    acc = np.zeros(blocks.shape[:2] + (codec.type_size,), np.int64)
    np.add.at(acc, (slice(None), slice(None), byte), part)  # the fields of one byte never overlap
    out[..., np.unique(byte)] = acc[..., np.unique(byte)].astype(np.uint8)
    return out


def nearest(codec: Codec, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code, value) of the grid level a * grid + b nearest to w, per row."""
    levels = a[:, None] * codec.grid[None, :] + b[:, None]
    k = np.argmin(np.abs(w[:, None] - levels), axis=1)
    return k, levels[np.arange(w.size), k]


# ----------------------------------------------------------------------------- the rounding

def upper_inverse_factor(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """U, upper triangular with U^T U = (H + damp * mean(diag H) I)^-1; a column that never saw input
    (zero diagonal) gets 1 there, so its rounding passes no error on."""
    h = np.array(h, np.float64)
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    diag = np.diag_indices(h.shape[0])
    lam = damp * float(np.mean(h[diag]))
    h[diag] += lam
    for _ in range(6):
        try:
            inv_lo = np.linalg.inv(np.linalg.cholesky(h))  # L^-1, so H^-1 = L^-T L^-1
            return np.linalg.cholesky(inv_lo.T @ inv_lo).T
        except np.linalg.LinAlgError:
            h[diag] += 9 * lam
            lam *= 10
    raise Phi2Error("the input covariance is not positive definite even with 10^6 x the dampening")


def quantize_matrix(w: np.ndarray, h: Optional[np.ndarray], type_id: int, importance: Optional[np.ndarray] = None,
                    damp: float = DAMP, threads: int = 1, u: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(GGUF block bytes (rows, bytes per row), their dequantized float64 values) of float W (rows,
    cols) rounded with error feedback through H (cols, cols), or through its factor `u` when given
    (upper_inverse_factor(H, damp)); `importance` (cols,) weights the type's scale search as
    --imatrix does."""
    codec = CODECS.get(int(type_id))
    if codec is None:
        raise Phi2Error(f"GPTQ rounding supports {', '.join(type_name(t) for t in CODECS)}, not {type_name(type_id)}")
    w = np.array(w, np.float64)
    rows, cols = w.shape
    shape = (h if u is None else u).shape
    if cols % codec.span or shape != (cols, cols):
        raise Phi2Error(f"GPTQ: a {rows}x{cols} matrix needs columns in whole {codec.span}-column spans and a "
                        f"{cols}x{cols} covariance (got {shape[0]}x{shape[1]})")
    if u is None:
        u = upper_inverse_factor(h, damp)
    q = np.zeros_like(w)
    out = []
    batch = max(BATCH // codec.span, 1) * codec.span
    for i1 in range(0, cols, batch):
        i2 = min(i1 + batch, cols)
        w1, err, u1 = w[:, i1:i2].copy(), np.zeros((rows, i2 - i1)), u[i1:i2, i1:i2]
        for s in range(0, i2 - i1, codec.span):
            span = slice(i1 + s, i1 + s + codec.span)
            imp = None if importance is None else np.ascontiguousarray(importance[span], np.float32)
            raw = _core.quantize(np.ascontiguousarray(w1[:, s:s + codec.span], np.float32), codec.type_id, imp, threads)
            blocks = raw.reshape(rows, -1, codec.type_size)
            a, b = codec.params(blocks)
            codes = np.zeros((rows, codec.span), np.int64)
            for j in range(codec.span):
                c = s + j
                codes[:, j], q[:, i1 + c] = nearest(codec, w1[:, c], a[:, j], b[:, j])
                e = (w1[:, c] - q[:, i1 + c]) / u1[c, c]
                w1[:, c:] -= np.outer(e, u1[c, c:])
                err[:, c] = e
            out.append(with_codes(codec, blocks, codes).reshape(rows, -1))
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return np.concatenate(out, axis=1), q


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """sum over the calibration inputs of ||(W - Q) x||^2 = tr((W - Q) H (W - Q)^T)."""
    d = np.asarray(w, np.float64) - np.asarray(q, np.float64)
    return float(np.einsum("ij,jk,ik->", d, h, d))


# ----------------------------------------------------------------------------- statistics

def layer_bytes(n_embd: int, n_ff: int) -> int:
    """Bytes of one layer's float64 covariances (the norm output, the heads, the gelu output)."""
    return 8 * (2 * n_embd * n_embd + n_ff * n_ff)


class Covariances:
    """H = sum x x^T of each matrix's input over the calibration chunks, computed on demand a group of
    layers per pass of the engine (`model`, a loaded float GGUF) over `ids`, the groups sized to
    `budget` bytes. `factor(weight name)` -> upper_inverse_factor(H), made once per input (attn_qkv and
    ffn_up share it; the factor replaces H in memory), or None for a weight no hook point feeds."""

    def __init__(self, model, ids: list[int], chunk_size: int, n_chunks: int, budget: int = MEMORY_BUDGET,
                 progress: bool = False):
        c = model.config
        self.model, self.ids, self.chunk_size, self.n_chunks, self.progress = model, ids, chunk_size, n_chunks, progress
        self.n_layer = c.n_layer
        self.per_pass = max(1, min(c.n_layer, budget // layer_bytes(c.n_embd, c.n_ff)))
        self.point_of = {w: p for p, ws in matrix_inputs(c.n_layer).items() for w in ws}
        self.passes = 0
        self._group: Optional[int] = None
        self._h: dict[str, np.ndarray] = {}
        self._u: dict[str, np.ndarray] = {}

    def factor(self, weight: str, damp: float = DAMP) -> Optional[np.ndarray]:
        point = self.point_of.get(weight)
        if point is None:
            return None
        layer = self.n_layer - 1 if point == "ln_final" else int(point.split(".")[1])
        group = layer // self.per_pass
        if group != self._group:
            self._collect(group)
        if point not in self._u:
            self._u[point] = upper_inverse_factor(self._h.pop(point), damp)
        return self._u[point]

    def _collect(self, group: int) -> None:
        lo, hi = group * self.per_pass, min((group + 1) * self.per_pass, self.n_layer)
        points = [p for p in matrix_inputs(self.n_layer)
                  if (p == "ln_final" and hi == self.n_layer) or (p != "ln_final" and lo <= int(p.split(".")[1]) < hi)]
        self._h, self._u, self._group = {}, {}, None
        from tqdm import tqdm

        k = self.chunk_size
        for ch in tqdm(range(self.n_chunks), disable=not self.progress, unit="chunk", desc=f"gptq layers {lo}-{hi - 1}"):
            cache = self.model.run_with_cache(self.ids[ch * k: (ch + 1) * k], points, logits=False)
            for p in points:
                x = np.asarray(cache[p], np.float64)
                x = x.reshape(x.shape[0], -1)
                if p in self._h:
                    self._h[p] += x.T @ x
                else:
                    self._h[p] = x.T @ x
        self.model.reset()
        self._group = group
        self.passes += 1
