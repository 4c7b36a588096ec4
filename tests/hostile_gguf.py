"""Small phi2 GGUF files built field by field, so a test can write a valid file or one with any
single field changed: a count, a type, a value, an offset. The fuzz harness seeds from these too.

A `Spec` is the header as data: metadata entries (key, GGUF value type, value) and tensor entries
(name, numpy shape, ggml type, offset relative to the data section), plus the data bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as T

from fakes import TINY_EOS, TINY_MODEL_VOCAB, tiny_gguf_vocab
from phi2cpu.checkpoint import expected_gguf_shapes, random_tensor
from phi2cpu.config import PhiConfig

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}

TINY_CONFIG = PhiConfig(n_vocab=TINY_MODEL_VOCAB, n_embd=64, n_ff=256, n_layer=2, n_head=2, n_rot=16,
                        n_ctx_train=256)


def encode(vtype: int, value: Any) -> bytes:
    """One metadata value. An ARRAY value is (element type, [values]), or bytes written as they are."""
    if isinstance(value, bytes) and vtype != STRING:
        return value
    if vtype == STRING:
        raw = value.encode() if isinstance(value, str) else value
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(encode(itype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


@dataclass
class Spec:
    kv: list[tuple[str, int, Any]]
    tensors: list[tuple[str, tuple[int, ...], int, int]]
    data: bytes
    alignment: int = 32
    version: int = 3
    n_kv: int | None = None        # declared counts; None = the true ones
    n_tensors: int | None = None
    extra: list[tuple[str, int, Any]] = field(default_factory=list)

    def set(self, key: str, vtype: int, value: Any) -> "Spec":
        """A copy with `key` set (added when absent, keeping its place when present)."""
        kv = [(k, t, v) for k, t, v in self.kv if k != key]
        at = next((i for i, (k, _, _) in enumerate(self.kv) if k == key), len(kv))
        kv.insert(at, (key, vtype, value))
        return replace(self, kv=kv)

    def drop(self, key: str) -> "Spec":
        return replace(self, kv=[e for e in self.kv if e[0] != key])

    def tensor(self, which: str, **changes: Any) -> "Spec":
        """A copy with one tensor entry's name, shape, type or offset changed."""
        out = []
        for n, shape, ttype, off in self.tensors:
            if n == which:
                shape, ttype, off = changes.get("shape", shape), changes.get("ttype", ttype), changes.get("offset", off)
                n = changes.get("name", n)
            out.append((n, shape, ttype, off))
        return replace(self, tensors=out)

    def header(self) -> bytes:
        kv = self.kv + self.extra
        out = [b"GGUF", struct.pack("<IQQ", self.version,
                                    len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                    len(kv) if self.n_kv is None else self.n_kv)]
        out += [encode(STRING, k) + struct.pack("<I", t) + encode(t, v) for k, t, v in kv]
        for name, shape, ttype, off in self.tensors:
            out.append(encode(STRING, name) + struct.pack("<I", len(shape)))
            out.append(b"".join(struct.pack("<Q", d) for d in reversed(shape)) + struct.pack("<IQ", ttype, off))
        return b"".join(out)

    def to_bytes(self) -> bytes:
        head = self.header()
        align = self.alignment if self.alignment > 0 else 32
        return head + b"\0" * (-len(head) % align) + self.data

    def write(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path


def tiny_spec(config: PhiConfig = TINY_CONFIG, seed: int = 0, vocab: bool = True) -> Spec:
    """A valid phi2 file: F32 random weights with `config`'s shapes, the tiny test vocabulary,
    general.alignment written out."""
    kv: list[tuple[str, int, Any]] = [("general.architecture", STRING, "phi2"), ("general.name", STRING, "tiny"),
                                      ("general.alignment", U32, 32), ("general.file_type", U32, 0)]
    for key, val in config.to_gguf_kv().items():
        kv.append((key, F32 if isinstance(val, float) else U32, val))
    if vocab:
        tokens, merges, types = tiny_gguf_vocab()
        kv += [("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
               ("tokenizer.ggml.token_type", ARRAY, (I32, types)), ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
               ("tokenizer.ggml.eos_token_id", U32, TINY_EOS), ("tokenizer.ggml.bos_token_id", U32, TINY_EOS)]
    tensors, data = [], bytearray()
    for name, shape in expected_gguf_shapes(config).items():
        raw = random_tensor(name, shape, seed, std=0.05).tobytes()
        tensors.append((name, shape, int(T.F32), len(data)))
        data += raw + b"\0" * (-len(raw) % 32)
    return Spec(kv, tensors, bytes(data))


def nested_arrays(depth: int) -> bytes:
    """An ARRAY value `depth` arrays deep (each holding one array; the innermost is empty)."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 0)


def offset_of(spec: Spec, name: str) -> int:
    return next(off for n, _, _, off in spec.tensors if n == name)
