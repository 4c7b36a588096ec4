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


def attention(c: PhiConfig, w: dict[str, np.ndarray], i: int, h: np.ndarray) -> np.ndarray:
    T, hd = h.shape[0], c.head_dim
    if f"blk.{i}.attn_qkv.weight" in w:
        q, k, v = np.split(_linear(w, f"blk.{i}.attn_qkv", h), 3, axis=-1)
    else:
        q, k, v = (_linear(w, f"blk.{i}.attn_{x}", h) for x in "qkv")
    q, k, v = (t.reshape(T, c.n_head, hd).transpose(1, 0, 2) for t in (q, k, v))   # (n_head, T, hd)
    q, k = rotary(q, c.n_rot, c.rope_theta), rotary(k, c.n_rot, c.rope_theta)
    scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(hd))                   # (n_head, T, T)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = (p @ v).transpose(1, 0, 2).reshape(T, c.n_embd)
    return _linear(w, f"blk.{i}.attn_output", out)


def reference_hidden_states(config: PhiConfig, weights: dict[str, np.ndarray], ids) -> list[np.ndarray]:
    """The residual stream (len(ids), n_embd) at n_layer + 1 points: the token embeddings, then
    after each layer (before the final LayerNorm)."""
    c, w = config, weights
    x = w["token_embd.weight"][np.asarray(ids, dtype=np.int64)].astype(np.float32)
    out = [x]
    for i in range(c.n_layer):
        h = layer_norm(x, w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.attn_norm.bias"], c.norm_eps)
        mlp = _linear(w, f"blk.{i}.ffn_down", gelu_new(_linear(w, f"blk.{i}.ffn_up", h)))
        x = x + attention(c, w, i, h) + mlp
        out.append(x)
    return out


def reference_logits(config: PhiConfig, weights: dict[str, np.ndarray], ids) -> np.ndarray:
    """Logits (len(ids), n_vocab) for tokens at positions 0..len(ids)-1."""
    c, w = config, weights
    x = reference_hidden_states(c, w, ids)[-1]
    h = layer_norm(x, w["output_norm.weight"], w["output_norm.bias"], c.norm_eps)
    return _linear(w, "output", h).astype(np.float32)


def reference_greedy(config: PhiConfig, weights: dict[str, np.ndarray], ids, n_new: int) -> list[int]:
    """Greedy continuation: the n_new argmax tokens, never an id without a token."""
    seq = [int(t) for t in ids]
    for _ in range(n_new):
        logits = reference_logits(config, weights, seq)[-1]
        logits[N_TOKENIZER_VOCAB:] = -np.inf
        seq.append(int(np.argmax(logits)))
    return seq[len(ids):]
