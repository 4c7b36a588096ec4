"""Phi-2 hyper-parameters, read from HF config.json (either key set) or GGUF metadata."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .errors import ModelFileError

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
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            problems.append("layer_norm_eps and rope_theta must be positive")
        if problems:
            raise ModelFileError(f"{source}: invalid Phi config: {'; '.join(problems)}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "PhiConfig":
        """Accepts the current keys (hidden_size, partial_rotary_factor, rope_theta, ...) and the
        older ones (n_embd, n_layer, n_head, rotary_dim, layer_norm_epsilon, n_positions, ...)."""
        model_type = cfg.get("model_type")
        archs = cfg.get("architectures") or []
        if model_type not in ("phi", "phi-msft", "mixformer-sequential") and not any(
            a in ("PhiForCausalLM", "MixFormerSequentialForCausalLM") for a in archs
        ):
            raise ModelFileError(
                f"{source}: not a Phi-2 config (model_type={model_type!r}, architectures={archs!r})"
            )

        def pick(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            if default is None:
                raise ModelFileError(f"{source}: missing required key {' / '.join(keys)}")
            return default

        try:
            n_embd = int(pick("hidden_size", "n_embd"))
            n_head = int(pick("num_attention_heads", "n_head"))
            if int(pick("num_key_value_heads", "n_head_kv", default=n_head)) != n_head:
                raise ModelFileError(f"{source}: grouped-query attention is not Phi-2")
            head_dim = n_embd // n_head if n_head else 0
            if cfg.get("rotary_dim") is not None:
                n_rot = int(cfg["rotary_dim"])
            else:
                n_rot = int(round(float(pick("partial_rotary_factor", default=0.5)) * head_dim))
            if cfg.get("rope_scaling"):
                raise ModelFileError(f"{source}: rope_scaling is not supported")
            return cls(
                n_vocab=int(pick("vocab_size")),
                n_embd=n_embd,
                n_ff=int(pick("intermediate_size", "n_inner", default=4 * n_embd)),
                n_layer=int(pick("num_hidden_layers", "n_layer")),
                n_head=n_head,
                n_rot=n_rot,
                rope_theta=float(pick("rope_theta", default=10000.0)),
                norm_eps=float(pick("layer_norm_eps", "layer_norm_epsilon", default=1e-5)),
                n_ctx_train=int(pick("max_position_embeddings", "n_positions", default=2048)),
            ).validate(source)
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: malformed value: {e}") from None

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
