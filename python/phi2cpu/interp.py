"""Interpretability instruments: named activations, interventions, logit lens and direct logit
attribution. See docs/interpretability.md for the naming scheme and the costs.

Hook points, L = layer 0..n_layer-1 (negative counts from the end), rows = tokens:

    resid_pre.L   (n, n_embd)              the residual stream entering layer L (resid_pre.0: embeddings)
    ln.L          (n, n_embd)              layer L's LayerNorm output, read by attention and MLP alike
    attn_probs.L  (n_head, n, n_keys)      softmax probabilities, heads x queries x keys (capture only)
    head_out.L    (n, n_head, head_dim)    each head's output before `dense` (softmax(qk) v)
    attn_out.L    (n, n_embd)              `dense` output, bias included
    mlp_pre.L     (n, n_ff)                fc1 output, before gelu_new
    mlp_post.L    (n, n_ff)                gelu_new(fc1 output)
    mlp_out.L     (n, n_embd)              fc2 output, bias included
    resid_post.L  (n, n_embd)              resid_pre.L + attn_out.L + mlp_out.L
    ln_final      (n, n_embd)              the final LayerNorm output, lm_head's input

``resid_post.L`` and ``resid_pre.L+1`` are the same point in time; edits at the first are seen by
the second. A name may use ``*`` for every layer (``"attn_probs.*"``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import Phi2Error

if TYPE_CHECKING:  # pragma: no cover
    from .config import PhiConfig
    from .model import Model

# The C++ Point enum (csrc/model/hooks.h), in its order.
POINTS = ("resid_pre", "ln", "attn_probs", "head_out", "attn_out", "mlp_pre", "mlp_post", "mlp_out",
          "resid_post", "ln_final")
POINT_ID = {p: i for i, p in enumerate(POINTS)}
OPS = {"add": 0, "mul": 1, "set": 2}

_NAME = re.compile(r"^([a-z_]+)(?:\.(\*|-?\d+))?$")


def parse_name(name: str, n_layer: int) -> List[Tuple[str, int]]:
    """(point, layer) pairs a hook name stands for; ``*`` expands to every layer."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if not m or m.group(1) not in POINT_ID:
        raise Phi2Error(f"unknown activation name {name!r}; names are POINT.LAYER with POINT one of "
                        f"{', '.join(p for p in POINTS if p != 'ln_final')}, or ln_final")
    point, layer = m.group(1), m.group(2)
    if point == "ln_final":
        if layer is not None:
            raise Phi2Error(f"{name!r}: ln_final has no layer")
        return [(point, 0)]
    if layer is None:
        raise Phi2Error(f"{name!r} needs a layer: {point}.0 .. {point}.{n_layer - 1}, or {point}.*")
    if layer == "*":
        return [(point, i) for i in range(n_layer)]
    i = int(layer)
    if not -n_layer <= i < n_layer:
        raise Phi2Error(f"{name!r}: layer {i} is outside 0..{n_layer - 1}")
    return [(point, i % n_layer)]


def canonical(point: str, layer: int) -> str:
    return "ln_final" if point == "ln_final" else f"{point}.{layer}"


def all_names(n_layer: int) -> List[str]:
    """Every hook point in forward order."""
    names = [canonical(p, i) for i in range(n_layer) for p in POINTS if p != "ln_final"]
    return names + ["ln_final"]


def point_width(point: str, c: "PhiConfig") -> int:
    if point == "attn_probs":
        raise Phi2Error("attention probabilities can be captured, not edited")
    return c.n_ff if point in ("mlp_pre", "mlp_post") else c.n_embd


# --- interventions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intervention:
    """One edit at a hook point, applied to every forward while active: ``op`` "add" (x += row),
    "mul" (x *= row, per column) or "set" (x = row, on ``cols`` only when given). ``rows`` is one
    row for every position in ``positions`` (every position when None), or one row per position."""

    name: str
    op: str
    rows: np.ndarray                        # (n_rows, width) float32; head_out rows are flat n_head * head_dim
    positions: Optional[Tuple[int, ...]] = None
    cols: Optional[np.ndarray] = None       # bool (width,), "set" only

    def resolve(self, c: "PhiConfig") -> Tuple[str, int, int]:
        """(point, layer, width) after checking the edit fits the model."""
        pairs = parse_name(self.name, c.n_layer)
        if len(pairs) != 1:
            raise Phi2Error(f"{self.name!r}: an intervention names one layer (build one per layer)")
        point, layer = pairs[0]
        width = point_width(point, c)
        if self.rows.ndim != 2 or self.rows.shape[1] != width:
            raise Phi2Error(f"{self.name}: intervention rows must be (n, {width}), got {list(self.rows.shape)}")
        n_pos = None if self.positions is None else len(self.positions)
        if self.rows.shape[0] != 1 and self.rows.shape[0] != n_pos:
            raise Phi2Error(f"{self.name}: {self.rows.shape[0]} rows for "
                            f"{'every position' if n_pos is None else f'{n_pos} positions'}; give one row or one per position")
        return point, layer, width

    def engine_tuple(self, c: "PhiConfig") -> tuple:
        point, layer, _ = self.resolve(c)
        cols = None if self.cols is None else self.cols.astype(np.uint8)
        return (POINT_ID[point], layer, OPS[self.op], self.rows, list(self.positions or ()), cols)


def _positions(positions: Union[None, int, Iterable[int]]) -> Optional[Tuple[int, ...]]:
    if positions is None:
        return None
    if isinstance(positions, (int, np.integer)):
        positions = [positions]
    out = tuple(int(p) for p in positions)
    if not out or min(out) < 0:
        raise Phi2Error("positions must be a non-empty list of integers >= 0 (None: every position)")
    if len(set(out)) != len(out):
        raise Phi2Error("positions must not repeat")
    return out


def _rows(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    elif a.ndim == 3:  # head_out as (n, n_head, head_dim)
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2 or a.size == 0:
        raise Phi2Error(f"{name}: values must be a vector or (n, width) rows")
    if not np.isfinite(a).all():
        raise Phi2Error(f"{name}: values hold NaN or infinity")
    return np.ascontiguousarray(a)


def add(name: str, vector, positions=None, scale: float = 1.0) -> Intervention:
    """x += scale * vector at ``name`` (one vector for every position, or one row per position)."""
    return Intervention(name, "add", _rows(np.asarray(vector, np.float32) * np.float32(scale), name), _positions(positions))


def steer(vector, layers: Union[int, Sequence[int]], positions=None, scale: float = 1.0) -> List[Intervention]:
    """Add ``scale * vector`` to the residual stream entering each of ``layers`` (resid_pre.L)."""
    layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not layers:
        raise Phi2Error("steer needs at least one layer")
    return [add(f"resid_pre.{int(layer)}", vector, positions, scale) for layer in layers]


def patch(name: str, values, positions=None, heads: Optional[Sequence[int]] = None,
          n_head: Optional[int] = None) -> Intervention:
    """Replace the activation at ``name`` with stored ``values``: one row per position in
    ``positions``, or rows for positions 0..len(values)-1 when ``positions`` is None. ``heads``
    (head_out only, with ``n_head``) replaces only those heads' outputs."""
    rows = _rows(values, name)
    pos = _positions(range(rows.shape[0]) if positions is None else positions)
    cols = None
    if heads is not None:
        if not name.startswith("head_out.") or not n_head:
            raise Phi2Error("patch(heads=...) applies to head_out.L and needs n_head")
        cols = _head_mask(rows.shape[1], n_head, heads)
    return Intervention(name, "set", rows, pos, cols)


def scale(name: str, factor, positions=None) -> Intervention:
    """x *= factor at ``name``: a number, or one factor per column (e.g. 0 for chosen MLP neurons)."""
    return Intervention(name, "mul", _rows(np.atleast_1d(np.asarray(factor, np.float32)), name), _positions(positions))


def scale_heads(layer: int, heads: Sequence[int], factor: float, n_head: int, head_dim: int,
                positions=None) -> Intervention:
    """Multiply the outputs of ``heads`` in ``layer`` by ``factor`` before `dense` (0: ablation)."""
    mask = _head_mask(n_head * head_dim, n_head, heads)
    row = np.where(mask, np.float32(factor), np.float32(1.0)).astype(np.float32)
    return Intervention(f"head_out.{int(layer)}", "mul", row[None], _positions(positions))


def _head_mask(width: int, n_head: int, heads: Sequence[int]) -> np.ndarray:
    heads = [int(h) for h in heads]
    if not heads or min(heads) < 0 or max(heads) >= n_head:
        raise Phi2Error(f"heads must be a non-empty list in 0..{n_head - 1}, got {heads}")
    mask = np.zeros((n_head, width // n_head), bool)
    mask[heads] = True
    return mask.reshape(-1)


def expand_scalar(iv: Intervention, c: "PhiConfig") -> Intervention:
    """A one-column "mul" row (a plain factor) widened to the point's width."""
    point, _layer = parse_name(iv.name, c.n_layer)[0]
    width = point_width(point, c)
    if iv.op == "mul" and iv.rows.shape[1] == 1 and width != 1:
        return Intervention(iv.name, iv.op, np.repeat(iv.rows, width, axis=1), iv.positions, iv.cols)
    return iv


# --- captured activations ------------------------------------------------------------------------
class ActivationCache(dict):
    """Captured activations by canonical name (NumPy float32 arrays owned by this cache), the
    ``tokens`` they came from and, when asked for, ``logits`` (n, n_vocab)."""

    def __init__(self, arrays: Dict[str, np.ndarray], tokens: List[int], logits: Optional[np.ndarray]):
        super().__init__(arrays)
        self.tokens = tokens
        self.logits = logits

    def stack(self, point: str) -> np.ndarray:
        """One point across the captured layers, in layer order: (n_layers_captured, ...)."""
        if point == "ln_final" or point not in POINT_ID:
            raise Phi2Error(f"stack takes a per-layer point ({', '.join(POINTS[:-1])}), got {point!r}")
        keys = sorted((k for k in self if k.split(".")[0] == point), key=lambda k: int(k.split(".")[1]))
        if not keys:
            raise Phi2Error(f"the cache holds no {point}.L activations")
        return np.stack([self[k] for k in keys])

    def torch(self, name: str):
        """``name`` as a torch tensor sharing this array's memory (DLPack, no copy)."""
        import torch

        return torch.from_dlpack(self[name])

    def to_torch(self) -> dict:
        """Every capture as a torch tensor sharing memory (DLPack, no copy)."""
        return {k: self.torch(k) for k in self}


def unpack(arrays: Dict[str, np.ndarray], logits: Optional[np.ndarray], tokens: Sequence[Sequence[int]]
           ) -> List[ActivationCache]:
    """Split captures of packed sequences into one cache per sequence (views, no copies)."""
    out, row = [], 0
    for ids in tokens:
        n = len(ids)
        part = {}
        for k, a in arrays.items():
            part[k] = a[:, row:row + n, :n] if k.startswith("attn_probs.") else a[row:row + n]
        out.append(ActivationCache(part, list(ids), None if logits is None else logits[row:row + n]))
        row += n
    return out


# --- logit lens and direct logit attribution -----------------------------------------------------
def logit_lens(model: "Model", cache: ActivationCache, positions=None) -> np.ndarray:
    """Logits read off the residual stream before each layer and after the last:
    (n_layer + 1, n_positions, n_vocab), by the final LayerNorm and lm_head of ``model``. Row 0 is
    the embeddings (resid_pre.0), row L+1 resid_post.L. Needs resid_pre.0 and resid_post.* in the cache."""
    c = model.config
    names = ["resid_pre.0"] + [f"resid_post.{i}" for i in range(c.n_layer)]
    missing = [n for n in names if n not in cache]
    if missing:
        raise Phi2Error(f"logit_lens needs {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} in the cache")
    pos = np.arange(len(cache.tokens)) if positions is None else np.atleast_1d(np.asarray(positions))
    x = np.stack([cache[n][pos] for n in names])                       # (L + 1, P, d)
    return model.unembed(x.reshape(-1, c.n_embd)).reshape(len(names), len(pos), c.n_vocab)


def direct_logit_attribution(model: "Model", cache: ActivationCache, tokens: Sequence[int],
                             position: int = -1, heads: bool = False) -> Dict[str, np.ndarray]:
    """Each component's direct contribution to the logits of ``tokens`` at ``position``.

    The final LayerNorm is linearised at the actual residual stream r: its scale
    s = sqrt(var(r) + eps) is frozen, so a component c contributes ((c - mean(c)) / s * g) . W_U[t].
    Components: "embed", "attn_out.L" (or "head.L.H" per head and "attn_bias.L" when ``heads``),
    "mlp_out.L", and "bias" (the LayerNorm bias and lm_head bias). They add up to the logits, up to
    rounding, when no residual edit was active. Needs resid_post of the last layer, resid_pre.0,
    attn_out.* (head_out.* when ``heads``) and mlp_out.* in the cache."""
    c = model.config
    w = model.weights
    t = np.asarray(list(tokens), dtype=np.int64)
    if t.ndim != 1 or t.size == 0 or t.min() < 0 or t.max() >= c.n_vocab:
        raise Phi2Error(f"tokens must be a non-empty list of ids in 0..{c.n_vocab - 1}")
    need = ["resid_pre.0", f"resid_post.{c.n_layer - 1}"] + [f"mlp_out.{i}" for i in range(c.n_layer)]
    need += [f"{'head_out' if heads else 'attn_out'}.{i}" for i in range(c.n_layer)]
    missing = [n for n in need if n not in cache]
    if missing:
        raise Phi2Error(f"direct_logit_attribution needs {', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''} in the cache")
    p = int(position)
    r = cache[f"resid_post.{c.n_layer - 1}"][p].astype(np.float64)
    s = np.sqrt(r.var() + c.norm_eps)
    g = w.vector("output_norm.weight")
    wu = w.rows("output.weight", t).astype(np.float64) * g        # (T, d): g folded into W_U
    contrib = lambda v: wu @ (np.asarray(v, np.float64) - np.mean(v)) / s  # noqa: E731
    out = {"embed": contrib(cache["resid_pre.0"][p])}
    hd = c.head_dim
    for i in range(c.n_layer):
        if heads:
            wo = w.matrix(f"blk.{i}.attn_output.weight")             # (d, d): out = z @ wo.T + b
            z = cache[f"head_out.{i}"][p].reshape(c.n_head, hd)
            for h in range(c.n_head):
                out[f"head.{i}.{h}"] = contrib(wo[:, h * hd:(h + 1) * hd] @ z[h])
            out[f"attn_bias.{i}"] = contrib(w.vector(f"blk.{i}.attn_output.bias"))
        else:
            out[f"attn_out.{i}"] = contrib(cache[f"attn_out.{i}"][p])
        out[f"mlp_out.{i}"] = contrib(cache[f"mlp_out.{i}"][p])
    out["bias"] = w.rows("output.weight", t).astype(np.float64) @ w.vector("output_norm.bias") + \
        w.vector("output.bias")[t]
    return out


class FileWeights:
    """float32 views of a model file's tensors, dequantized on demand by the engine's own code."""

    def __init__(self, model_file):
        self._file = model_file
        self._cache: Dict[str, np.ndarray] = {}

    def _dequantize(self, name: str, raw: np.ndarray) -> np.ndarray:
        from . import _core

        t = self._file.tensors[name]
        return _core.dequantize(np.ascontiguousarray(raw), t.ggml_type, t.shape[-1])

    def vector(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._dequantize(name, self._file.raw(name)).reshape(-1).astype(np.float64)
        return self._cache[name]

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        return self._dequantize(name, self._file.raw(name)[np.asarray(idx)])

    def matrix(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._dequantize(name, self._file.raw(name)).astype(np.float64)
        return self._cache[name]
