"""config.json as each source writes it, read into PhiConfig's fields.

Sources, told apart by model_type:
- "phi": transformers 4.x (partial_rotary_factor, rope_theta and rope_scaling at the top level)
  and 5.x (a `rope_parameters` dict with rope_type, rope_theta and partial_rotary_factor).
- "phi-msft": Microsoft's remote-code PhiConfig (n_embd, n_head, n_head_kv, n_inner, rotary_dim, ...);
  its first releases said "phi", told apart from transformers' "phi" by n_embd without hidden_size.
- "mixformer-sequential": the older remote code; the same n_* keys plus an `architecture` block spec.

Every value that changes the math comes from the file, or from the source's own rule (remote
code: n_inner null means 4 * n_embd, rotary_dim is capped at head_dim, the vocabulary is padded
to pad_vocab_size_multiple, the rotary base is 10000). A library default is used only where it
equals Phi-2's own value; otherwise the key is required. Settings the engine does not implement
are refused, and two spellings of one setting that disagree are an error.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import ModelFileError

GELU = "gelu_new"        # Phi-2's activation: the tanh approximation of GELU
THETA = 10000.0          # Phi-2's rotary base; the remote code has it built in
_REQUIRED = object()
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}

# Mixformer block spec keys: math ones are checked; these only pick an implementation.
_MIXER_IMPL = {"dropout", "fused_dense", "flash_attn", "cutlass_attn", "flash_rotary", "checkpointing",
               "return_residual", "raise_on_missing", "device", "dtype"}
_MIXER_MATH = {"mixer_cls", "rotary_dim", "n_head", "head_dim", "bias", "causal", "softmax_scale",
               "rotary_emb_scale_base"}
_MLP_KEYS = {"mlp_cls", "n_inner", "act_fn", "raise_on_missing"}


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN is one value here; validate() refuses it with its name


class _Reader:
    """Typed look-ups in one config dict; every error names the file and the key."""

    def __init__(self, cfg: Mapping[str, Any], source: str, fmt: str):
        self.cfg, self.source, self.fmt = cfg, source, fmt

    def fail(self, msg: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: {msg}")

    def raw(self, key: str) -> Any:
        """`key` may be dotted ("rope_parameters.rope_theta"); None when absent or null."""
        node: Any = self.cfg
        for part in key.split("."):
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    def number(self, key: str, value: Any, integer: bool) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{key} must be a number, not {value!r}")
        if integer:
            if isinstance(value, float) and not value.is_integer():
                raise self.fail(f"{key} must be an integer, not {value!r}")
            return int(value)
        return float(value)

    def pick(self, *keys: str, default: Any = _REQUIRED, integer: bool = True, why: str = "") -> Any:
        """The value of the first of `keys` present; all spellings present must agree.
        `why` says why a missing key has no safe default."""
        found = [(k, self.number(k, v, integer)) for k in keys if (v := self.raw(k)) is not None]
        if found and any(not _same(v, found[0][1]) for _, v in found):
            raise self.fail("conflicting values: " + ", ".join(f"{k}={v!r}" for k, v in found))
        if found:
            return found[0][1]
        if default is _REQUIRED:
            raise self.fail(f"missing key {' / '.join(keys)}" + (f": {why}" if why else ""))
        return default

    def text(self, key: str, default: str) -> str:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(f"{key} must be a string, not {v!r}")
        return v

    def refuse_true(self, key: str, what: str) -> None:
        if self.raw(key):
            raise self.fail(f"{key} is {self.raw(key)!r}: {what} is not part of Phi-2 and phi2cpu does not "
                            "implement it")

    def refuse_activation(self, key: str, act: str) -> None:
        if act != GELU:
            raise self.fail(f"{key} is {act!r}: phi2cpu implements only Phi-2's {GELU!r} activation")


def source_format(cfg: Mapping[str, Any], source: str) -> str:
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    remote_keys = "n_embd" in cfg and "hidden_size" not in cfg
    if model_type == "phi":  # also the remote code's own name before it became phi-msft
        return "phi-msft" if remote_keys else "phi"
    if model_type in ("phi-msft", "mixformer-sequential"):
        return model_type
    if model_type is None and "MixFormerSequentialForCausalLM" in archs:
        return "mixformer-sequential"
    if model_type is None and "PhiForCausalLM" in archs:  # both transformers and phi-msft use this class name
        return "phi-msft" if remote_keys else "phi"
    raise ModelFileError(f"{source}: not a Phi-2 config (model_type={model_type!r}, architectures={archs!r})")


def read_hf_config(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """PhiConfig's fields from a config.json dict, or ModelFileError naming what is wrong."""
    if not isinstance(cfg, Mapping):
        raise ModelFileError(f"{source}: config.json must hold a JSON object")
    fmt = source_format(cfg, source)
    r = _Reader(cfg, source, fmt)
    fields = _transformers(r) if fmt == "phi" else _remote_code(r)
    _cross_check(r, fields)
    r.refuse_true("tie_word_embeddings", "an output layer tied to the embedding matrix (Phi-2 has its own lm_head)")
    return fields


def _transformers(r: _Reader) -> dict[str, Any]:
    n_embd = r.pick("hidden_size", why="transformers' default 2048 is not Phi-2's 2560")
    n_head = r.pick("num_attention_heads", default=32)
    if r.pick("num_key_value_heads", default=n_head) != n_head:
        raise r.fail(f"num_key_value_heads={r.raw('num_key_value_heads')} with {n_head} heads is grouped-query "
                     "attention, which Phi-2 does not use and phi2cpu does not implement")
    head_dim = n_embd // n_head if n_head > 0 else 0
    if r.raw("head_dim") is not None and r.pick("head_dim") != head_dim:
        raise r.fail(f"head_dim={r.raw('head_dim')} differs from hidden_size / num_attention_heads = {head_dim}; "
                     "phi2cpu does not implement that")
    if r.raw("rope_scaling") is not None:
        raise r.fail(f"rope_scaling={r.raw('rope_scaling')!r}: RoPE scaling is not part of Phi-2 and phi2cpu "
                     "does not implement it")
    rope = r.raw("rope_parameters")
    if rope is not None:
        if not isinstance(rope, Mapping):
            raise r.fail(f"rope_parameters must be an object, not {rope!r}")
        rope_type = {r.text(f"rope_parameters.{k}", "default") for k in ("rope_type", "type") if k in rope}
        if len(rope_type) > 1 or rope_type - {"default"}:
            raise r.fail(f"rope_parameters rope_type {' / '.join(sorted(rope_type))}: only the default RoPE "
                         "(Phi-2's) is implemented")
        extra = sorted(set(rope) - _ROPE_KEYS)
        if extra:
            raise r.fail(f"rope_parameters.{extra[0]}: RoPE scaling options are not part of Phi-2 and phi2cpu "
                         "does not implement them")
    factor = r.pick("rope_parameters.partial_rotary_factor", "partial_rotary_factor", integer=False,
                    why="it sets the rotary dims per head, and transformers' default 0.5 is not Phi-2's 0.4")
    if not (0.0 < factor <= 1.0):
        raise r.fail(f"partial_rotary_factor={factor!r} must be in (0, 1]")
    act = r.text("hidden_act", GELU)
    r.refuse_activation("hidden_act", act)
    r.refuse_true("qk_layernorm", "LayerNorm on queries and keys")
    return dict(
        n_vocab=r.pick("vocab_size", default=51200),
        n_embd=n_embd,
        n_ff=r.pick("intermediate_size", why="transformers' default 8192 is not Phi-2's 10240"),
        n_layer=r.pick("num_hidden_layers", why="transformers' default 24 is not Phi-2's 32"),
        n_head=n_head,
        n_rot=int(head_dim * factor),  # transformers truncates, as here
        rope_theta=r.pick("rope_parameters.rope_theta", "rope_theta", default=THETA, integer=False),
        norm_eps=r.pick("layer_norm_eps", default=1e-5, integer=False),
        n_ctx_train=r.pick("max_position_embeddings", default=2048),
    )


def _remote_code(r: _Reader) -> dict[str, Any]:
    """phi-msft and mixformer-sequential; the hidden_size-style names are their attribute_map aliases."""
    n_embd = r.pick("n_embd", "hidden_size", why="the remote code's default 1024 is not Phi-2's 2560")
    n_head = r.pick("n_head", "num_attention_heads", why="the remote code's default 16 is not Phi-2's 32")
    arch = r.raw("architecture") if r.raw("architecture") is not None else r.raw("blocks")
    listed = r.fmt == "mixformer-sequential" and isinstance(arch, list)
    n_layer = r.pick("n_layer", "num_hidden_layers", default=0 if listed else _REQUIRED,  # a list gives the count
                     why="the remote code's default 20 is not Phi-2's 32")
    multiple = r.pick("pad_vocab_size_multiple", default=64)
    vocab = r.pick("vocab_size", why="the remote code's default 50304 is not Phi-2's 51200")
    if multiple <= 0:
        raise r.fail(f"pad_vocab_size_multiple={multiple} must be positive")
    head_dim = n_embd // n_head if n_head > 0 else 0
    if "rotary_dim" in r.cfg and r.cfg["rotary_dim"] is None:
        raise r.fail("rotary_dim is null; the remote code needs a number (Phi-2: 32)")
    n_rot = min(r.pick("rotary_dim", default=32), head_dim)  # the config class caps it at head_dim
    n_inner = r.pick("n_inner", default=4 * n_embd)          # null means 4 * n_embd there
    act = r.text("activation_function", GELU)
    if r.fmt == "phi-msft":
        if r.pick("n_head_kv", default=n_head) != n_head:
            raise r.fail(f"n_head_kv={r.raw('n_head_kv')} with {n_head} heads is grouped-query attention, which "
                         "Phi-2 does not use and phi2cpu does not implement")
    else:
        embd = {r.text(k, "default") for k in ("embd_layer", "input_emb_layer") if r.raw(k) is not None}
        if embd - {"default"}:
            raise r.fail(f"embd_layer {' / '.join(sorted(embd))}: only the default token embedding is implemented")
        n_layer, n_rot, n_inner, act = _mixformer_blocks(r, n_layer, n_head, head_dim, n_rot, n_inner, act)
    r.refuse_activation("activation_function", act)
    return dict(
        n_vocab=math.ceil(vocab / multiple) * multiple,
        n_embd=n_embd,
        n_ff=n_inner,
        n_layer=n_layer,
        n_head=n_head,
        n_rot=n_rot,
        rope_theta=THETA,
        norm_eps=r.pick("layer_norm_epsilon", default=1e-5, integer=False),
        n_ctx_train=r.pick("n_positions", "max_position_embeddings", default=2048),
    )


def _mixformer_blocks(r: _Reader, n_layer: int, n_head: int, head_dim: int, n_rot: int, n_inner: int,
                      act: str) -> tuple[int, int, int, str]:
    """(layers, rotary dims, MLP width, activation) from the block spec: one dict for every layer,
    or a list whose length is then the layer count. All blocks must be alike."""
    arch, blocks = r.raw("architecture"), r.raw("blocks")
    if arch is not None and blocks is not None and arch != blocks:
        raise r.fail("conflicting values: architecture and blocks differ")
    arch = arch if arch is not None else blocks
    if not isinstance(arch, list):
        return n_layer, *_mixformer_block(r, "architecture", arch, n_head, head_dim, n_rot, n_inner, act)
    if not arch:
        raise r.fail("architecture is an empty list: no layers")
    seen = {_mixformer_block(r, f"architecture[{i}]", spec, n_head, head_dim, n_rot, n_inner, act)
            for i, spec in enumerate(arch)}
    if len(seen) > 1:
        raise r.fail("the blocks in architecture differ (rotary dims, MLP width or activation); phi2cpu runs "
                     "identical layers")
    return len(arch), *seen.pop()


def _mixformer_block(r: _Reader, where: str, spec: Any, n_head: int, head_dim: int, n_rot: int, n_inner: int,
                     act: str) -> tuple[int, int, str]:
    """One block spec checked for what phi2cpu implements: a parallel block of multi-head attention
    and a two-layer MLP. Its mixer and mlp options override the config's rotary_dim, n_inner and
    activation_function."""
    spec = spec or {}
    if not isinstance(spec, Mapping):
        raise r.fail(f"{where} must be an object, not {spec!r}")
    extra = sorted(set(spec) - {"block_cls", "path", "mixer", "mlp"})
    if extra:
        raise r.fail(f"{where}.{extra[0]}: unknown block option")
    for k in ("block_cls", "path"):
        if spec.get(k) not in (None, "parallel"):
            raise r.fail(f"{where}.{k} is {spec[k]!r}: only Phi-2's parallel block (attention and MLP reading "
                         "one LayerNorm) is implemented")
    mixer, mlp = spec.get("mixer") or {}, spec.get("mlp") or {}
    if not isinstance(mixer, Mapping) or not isinstance(mlp, Mapping):
        raise r.fail(f"{where}: mixer and mlp must be objects")
    extra = [f"mixer.{k}" for k in sorted(set(mixer) - _MIXER_IMPL - _MIXER_MATH)]
    extra += [f"mlp.{k}" for k in sorted(set(mlp) - _MLP_KEYS)]
    if extra:
        raise r.fail(f"{where}.{extra[0]}: unknown option")

    def num(key: str, value: Any, integer: bool = True) -> Any:
        return None if value is None else r.number(f"{where}.{key}", value, integer)

    if mixer.get("mixer_cls", "mha") != "mha":
        raise r.fail(f"{where}.mixer.mixer_cls is {mixer['mixer_cls']!r}: only multi-head attention is implemented")
    for k, want in (("n_head", n_head), ("head_dim", head_dim)):
        if num(f"mixer.{k}", mixer.get(k)) not in (None, want):
            raise r.fail(f"{where}.mixer.{k}={mixer[k]!r} differs from the model's {want}; not implemented")
    for k, what in (("bias", "projections without bias"), ("causal", "non-causal attention")):
        if mixer.get(k, True) is not True:
            raise r.fail(f"{where}.mixer.{k} is {mixer[k]!r}: {what} is not implemented")
    if mixer.get("softmax_scale") is not None:
        raise r.fail(f"{where}.mixer.softmax_scale={mixer['softmax_scale']!r}: only 1/sqrt(head_dim) is "
                     "implemented")
    scale_base = num("mixer.rotary_emb_scale_base", mixer.get("rotary_emb_scale_base"), integer=False)
    if scale_base is not None and scale_base > 0:  # the remote code turns xPos on only above 0
        raise r.fail(f"{where}.mixer.rotary_emb_scale_base={scale_base!r}: rotary scaling (xPos) is not "
                     "implemented")
    if mlp.get("mlp_cls", "mlp") not in ("mlp", "fused_mlp"):
        raise r.fail(f"{where}.mlp.mlp_cls is {mlp['mlp_cls']!r}: only the two-layer MLP is implemented")
    if mlp.get("act_fn") is not None:
        r.refuse_activation(f"{where}.mlp.act_fn", mlp["act_fn"])
    rot, inner = num("mixer.rotary_dim", mixer.get("rotary_dim")), num("mlp.n_inner", mlp.get("n_inner"))
    return (n_rot if rot is None else rot, n_inner if inner is None else inner, mlp.get("act_fn") or act)


def _cross_check(r: _Reader, f: dict[str, Any]) -> None:
    """Keys another source would read must agree with what this source's keys gave."""
    head_dim = f["n_embd"] // f["n_head"] if f["n_head"] > 0 else 0
    if r.fmt == "phi":
        implied = {"n_embd": ("n_embd",), "n_head": ("n_head", "n_head_kv"), "n_layer": ("n_layer",),
                   "n_ff": ("n_inner",), "n_rot": ("rotary_dim",), "norm_eps": ("layer_norm_epsilon",),
                   "n_ctx_train": ("n_positions",)}
        acts = ("activation_function",)
        factor_keys: tuple[str, ...] = ()
    else:
        implied = {"n_head": ("num_key_value_heads",) + (("n_head_kv",) if r.fmt != "phi-msft" else ()),
                   "n_ff": ("intermediate_size",), "rope_theta": ("rope_theta", "rope_parameters.rope_theta"),
                   "norm_eps": ("layer_norm_eps",)}
        acts = ("hidden_act",)
        factor_keys = ("partial_rotary_factor", "rope_parameters.partial_rotary_factor")
        for key in ("rope_scaling", "rope_parameters.rope_type", "rope_parameters.type", "qk_layernorm"):
            if r.raw(key) not in (None, False, "default"):
                raise r.fail(f"{key}={r.raw(key)!r} in a {r.fmt} config: not part of Phi-2, not implemented")
        rope = r.raw("rope_parameters")
        extra = sorted(set(rope) - _ROPE_KEYS) if isinstance(rope, Mapping) else []
        if extra:
            raise r.fail(f"rope_parameters.{extra[0]} in a {r.fmt} config: not part of Phi-2, not implemented")
    for field, keys in implied.items():
        for key in keys:
            v = r.raw(key)
            if v is not None and not _same(r.number(key, v, isinstance(f[field], int)), f[field]):
                raise r.fail(f"conflicting values: {key}={v!r}, but the {r.fmt} keys give {field} = {f[field]!r}")
    for key in factor_keys:
        v = r.raw(key)
        if v is not None and int(head_dim * r.number(key, v, False)) != f["n_rot"]:
            raise r.fail(f"conflicting values: {key}={v!r} gives {int(head_dim * v)} rotary dims, but the {r.fmt} "
                         f"keys give {f['n_rot']}")
    for key in acts:
        if r.raw(key) is not None:
            r.refuse_activation(key, r.text(key, GELU))
