"""GGUF model files ("phi2" architecture, llama.cpp tensor names and block layouts).

Written with the `gguf` package's streaming writer. Read by the small header parser below:
`gguf.GGUFReader` builds numpy views per vocabulary string and takes seconds on Phi-2's
100k tokens + merges (the engine decodes those string arrays in one call). Besides llama.cpp's keys we store the exact tokenizer.json text
(`phi2cpu.tokenizer_json`) and the quantization recipe (`phi2cpu.quant_recipe`)."""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import TokenType

from . import _core
from .checkpoint import expected_gguf_shapes
from .config import ARCH, PhiConfig
from .errors import ModelFileError

# ggml type id -> (name, elements per block, bytes per block)
SUPPORTED_TYPES = {T.F32: ("F32", 1, 4), T.F16: ("F16", 1, 2), T.Q8_0: ("Q8_0", 32, 34), T.Q4_0: ("Q4_0", 32, 18),
                   T.Q4_K: ("Q4_K", 256, 144), T.Q5_K: ("Q5_K", 256, 176), T.Q6_K: ("Q6_K", 256, 210)}
FLOAT_TYPES = (T.F32, T.F16)
KEY_TOKENIZER_JSON = "phi2cpu.tokenizer_json"
KEY_RECIPE = "phi2cpu.quant_recipe"
_VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")


def type_name(ggml_type: int) -> str:
    try:
        return T(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    _, block, size = SUPPORTED_TYPES[T(ggml_type)]
    if shape[-1] % block:
        raise ValueError(f"row length {shape[-1]} is not a multiple of the {type_name(ggml_type)} block ({block})")
    return math.prod(shape) // block * size


# ----------------------------------------------------------------------------- vocabulary

@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    tokenizer_json: str | None = None
    eos_id: int = 50256


def vocab_from_tokenizer_json(text: str, n_vocab: int, source: str = "tokenizer.json") -> Vocab:
    """llama.cpp's gpt2-style vocabulary: every id below n_vocab gets a token; ids the tokenizer
    does not use become '[PAD<id>]' user-defined tokens."""
    try:
        tj = json.loads(text)
        model = tj["model"]
        id_to_tok = {int(i): t for t, i in model["vocab"].items()}
        added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFileError(f"{source}: not a BPE tokenizer.json ({e.__class__.__name__}: {e})") from None
    if model.get("type") != "BPE":
        raise ModelFileError(f"{source}: tokenizer model is {model.get('type')!r}, expected BPE")
    id_to_tok.update({i: a["content"] for i, a in added.items()})
    if max(id_to_tok) >= n_vocab:
        raise ModelFileError(f"{source}: token id {max(id_to_tok)} does not fit the model's {n_vocab} embeddings")
    tokens, types = [], []
    for i in range(n_vocab):
        tokens.append(id_to_tok.get(i, f"[PAD{i}]"))
        if i in added:
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL if i in id_to_tok else TokenType.USER_DEFINED)
    eos = next((i for i, a in added.items() if a["content"] == "<|endoftext|>"), 50256)
    return Vocab(tokens, [int(t) for t in types], merges, text, eos)


def _load_vocab(tokenizer: Union[str, Path, Vocab], n_vocab: int) -> Vocab:
    if isinstance(tokenizer, Vocab):
        return tokenizer
    if isinstance(tokenizer, str) and tokenizer.lstrip().startswith("{"):
        return vocab_from_tokenizer_json(tokenizer, n_vocab)
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read tokenizer ({e.strerror})") from None
    return vocab_from_tokenizer_json(text, n_vocab, str(path))


# ----------------------------------------------------------------------------- writing

TensorData = Union[np.ndarray, Callable[[], np.ndarray]]


def write_gguf(out_path: str | Path, config: PhiConfig,
               tensors: Iterable[tuple[str, TensorData, int, tuple[int, ...]]],
               tokenizer: Union[str, Path, Vocab, None], file_type: int, recipe: dict[str, Any],
               name: str = "phi-2", phi2cpu_keys: bool = True) -> Path:
    """Write a phi2 GGUF. `tensors` yields (name, data, ggml_type, numpy_shape); data is the
    tensor's bytes (uint8 blocks, or an f32/f16 array for F32/F16), or a zero-argument callable
    returning them, called one tensor at a time while writing. `tokenizer` is a tokenizer.json
    path/directory/text or a Vocab. With `phi2cpu_keys` false neither the recipe nor the
    tokenizer.json text is stored: the file holds only llama.cpp's keys, as its converter writes
    them. Writes to a temporary file and renames it on success."""
    out = Path(out_path)
    plan = list(tensors)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(tmp, ARCH)
    try:
        w.add_name(name)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, val in config.to_gguf_kv().items():
            (w.add_float32 if isinstance(val, float) else w.add_uint32)(key, val)
        if tokenizer is not None:
            vocab = _load_vocab(tokenizer, config.n_vocab)
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("phi-2")
            w.add_token_list(vocab.tokens)
            w.add_token_types(vocab.token_types)
            w.add_token_merges(vocab.merges)
            w.add_bos_token_id(vocab.eos_id)
            w.add_eos_token_id(vocab.eos_id)
            w.add_unk_token_id(vocab.eos_id)
            w.add_add_bos_token(False)
            if vocab.tokenizer_json and phi2cpu_keys:
                w.add_string(KEY_TOKENIZER_JSON, vocab.tokenizer_json)
        if phi2cpu_keys:
            w.add_string(KEY_RECIPE, json.dumps(recipe, sort_keys=True))
        for tname, _, ttype, shape in plan:
            w.add_tensor_info(tname, tuple(shape), np.dtype(np.float32), tensor_nbytes(ttype, tuple(shape)),
                              raw_dtype=T(ttype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for tname, data, ttype, shape in plan:
            arr = np.ascontiguousarray(data() if callable(data) else data)
            if arr.nbytes != tensor_nbytes(ttype, tuple(shape)):
                raise ValueError(f"{tname}: {arr.nbytes} bytes given for {type_name(ttype)} {tuple(shape)}")
            w.write_tensor_data(arr)
            del arr
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]   # numpy order: rows first
    offset: int              # absolute byte offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


@dataclass
class ModelFile:
    path: Path
    config: PhiConfig
    tensors: dict[str, TensorInfo]
    kv: dict[str, Any]
    tokens: list[str] = field(repr=False)
    token_types: list[int] = field(repr=False)
    merges: list[str] = field(repr=False)
    tokenizer_json: str | None = field(repr=False)
    recipe: dict[str, Any] | None
    file_size: int

    @property
    def fused_qkv(self) -> bool:
        return "blk.0.attn_qkv.weight" in self.tensors

    def raw(self, name: str) -> np.ndarray:
        """A read-only uint8 map of one tensor's bytes, shaped (rows..., row_bytes)."""
        t = self.tensors[name]
        m = np.memmap(self.path, np.uint8, "r", offset=t.offset, shape=(t.nbytes,))
        return m.reshape(*t.shape[:-1], -1)


def _expected(config: PhiConfig, tensors: dict[str, TensorInfo]) -> dict[str, tuple[int, ...]]:
    """Required shapes; per block either fused attn_qkv or llama.cpp's separate attn_q/k/v."""
    shapes = expected_gguf_shapes(config)
    n = config.n_embd
    for i in range(config.n_layer):
        if f"blk.{i}.attn_qkv.weight" not in tensors and f"blk.{i}.attn_q.weight" in tensors:
            for p in ("weight", "bias"):
                del shapes[f"blk.{i}.attn_qkv.{p}"]
                for x in "qkv":
                    shapes[f"blk.{i}.attn_{x}.{p}"] = (n, n) if p == "weight" else (n,)
    return shapes


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Little-endian reads from the header bytes; running off the end raises struct.error."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise struct.error(f"string of {n} bytes runs past the end of the file")
        s = str(self.buf[self.pos:self.pos + n], "utf-8")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            if itype == _STRING:
                strings, end = _core.gguf_strings(self.buf, self.pos, n)
                if end < 0:
                    raise struct.error(f"array of {n} strings runs past the end of the file")
                self.pos = end
                return strings
            if itype in _SCALARS and itype != 7:
                if self.pos + n * struct.calcsize(_SCALARS[itype]) > len(self.buf):
                    raise struct.error(f"array of {n} values runs past the end of the file")
                arr = np.frombuffer(self.buf, _SCALARS[itype], count=n, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(itype) for _ in range(n)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.scalar(_SCALARS[vtype])


def _parse_header(buf: memoryview) -> tuple[dict[str, Any], list[tuple[str, int, tuple[int, ...], int]], int]:
    """GGUF v2/v3 header -> (metadata, [(name, ggml_type, numpy_shape, relative offset)], data start)."""
    c = _Cursor(buf)
    c.pos = 4
    version = c.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    kv = {}
    for _ in range(n_kv):
        key = c.string()
        kv[key] = c.value(c.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        dims = [c.scalar("<Q") for _ in range(c.scalar("<I"))]
        infos.append((name, c.scalar("<I"), tuple(reversed(dims)), c.scalar("<Q")))
    align = kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    return kv, infos, -(-c.pos // align) * align


def _nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    try:
        block, size = gguf.GGML_QUANT_SIZES[T(ggml_type)]
    except (ValueError, KeyError):
        return 0
    return math.prod(shape) // block * size


def read_model_file(path: str | Path) -> ModelFile:
    """Parse and validate a phi2 GGUF file's metadata (tensor data stays on disk)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r})")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                buf = memoryview(mm)
                try:
                    kv, infos, data_start = _parse_header(buf)
                finally:
                    buf.release()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror})") from None
    except struct.error:
        raise ModelFileError(f"{path}: truncated GGUF file (metadata ends past the {size}-byte file)") from None
    except (ValueError, UnicodeDecodeError, MemoryError) as e:
        raise ModelFileError(f"{path}: corrupt GGUF file ({e})") from None
    tensors = {n: TensorInfo(n, t, shape, data_start + off, _nbytes(t, shape)) for n, t, shape, off in infos}
    vocab = {k: kv.pop(k) for k in _VOCAB_KEYS if k in kv}

    arch = kv.get("general.architecture")
    if arch != ARCH:
        raise ModelFileError(f"{path} is a {arch!r} model; phi2cpu runs only {ARCH}")
    for t in tensors.values():
        if t.offset + t.nbytes > size:
            raise ModelFileError(f"{path}: truncated: tensor {t.name} ends at byte {t.offset + t.nbytes}, "
                                 f"file has {size}")
    if "token_embd.weight" not in tensors:
        raise ModelFileError(f"{path}: missing tensor token_embd.weight")
    config = PhiConfig.from_gguf_kv(kv, tensors["token_embd.weight"].shape[0], str(path))
    supported = ", ".join(v[0] for v in SUPPORTED_TYPES.values())
    for name, shape in _expected(config, tensors).items():
        t = tensors.get(name)
        if t is None:
            raise ModelFileError(f"{path}: missing tensor {name}")
        if t.shape != shape:
            raise ModelFileError(f"{path}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        if t.ggml_type not in SUPPORTED_TYPES:
            raise ModelFileError(f"{path}: tensor {name} has type {t.type_name}; phi2cpu supports {supported}")
        if len(shape) == 1 and t.ggml_type not in FLOAT_TYPES:
            raise ModelFileError(f"{path}: tensor {name} has type {t.type_name}; norms and biases must be F32 or F16")

    tok_json = kv.pop(KEY_TOKENIZER_JSON, None)
    recipe = kv.get(KEY_RECIPE)
    try:
        recipe = json.loads(recipe) if recipe else None
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: {KEY_RECIPE} is not valid JSON") from None
    return ModelFile(path, config, tensors, kv, vocab.get("tokenizer.ggml.tokens", []),
                     vocab.get("tokenizer.ggml.token_type", []), vocab.get("tokenizer.ggml.merges", []),
                     tok_json, recipe, size)
