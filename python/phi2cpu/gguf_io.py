"""GGUF model files ("phi2" architecture, llama.cpp tensor names and block layouts).

Written with the `gguf` package's streaming writer. Read by the small header parser below:
`gguf.GGUFReader` builds numpy views per vocabulary string and takes seconds on Phi-2's
100k tokens + merges (the engine decodes those string arrays in one call). Besides llama.cpp's keys we store the exact tokenizer.json text
(`phi2cpu.tokenizer_json`) and the quantization recipe (`phi2cpu.quant_recipe`)."""
from __future__ import annotations

import errno
import json
import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import TokenType

from . import _core
from .atomic import no_space_left, replace_durably, temp_path
from .checkpoint import expected_gguf_shapes
from .config import ARCH, PhiConfig
from .errors import ModelFileError

# ggml type id -> (name, elements per block, bytes per block) of every type the engine runs, from _core
SUPPORTED_TYPES = {T(t["id"]): (t["name"], t["block_size"], t["type_size"]) for t in _core.types() if t["weight"]}
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
               name: str = "phi-2", phi2cpu_keys: bool = True, chat_template: Optional[str] = None) -> Path:
    """Write a phi2 GGUF. `tensors` yields (name, data, ggml_type, numpy_shape); data is the
    tensor's bytes (uint8 blocks, or an f32/f16 array for F32/F16), or a zero-argument callable
    returning them, called one tensor at a time while writing. `tokenizer` is a tokenizer.json
    path/directory/text or a Vocab. With `phi2cpu_keys` false neither the recipe nor the
    tokenizer.json text is stored: the file holds only llama.cpp's keys, as its converter writes
    them. `chat_template` (a Jinja2 chat template) is stored as tokenizer.chat_template, as
    llama.cpp's converter stores a checkpoint's. Writes to a temporary file, fsyncs it and renames
    it on success; on any failure (Ctrl-C, a full disk) the temporary file is removed and
    `out_path` is left as it was."""
    out = Path(out_path)
    plan = list(tensors)
    tmp = temp_path(out)
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
        if chat_template:
            w.add_chat_template(chat_template)
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
        replace_durably(tmp, out)
    except BaseException as e:
        full = isinstance(e, OSError) and no_space_left(e, tmp.parent)
        try:
            w.close()
        except OSError:
            pass  # a full disk fails the final flush as well; the file goes anyway
        finally:
            tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from None
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file
            raise OSError(e.errno, e.strerror or str(e), str(out)) from None
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
        try:
            m = np.memmap(self.path, np.uint8, "r", offset=t.offset, shape=(t.nbytes,))
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{self.path}: cannot map tensor {name} ({getattr(e, 'strerror', None) or e})") from None
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

# What a header may declare, checked before anything is allocated or looped over, so that parsing
# any header costs at most a small multiple of the file's size and well under a second. Each limit
# is far above a real phi2 file (Phi-2: 325 tensors, ~25 keys, 51200 tokens and 50000 merges).
MAX_KV = 1 << 14           # metadata keys
MAX_TENSORS = 1 << 14
MAX_ARRAY_VALUES = 1 << 20  # elements of all metadata arrays together
MAX_DEPTH = 2              # an array of arrays, no deeper
MAX_DIMS = 4               # GGML's limit
MAX_DIM = 1 << 40          # one dimension (the bounds check then caps the product by the file size)
MIN_ALIGNMENT, MAX_ALIGNMENT = 8, 1 << 16  # the spec asks for a multiple of 8; kernels need 4


class _Cursor:
    """Little-endian reads from the header bytes; running off the end raises struct.error, a
    declaration outside the limits raises ValueError."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0
        self.array_values = 0

    def scalar(self, fmt: str) -> Any:
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def need(self, n: int, each: int, what: str) -> None:
        """Refuse `n` items of at least `each` bytes that cannot fit in the rest of the file."""
        if n * each > len(self.buf) - self.pos:
            raise struct.error(f"{n} {what} run past the end of the file")

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n, 1, "string bytes")
        s = str(self.buf[self.pos:self.pos + n], "utf-8")
        self.pos += n
        return s

    def strings(self, count: int) -> list[str]:
        """`count` strings, decoded by the engine in one call: a vocabulary is 100k of them, and a
        Python loop over them was 80% of the header parse (0.10 s -> 0.02 s on Phi-2)."""
        out, end = _core.gguf_strings(self.buf, self.pos, count)
        if end < 0:
            raise struct.error(f"array of {count} strings runs past the end of the file")
        self.pos = end
        return out

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            if depth >= MAX_DEPTH:
                raise ValueError(f"metadata {key}: arrays nested deeper than {MAX_DEPTH}")
            self.array_values += n
            if self.array_values > MAX_ARRAY_VALUES:
                raise ValueError(f"metadata {key}: more than {MAX_ARRAY_VALUES} array values in the header")
            if itype in _SCALARS:
                fmt = _SCALARS[itype]
                self.need(n, struct.calcsize(fmt), f"values of array {key}")
                arr = np.frombuffer(self.buf, fmt, count=n, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            if itype not in (_STRING, _ARRAY):
                raise ValueError(f"metadata {key}: unknown array element type {itype}")
            self.need(n, 8 if itype == _STRING else 12, f"values of array {key}")
            if itype == _STRING:
                return self.strings(n)
            return [self.value(itype, key, depth + 1) for _ in range(n)]
        if vtype not in _SCALARS:
            raise ValueError(f"metadata {key}: unknown value type {vtype}")
        return self.scalar(_SCALARS[vtype])


def _alignment(kv: dict[str, Any]) -> int:
    align = kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if isinstance(align, bool) or not isinstance(align, int):
        raise ValueError(f"general.alignment must be an integer, not {type(align).__name__}")
    if not MIN_ALIGNMENT <= align <= MAX_ALIGNMENT or align & (align - 1):
        raise ValueError(f"general.alignment {align} is not a power of two in {MIN_ALIGNMENT}..{MAX_ALIGNMENT}")
    return align


def _parse_header(buf: memoryview) -> tuple[dict[str, Any], list[tuple[str, int, tuple[int, ...], int]], int]:
    """GGUF v2/v3 header -> (metadata, [(name, ggml_type, numpy_shape, relative offset)], data start)."""
    c = _Cursor(buf)
    c.pos = 4
    version = c.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    if n_kv > MAX_KV:
        raise ValueError(f"{n_kv} metadata keys declared (the limit is {MAX_KV})")
    if n_tensors > MAX_TENSORS:
        raise ValueError(f"{n_tensors} tensors declared (the limit is {MAX_TENSORS})")
    c.need(n_kv, 13, "metadata entries")  # key length, value type, at least one value byte
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        if key in kv:
            raise ValueError(f"metadata key {key} appears twice")
        kv[key] = c.value(c.scalar("<I"), key)
    c.need(n_tensors, 32, "tensor entries")  # name length, dimension count, one dimension, type, offset
    infos, names = [], set()
    for _ in range(n_tensors):
        name = c.string()
        if name in names:
            raise ValueError(f"tensor {name} appears twice")
        names.add(name)
        n_dims = c.scalar("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"tensor {name} has {n_dims} dimensions (1..{MAX_DIMS})")
        dims = [c.scalar("<Q") for _ in range(n_dims)]
        if not all(1 <= d <= MAX_DIM for d in dims):
            raise ValueError(f"tensor {name} has dimensions {dims} (each must be in 1..{MAX_DIM})")
        infos.append((name, c.scalar("<I"), tuple(reversed(dims)), c.scalar("<Q")))
    align = _alignment(kv)
    return kv, infos, -(-c.pos // align) * align


def _nbytes(name: str, ggml_type: int, shape: tuple[int, ...]) -> int:
    try:
        block, size = gguf.GGML_QUANT_SIZES[T(ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {name} has unknown type id {ggml_type}") from None
    if shape[-1] % block:
        raise ValueError(f"tensor {name}: row length {shape[-1]} is not a multiple of the "
                         f"{type_name(ggml_type)} block ({block})")
    return math.prod(shape) // block * size


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_start: int, align: int, size: int) -> None:
    """Every tensor aligned, inside the file, and not overlapping the next one."""
    for t in tensors.values():
        if (t.offset - data_start) % align:
            raise ModelFileError(f"{path}: tensor {t.name} starts at byte {t.offset}, not a multiple of the "
                                 f"file's alignment {align}")
        if t.offset + t.nbytes > size:
            raise ModelFileError(f"{path}: truncated: tensor {t.name} ends at byte {t.offset + t.nbytes}, "
                                 f"file has {size}")
    by_offset = sorted(tensors.values(), key=lambda t: t.offset)
    for a, b in zip(by_offset, by_offset[1:]):
        if b.offset < a.offset + a.nbytes:
            raise ModelFileError(f"{path}: tensors {a.name} and {b.name} overlap (bytes {b.offset}.."
                                 f"{a.offset + a.nbytes})")


def _typed(path: Path, kv: dict[str, Any], key: str, kind: type, array: bool = False) -> Any:
    """kv[key] (None when absent), refused unless it has the type the spec gives it."""
    v = kv.get(key)
    if v is None:
        return None

    def fits(x: Any) -> bool:
        return isinstance(x, kind) and not isinstance(x, bool)
    if not (all(fits(x) for x in v) if array and isinstance(v, list) else not array and fits(v)):
        what = {str: "string", int: "integer"}[kind]
        want = f"an array of {what}s" if array else ("an " if what[0] == "i" else "a ") + what
        raise ModelFileError(f"{path}: metadata {key} must be {want}")
    return v


def read_model_file(path: str | Path) -> ModelFile:
    """Parse and validate a phi2 GGUF file's metadata (tensor data stays on disk)."""
    path = Path(path)
    try:
        st = path.stat()  # before open: a FIFO or a device would block or never end
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: not a regular file")
        size = st.st_size
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
            tensors = {n: TensorInfo(n, t, shape, data_start + off, _nbytes(n, t, shape))
                       for n, t, shape, off in infos}
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror})") from None
    except struct.error:
        raise ModelFileError(f"{path}: truncated GGUF file (metadata ends past the {size}-byte file)") from None
    except (ValueError, UnicodeDecodeError, MemoryError) as e:
        raise ModelFileError(f"{path}: corrupt GGUF file ({e})") from None
    vocab = {k: kv.pop(k) for k in _VOCAB_KEYS if k in kv}

    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{path}: metadata general.architecture is missing or not a string")
    if arch != ARCH:
        raise ModelFileError(f"{path} is a {arch!r} model; phi2cpu runs only {ARCH}")
    _check_layout(path, tensors, data_start, _alignment(kv), size)
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

    tokens = _typed(path, vocab, "tokenizer.ggml.tokens", str, array=True) or []
    token_types = _typed(path, vocab, "tokenizer.ggml.token_type", int, array=True) or []
    merges = _typed(path, vocab, "tokenizer.ggml.merges", str, array=True) or []
    if len(tokens) > config.n_vocab:
        raise ModelFileError(f"{path}: tokenizer.ggml.tokens has {len(tokens)} tokens; token_embd.weight has "
                             f"only {config.n_vocab} rows")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"):
        tid = _typed(path, kv, key, int)
        if tid is not None and not 0 <= tid < config.n_vocab:
            raise ModelFileError(f"{path}: metadata {key} {tid} is outside the {config.n_vocab}-token vocabulary")
    for key in ("general.name", KEY_TOKENIZER_JSON, KEY_RECIPE):
        _typed(path, kv, key, str)
    _typed(path, kv, "general.file_type", int)
    tok_json = kv.pop(KEY_TOKENIZER_JSON, None)
    recipe = kv.get(KEY_RECIPE)
    try:
        recipe = json.loads(recipe) if recipe else None
    except (json.JSONDecodeError, RecursionError):
        raise ModelFileError(f"{path}: {KEY_RECIPE} is not valid JSON") from None
    if recipe is not None and not isinstance(recipe, dict):
        raise ModelFileError(f"{path}: {KEY_RECIPE} is not a JSON object")
    return ModelFile(path, config, tensors, kv, tokens, token_types, merges, tok_json, recipe, size)
