"""The oracle: a plain NumPy float32 Phi-2 forward pass, written to read like the math.

Independent of the C++ runtime: GGUF weights are dequantized with the `gguf` package.
Slow and memory-hungry by design (full causal recompute, float32 weights).
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from .checkpoint import HFCheckpoint
from .config import PhiConfig
from .gguf_io import read_model_file

N_TOKENIZER_VOCAB = 50295  # ids at or above this have no token: never generated


def load_reference_weights(path: str | Path) -> tuple[PhiConfig, dict[str, np.ndarray]]:
    """float32 weights by GGUF name, from a phi2 GGUF file or a Hugging Face checkpoint dir."""
    path = Path(path)
    if path.is_dir():
        ck = HFCheckpoint(path)
        return ck.config, dict(ck)
    mf = read_model_file(path)
    weights = {}
    for name, t in mf.tensors.items():
        w = gguf.quants.dequantize(np.array(mf.raw(name)), gguf.GGMLQuantizationType(t.ggml_type))
        weights[name] = np.asarray(w, np.float32).reshape(t.shape)
    return mf.config, weights


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_new(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * x ** 3)))


def rotary(x: np.ndarray, n_rot: int, theta: float) -> np.ndarray:
    """NeoX rotate-half on the first n_rot dims of each head. x: (n_head, T, head_dim), positions 0..T-1.
    Pairs are (i, i + n_rot/2), rotated by angle pos * theta^(-2i/n_rot)."""
    half = n_rot // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2 / n_rot)
    ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv_freq        # (T, half)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    x1, x2 = x[..., :half], x[..., half:n_rot]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., n_rot:]], axis=-1)


def _linear(w: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def attention(c: PhiConfig, w: dict[str, np.ndarray], i: int, h: np.ndarray, tap=None, kv_type: str = "f32"
              ) -> np.ndarray:
    """Causal self-attention of layer i on h (T, n_embd). tap(name, array) -> array sees the
    probabilities (n_head, T, T), the per-head outputs (T, n_head, head_dim) and the dense output.
    kv_type "f16" rounds the rotated keys and the values to IEEE half, as the engine's f16 cache
    stores them; scores and softmax stay float32."""
    tap = tap or (lambda name, a: a)
    T, hd = h.shape[0], c.head_dim
    if f"blk.{i}.attn_qkv.weight" in w:
        q, k, v = np.split(_linear(w, f"blk.{i}.attn_qkv", h), 3, axis=-1)
    else:
        q, k, v = (_linear(w, f"blk.{i}.attn_{x}", h) for x in "qkv")
    q, k, v = (t.reshape(T, c.n_head, hd).transpose(1, 0, 2) for t in (q, k, v))   # (n_head, T, hd)
    q, k = rotary(q, c.n_rot, c.rope_theta), rotary(k, c.n_rot, c.rope_theta)
    if kv_type == "f16":
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    elif kv_type != "f32":
        raise ValueError(f"kv_type must be 'f16' or 'f32', got {kv_type!r}")
    scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(hd))                   # (n_head, T, T)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = tap(f"attn_probs.{i}", p / p.sum(-1, keepdims=True))
    z = tap(f"head_out.{i}", (p @ v).transpose(1, 0, 2))                            # (T, n_head, hd)
    return tap(f"attn_out.{i}", _linear(w, f"blk.{i}.attn_output", z.reshape(T, c.n_embd)))


def _forward(c: PhiConfig, w: dict[str, np.ndarray], ids, tap, kv_type: str = "f32") -> np.ndarray:
    """The whole network; tap(name, array) -> array sees (and may replace) every named activation
    of phi2cpu.interp's scheme. Returns the logits (len(ids), n_vocab)."""
    x = w["token_embd.weight"][np.asarray(ids, dtype=np.int64)].astype(np.float32)
    for i in range(c.n_layer):
        x = tap(f"resid_pre.{i}", x)
        h = tap(f"ln.{i}", layer_norm(x, w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.attn_norm.bias"], c.norm_eps))
        pre = tap(f"mlp_pre.{i}", _linear(w, f"blk.{i}.ffn_up", h))
        mlp = tap(f"mlp_out.{i}", _linear(w, f"blk.{i}.ffn_down", tap(f"mlp_post.{i}", gelu_new(pre))))
        x = tap(f"resid_post.{i}", x + attention(c, w, i, h, tap, kv_type) + mlp)
    h = tap("ln_final", layer_norm(x, w["output_norm.weight"], w["output_norm.bias"], c.norm_eps))
    return _linear(w, "output", h).astype(np.float32)


def apply_interventions(name: str, a: np.ndarray, interventions) -> np.ndarray:
    """The edits of phi2cpu.interp.Intervention objects at ``name`` on a fresh sequence whose rows
    are positions 0..T-1, written out independently of the engine: add, mul (per column) or set."""
    out = a
    for iv in interventions:
        if iv.name != name:
            continue
        flat = out.reshape(out.shape[0], -1).astype(np.float32, copy=True)
        rows = np.asarray(iv.rows, np.float32)
        pos = range(flat.shape[0]) if iv.positions is None else iv.positions
        for j, p in enumerate(pos):
            if p >= flat.shape[0]:
                continue
            r = rows[0] if rows.shape[0] == 1 else rows[j]
            if iv.op == "add":
                flat[p] = flat[p] + r
            elif iv.op == "mul":
                flat[p] = flat[p] * r
            else:
                cols = np.ones(flat.shape[1], bool) if iv.cols is None else np.asarray(iv.cols, bool)
                flat[p, cols] = r[cols]
        out = flat.reshape(out.shape)
    return out


def reference_run(config: PhiConfig, weights: dict[str, np.ndarray], ids, interventions=(), kv_type: str = "f32"
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(every named activation of phi2cpu.interp's scheme, logits) for a fresh sequence, with
    ``interventions`` (objects with name, op, rows, positions, cols) applied where they name and
    the keys and values rounded as a ``kv_type`` cache stores them (see :func:`attention`)."""
    ivs = [iv for iv in interventions if iv.name.split(".")[0] != "attn_probs"]
    acts: dict[str, np.ndarray] = {}

    def tap(name: str, a: np.ndarray) -> np.ndarray:
        a = apply_interventions(name, a, ivs) if name.split(".")[0] != "attn_probs" else a
        acts[name] = a
        return a

    logits = _forward(config, weights, ids, tap, kv_type)
    return acts, logits


def reference_hidden_states(config: PhiConfig, weights: dict[str, np.ndarray], ids, kv_type: str = "f32"
                            ) -> list[np.ndarray]:
    """The residual stream (len(ids), n_embd) at n_layer + 1 points: the token embeddings, then
    after each layer (before the final LayerNorm)."""
    acts, _ = reference_run(config, weights, ids, kv_type=kv_type)
    return [acts["resid_pre.0"]] + [acts[f"resid_post.{i}"] for i in range(config.n_layer)]


def reference_logits(config: PhiConfig, weights: dict[str, np.ndarray], ids, interventions=(),
                     kv_type: str = "f32") -> np.ndarray:
    """Logits (len(ids), n_vocab) for tokens at positions 0..len(ids)-1."""
    return reference_run(config, weights, ids, interventions, kv_type)[1]


def reference_greedy(config: PhiConfig, weights: dict[str, np.ndarray], ids, n_new: int, interventions=(),
                     kv_type: str = "f32") -> list[int]:
    """Greedy continuation: the n_new argmax tokens, never an id without a token."""
    seq = [int(t) for t in ids]
    for _ in range(n_new):
        logits = reference_logits(config, weights, seq, interventions, kv_type)[-1]
        logits[N_TOKENIZER_VOCAB:] = -np.inf
        seq.append(int(np.argmax(logits)))
    return seq[len(ids):]
