"""What `phi2cpu info` says about a model file beyond its header: the file type in llama.cpp's words,
bits per weight, and the memory a loaded model needs at a given context size."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

from .config import PhiConfig

# general.file_type as llama.cpp's tools print it
FILE_TYPE_NAMES = {
    F.ALL_F32: "all F32", F.MOSTLY_F16: "F16", F.MOSTLY_BF16: "BF16",
    F.MOSTLY_Q4_0: "Q4_0", F.MOSTLY_Q4_1: "Q4_1", F.MOSTLY_Q5_0: "Q5_0", F.MOSTLY_Q5_1: "Q5_1",
    F.MOSTLY_Q8_0: "Q8_0",
    F.MOSTLY_Q2_K: "Q2_K - Medium", F.MOSTLY_Q2_K_S: "Q2_K - Small",
    F.MOSTLY_Q3_K_S: "Q3_K - Small", F.MOSTLY_Q3_K_M: "Q3_K - Medium", F.MOSTLY_Q3_K_L: "Q3_K - Large",
    F.MOSTLY_Q4_K_S: "Q4_K - Small", F.MOSTLY_Q4_K_M: "Q4_K - Medium",
    F.MOSTLY_Q5_K_S: "Q5_K - Small", F.MOSTLY_Q5_K_M: "Q5_K - Medium", F.MOSTLY_Q6_K: "Q6_K",
    F.MOSTLY_TQ1_0: "TQ1_0 - 1.69 bpw ternary", F.MOSTLY_TQ2_0: "TQ2_0 - 2.06 bpw ternary",
    F.MOSTLY_IQ2_XXS: "IQ2_XXS - 2.0625 bpw", F.MOSTLY_IQ2_XS: "IQ2_XS - 2.3125 bpw",
    F.MOSTLY_IQ2_S: "IQ2_S - 2.5 bpw", F.MOSTLY_IQ2_M: "IQ2_M - 2.7 bpw",
    F.MOSTLY_IQ3_XS: "IQ3_XS - 3.3 bpw", F.MOSTLY_IQ3_XXS: "IQ3_XXS - 3.0625 bpw",
    F.MOSTLY_IQ1_S: "IQ1_S - 1.5625 bpw", F.MOSTLY_IQ1_M: "IQ1_M - 1.75 bpw",
    F.MOSTLY_IQ4_NL: "IQ4_NL - 4.5 bpw", F.MOSTLY_IQ4_XS: "IQ4_XS - 4.25 bpw",
    F.MOSTLY_IQ3_S: "IQ3_S - 3.4375 bpw", F.MOSTLY_IQ3_M: "IQ3_S mix - 3.66 bpw",
}
# Without general.file_type, llama.cpp names the file after its most common tensor type.
_GUESS = {T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q4_0: F.MOSTLY_Q4_0,
          T.Q4_1: F.MOSTLY_Q4_1, T.Q5_0: F.MOSTLY_Q5_0, T.Q5_1: F.MOSTLY_Q5_1, T.Q8_0: F.MOSTLY_Q8_0,
          T.Q2_K: F.MOSTLY_Q2_K, T.Q3_K: F.MOSTLY_Q3_K_M, T.Q4_K: F.MOSTLY_Q4_K_M,
          T.Q5_K: F.MOSTLY_Q5_K_M, T.Q6_K: F.MOSTLY_Q6_K}

# The engine runs a long prompt in batches of at most this many tokens (kMaxBatch in
# csrc/model/model.cpp); its activation buffers are sized for one batch.
MAX_BATCH = 256


def file_type_name(kv: Mapping[str, Any], tensors: Mapping[str, Any]) -> str:
    ft = kv.get("general.file_type")
    if isinstance(ft, int) and not isinstance(ft, bool):
        guessed = bool(ft & F.GUESSED)
        try:
            name = FILE_TYPE_NAMES[F(ft & ~F.GUESSED)]
        except (ValueError, KeyError):
            return f"unknown (general.file_type {ft})"
        return name + (" (guessed)" if guessed else "")
    counts = Counter(t.ggml_type for t in tensors.values() if len(t.shape) > 1)
    for ggml_type, _ in counts.most_common(1):
        try:
            return FILE_TYPE_NAMES[_GUESS[T(ggml_type)]] + " (guessed)"
        except (ValueError, KeyError):
            break
    return "unknown (no general.file_type)"


@dataclass(frozen=True)
class Memory:
    weights: int       # every tensor's bytes: repacked matrices replace their file pages one for one
    kv_cache: int      # K and V (f16 or f32) for every layer and position of one sequence
    activations: int   # one batch's fp32 activations and its quantized copy for the matmuls
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


KV_BYTES = {"f16": 2, "f32": 4}  # per cached element, by kv_type


def kv_bytes_per_seq(config, n_ctx: int, kv_type: str = "f16") -> int:
    """Bytes of one sequence's full KV cache: keys and values, n_layer x n_ctx x n_embd each."""
    return 2 * config.n_layer * n_ctx * config.n_embd * KV_BYTES[kv_type]


def memory_needed(config: PhiConfig, tensor_bytes: int, n_ctx: int, kv_type: str = "f16") -> Memory:
    """Bytes a loaded model holds at a context of n_ctx tokens with one sequence's cache of kv_type
    (csrc/model: KVCache, Model buffers)."""
    d, ff = config.n_embd, config.n_ff
    kv = kv_bytes_per_seq(config, n_ctx, kv_type)
    batch = min(n_ctx, MAX_BATCH)
    floats = batch * (7 * d + ff) + config.n_vocab   # x h att tmp (d each), qkv (3d), ff; last logits
    # the widest matmul input (ff values a token) quantized for the dot kernels, at most Q8_K's
    # 292 bytes per 256 values, plus its fp32 round trip on the float-GEMM path
    act_quant = batch * (-(-ff // 256) * 292 + ff * 4)
    return Memory(weights=tensor_bytes, kv_cache=kv, activations=floats * 4 + act_quant, n_ctx=n_ctx)


def bits_per_weight(tensor_bytes: int, n_params: int) -> Optional[float]:
    return tensor_bytes * 8 / n_params if n_params else None
