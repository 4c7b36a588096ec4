"""Activation-aware per-channel scales (AWQ), folded into the tensors before quantization.

A matrix W (rows, cols) reads x; for any positive column scale s, W x = (W diag(s)) (x / s). Where the
producer of x is linear per channel, x / s is folded into it, so the float model computes the same
function while the quantizer sees W diag(s): columns with large inputs get a finer grid.
Phi-2 has three such places (ffn_down reads gelu's output, where nothing folds):
- a block's LayerNorm feeds attn_qkv and ffn_up (parallel block): one s for both, the norm's weight
  and bias divided by s;
- the V rows of attn_qkv feed attn_output through the attention (softmax rows sum to 1, so the V
  bias passes through): attn_output's columns times s, V's rows and bias divided by s;
- output_norm feeds output (lm_head): its weight and bias divided by s.

The scales come from an importance matrix (mean squares m of each input column): s = m^(alpha/2),
normalised to a geometric mean of 1; per group alpha is searched on a grid (alpha = 0 is no scaling)
for the least output error E||(W - W_q) x||^2 ~ sum_j m_j (W_ij - W_q,ij / s_j)^2 summed over the
group's matrices, each quantized by its type's importance-weighted search with the importance of
x / s, m / s^2 (the same diagonal approximation the imatrix quantizers minimise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import _core

ALPHAS = tuple(i / 10 for i in range(11))
_FLOAT_TYPES = frozenset(t["id"] for t in _core.types() if t["block_size"] == 1)  # no rounding grid to fit
_ERROR_ROWS = 1024  # rows per block of the error sum
_MIN_REL = 1e-6  # mean squares below this fraction of the largest count as this fraction


def scales(m: np.ndarray, alpha: float) -> np.ndarray:
    """s = m^(alpha/2), geometric mean 1 (float64)."""
    m = np.maximum(np.asarray(m, np.float64), max(float(np.max(m)), 1e-30) * _MIN_REL)
    s = m ** (alpha / 2)
    return s / np.exp(np.log(s).mean())


def quantize_error(w: np.ndarray, ttype: int, m: np.ndarray, s: np.ndarray, threads: int = 1
                   ) -> tuple[float, np.ndarray]:
    """(sum_j m_j (W_ij - Q(W diag(s))_ij / s_j)^2, the bytes of Q(W diag(s))) for float32 W."""
    ws = np.empty(w.shape, np.float32)  # rounded from float64 as the folded tensor is, in row blocks
    for r0 in range(0, w.shape[0], _ERROR_ROWS):
        ws[r0:r0 + _ERROR_ROWS] = w[r0:r0 + _ERROR_ROWS] * s
    imp = (m / s**2).astype(np.float32)
    q = _core.quantize(ws, ttype, imp, threads)
    # in blocks of rows, so the float64 temporaries stay a small fraction of W (lm_head: 500 MiB)
    err, imp64 = 0.0, imp.astype(np.float64)
    for r0 in range(0, w.shape[0], _ERROR_ROWS):
        d = _core.dequantize(q[r0:r0 + _ERROR_ROWS], ttype, w.shape[1]).reshape(-1, w.shape[1])
        err += float(((d.astype(np.float64) - ws[r0:r0 + _ERROR_ROWS]) ** 2 @ imp64).sum())
    return err, q


@dataclass
class Search:
    alpha: float
    s: np.ndarray
    errors: dict[float, float]             # alpha -> the group's weighted error
    quantized: list[Optional[np.ndarray]]  # the chosen alpha's bytes per matrix (None for float types)


def search(mats: Sequence[tuple[np.ndarray, int]], m: Optional[np.ndarray], alphas: Sequence[float] = ALPHAS,
           threads: int = 1) -> Search:
    """The alpha (and its scales) with the least total weighted error over the matrices (W, type)
    that share input statistics m; s = 1 when m is missing or every type is a float type."""
    n = mats[0][0].shape[1]
    if m is None or all(t in _FLOAT_TYPES for _, t in mats) or not np.any(np.asarray(m) > 0):
        return Search(0.0, np.ones(n), {}, [None] * len(mats))
    m = np.asarray(m, np.float64)
    best: Optional[Search] = None
    errors = {}
    for a in alphas:
        s = scales(m, a)
        total, qs = 0.0, []
        for w, t in mats:
            if t in _FLOAT_TYPES:
                qs.append(None)
                continue
            e, q = quantize_error(w, t, m, s, threads)
            total += e
            qs.append(q)
        errors[a] = total
        if best is None or total < errors[best.alpha]:
            best = Search(a, s, errors, qs)
    assert best is not None
    return best


def fold_layer(w: dict[str, np.ndarray], i: int, n_embd: int, s_ln: np.ndarray, s_v: np.ndarray) -> None:
    """Fold scales into layer i of float tensors `w` (GGUF names) in place: s_ln on the norm's output
    (attn_qkv and ffn_up columns), s_v on attn_output's input (V rows of attn_qkv)."""
    p = f"blk.{i}."
    qkv, bqkv = w[p + "attn_qkv.weight"], w[p + "attn_qkv.bias"]
    v = slice(2 * n_embd, 3 * n_embd)
    w[p + "attn_output.weight"] = (w[p + "attn_output.weight"] * s_v).astype(np.float32)
    qkv = qkv.astype(np.float64)
    qkv[v] /= s_v[:, None]
    bqkv = bqkv.astype(np.float64)
    bqkv[v] /= s_v
    w[p + "attn_qkv.weight"] = (qkv * s_ln).astype(np.float32)
    w[p + "attn_qkv.bias"] = bqkv.astype(np.float32)
    w[p + "ffn_up.weight"] = (w[p + "ffn_up.weight"] * s_ln).astype(np.float32)
    w[p + "attn_norm.weight"] = (w[p + "attn_norm.weight"] / s_ln).astype(np.float32)
    w[p + "attn_norm.bias"] = (w[p + "attn_norm.bias"] / s_ln).astype(np.float32)


def fold_output(w: dict[str, np.ndarray], s: np.ndarray) -> None:
    """Fold s into output_norm -> output in place."""
    w["output.weight"] = (w["output.weight"] * s).astype(np.float32)
    w["output_norm.weight"] = (w["output_norm.weight"] / s).astype(np.float32)
    w["output_norm.bias"] = (w["output_norm.bias"] / s).astype(np.float32)


LAYER_PARTS = ("attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias", "attn_output.weight",
               "ffn_up.weight")
OUTPUT_PARTS = ("output_norm.weight", "output_norm.bias", "output.weight")


@dataclass
class Folder:
    """Serves the tensors of a model with AWQ scales folded in, one group (a layer, or the output
    norm and lm_head) at a time: `tensor(name)` is the folded float tensor, `quantized(name)` the
    search's bytes for a matrix (None where the search left it to the caller). `load` reads a source
    tensor by GGUF name as float32; `types` is every tensor's GGML type id; `importance(name)` the
    imatrix's mean squares (or None)."""
    load: Callable[[str], np.ndarray]
    types: dict[str, int]
    importance: Callable[[str], Optional[np.ndarray]]
    n_embd: int
    threads: int = 1
    alphas: Sequence[float] = ALPHAS
    report: dict[str, dict] = field(default_factory=dict)
    _key: Optional[str] = None
    _w: dict[str, np.ndarray] = field(default_factory=dict)
    _q: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def group(name: str) -> Optional[str]:
        if name.startswith("blk."):
            i, part = name.split(".", 2)[1:]
            return f"blk.{i}" if part in LAYER_PARTS else None
        return "output" if name in OUTPUT_PARTS else None

    def _fill(self, key: str) -> None:
        self._key, self._w, self._q = key, {}, {}
        if key == "output":
            w = {n: np.asarray(self.load(n), np.float32) for n in OUTPUT_PARTS}
            r = search([(w["output.weight"], self.types["output.weight"])], self.importance("output.weight"),
                       self.alphas, self.threads)
            fold_output(w, r.s)
            self._keep(w, ["output.weight"], r)
            self.report["output"] = {"alpha": r.alpha, "error_ratio": _ratio(r)}
            return
        i = int(key.split(".")[1])
        p = f"blk.{i}."
        w = {p + n: np.asarray(self.load(p + n), np.float32) for n in LAYER_PARTS}
        o = p + "attn_output.weight"
        rv = search([(w[o], self.types[o])], self.importance(o), self.alphas, self.threads)
        fold_layer(w, i, self.n_embd, np.ones(self.n_embd), rv.s)
        mats = [p + "attn_qkv.weight", p + "ffn_up.weight"]
        rl = search([(w[n], self.types[n]) for n in mats], self.importance(mats[0]), self.alphas, self.threads)
        fold_layer(w, i, self.n_embd, rl.s, np.ones(self.n_embd))
        self._keep(w, [o], rv)
        self._keep(w, mats, rl)
        self.report[key] = {"alpha_norm": rl.alpha, "error_ratio_norm": _ratio(rl),
                            "alpha_v": rv.alpha, "error_ratio_v": _ratio(rv)}

    def _keep(self, w: dict[str, np.ndarray], mats: list[str], r: Search) -> None:
        self._w.update(w)
        for n, q in zip(mats, r.quantized):
            if q is not None:
                self._q[n] = q

    def _ensure(self, name: str) -> bool:
        key = self.group(name)
        if key is None:
            return False
        if key != self._key:
            self._fill(key)
        return True

    def tensor(self, name: str) -> np.ndarray:
        return self._w[name] if self._ensure(name) else self.load(name)

    def quantized(self, name: str) -> Optional[np.ndarray]:
        return self._q.get(name) if self._ensure(name) else None


def _ratio(r: Search) -> Optional[float]:
    """The chosen alpha's error over alpha = 0's (1.0 when no scaling won)."""
    return round(r.errors[r.alpha] / r.errors[0.0], 4) if r.errors and r.errors.get(0.0) else None
