"""Phi-2 hyper-parameters, read from HF config.json (every source, see hf_config) or GGUF metadata."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .errors import ModelFileError
from .hf_config import read_hf_config

ARCH = "phi2"  # llama.cpp's architecture name, used for GGUF keys

# Upper bounds on the sizes a config may declare, checked before anything is sized from them: far
# above any Phi model (Phi-2: 51200 x 2560, 32 layers), far below what would exhaust memory while
# the expected tensors are listed or the caches are allocated.
LIMITS = {"n_vocab": 1 << 21, "n_embd": 1 << 16, "n_ff": 1 << 18, "n_layer": 1024, "n_head": 1024,
          "n_ctx_train": 1 << 20}
_F32_MAX = 3.4028234663852886e38    # the engine computes in float32
_F32_TINY = 1.1754943508222875e-38  # the smallest normal float32


@dataclass(frozen=True)
class PhiConfig:
    n_vocab: int = 51200
    n_embd: int = 2560
    n_ff: int = 10240
    n_layer: int = 32
    n_head: int = 32
    n_rot: int = 32            # rotary dims per head (the first n_rot of head_dim)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    n_ctx_train: int = 2048

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self, source: str = "config") -> "PhiConfig":
        problems = [f"{k} {getattr(self, k)} exceeds the limit {limit}"
                    for k, limit in LIMITS.items() if getattr(self, k) > limit]
        if min(self.n_vocab, self.n_embd, self.n_ff, self.n_layer, self.n_head, self.n_ctx_train) <= 0:
            problems.append("sizes must be positive")
        elif self.n_embd % self.n_head:
            problems.append(f"hidden size {self.n_embd} is not divisible by {self.n_head} heads")
        elif not (0 < self.n_rot <= self.head_dim) or self.n_rot % 2:
            problems.append(f"rotary dims {self.n_rot} must be even and within head_dim {self.head_dim}")
        if not (math.isfinite(self.norm_eps) and _F32_TINY <= self.norm_eps <= _F32_MAX):
            problems.append(f"layer_norm_eps {self.norm_eps} must be positive and finite (a normal float32)")
        # rotary frequencies are theta^(-2i/d): below 1 they grow instead of falling off
        if not (math.isfinite(self.rope_theta) and 1.0 <= self.rope_theta <= _F32_MAX):
            problems.append(f"rope_theta {self.rope_theta} must be positive and finite (1 or more, a float32)")
        if problems:
            raise ModelFileError(f"{source}: invalid Phi config: {'; '.join(problems)}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "PhiConfig":
        """From a config.json as transformers 4.x/5.x or Microsoft's remote code (phi-msft,
        mixformer-sequential) writes it; see hf_config for what each source's keys mean."""
        return cls(**read_hf_config(cfg, source)).validate(source)

    def to_gguf_kv(self) -> dict[str, Any]:
        """llama.cpp's phi2 metadata keys (values; types are chosen by the writer)."""
        return {
            f"{ARCH}.context_length": self.n_ctx_train,
            f"{ARCH}.embedding_length": self.n_embd,
            f"{ARCH}.feed_forward_length": self.n_ff,
            f"{ARCH}.block_count": self.n_layer,
            f"{ARCH}.attention.head_count": self.n_head,
            f"{ARCH}.attention.head_count_kv": self.n_head,
            f"{ARCH}.attention.layer_norm_epsilon": self.norm_eps,
            f"{ARCH}.rope.dimension_count": self.n_rot,
            f"{ARCH}.rope.freq_base": self.rope_theta,
        }

    @classmethod
    def from_gguf_kv(cls, kv: Mapping[str, Any], n_vocab: int, source: str) -> "PhiConfig":
        """From llama.cpp's phi2 metadata keys; every value's type is checked, naming its key."""
        def get(key: str, integer: bool, default: Any = None) -> Any:
            full = f"{ARCH}.{key}"
            v = kv.get(full, default)
            if v is None:
                raise ModelFileError(f"{source}: missing GGUF key {full}")
            # bool is an int in Python; a float that holds an integer (not inf or NaN) is accepted
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    (integer and isinstance(v, float) and not v.is_integer()):
                shown = repr(v) if len(repr(v)) <= 40 else f"a {type(v).__name__}"
                raise ModelFileError(f"{source}: GGUF key {full} must be {'an integer' if integer else 'a number'}, "
                                     f"not {shown}")
            return int(v) if integer else float(v)

        n_head = get("attention.head_count", True)
        if get("attention.head_count_kv", True, n_head) != n_head:
            raise ModelFileError(f"{source}: grouped-query attention is not Phi-2")
        return cls(
            n_vocab=n_vocab,
            n_embd=get("embedding_length", True),
            n_ff=get("feed_forward_length", True),
            n_layer=get("block_count", True),
            n_head=n_head,
            n_rot=get("rope.dimension_count", True),
            rope_theta=get("rope.freq_base", False, 10000.0),
            norm_eps=get("attention.layer_norm_epsilon", False),
            n_ctx_train=get("context_length", True),
        ).validate(source)
