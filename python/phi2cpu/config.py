"""Phi-2 hyper-parameters, read from HF config.json (every source, see hf_config) or GGUF metadata."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .errors import ModelFileError
from .hf_config import read_hf_config

ARCH = "phi2"  # llama.cpp's architecture name, used for GGUF keys


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
        problems = []
        if min(self.n_vocab, self.n_embd, self.n_ff, self.n_layer, self.n_head, self.n_ctx_train) <= 0:
            problems.append("sizes must be positive")
        elif self.n_embd % self.n_head:
            problems.append(f"hidden size {self.n_embd} is not divisible by {self.n_head} heads")
        elif not (0 < self.n_rot <= self.head_dim) or self.n_rot % 2:
            problems.append(f"rotary dims {self.n_rot} must be even and within head_dim {self.head_dim}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            problems.append(f"layer_norm_eps {self.norm_eps} must be positive and finite")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            problems.append(f"rope_theta {self.rope_theta} must be positive and finite")
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
        def get(key: str, default: Any = None) -> Any:
            full = f"{ARCH}.{key}"
            if full in kv:
                return kv[full]
            if default is None:
                raise ModelFileError(f"{source}: missing GGUF key {full}")
            return default

        try:
            n_embd = int(get("embedding_length"))
            n_head = int(get("attention.head_count"))
            if int(get("attention.head_count_kv", n_head)) != n_head:
                raise ModelFileError(f"{source}: grouped-query attention is not Phi-2")
            return cls(
                n_vocab=n_vocab,
                n_embd=n_embd,
                n_ff=int(get("feed_forward_length")),
                n_layer=int(get("block_count")),
                n_head=n_head,
                n_rot=int(get("rope.dimension_count")),
                rope_theta=float(get("rope.freq_base", 10000.0)),
                norm_eps=float(get("attention.layer_norm_epsilon")),
                n_ctx_train=int(get("context_length")),
            ).validate(source)
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: malformed metadata: {e}") from None
