"""Hugging Face Phi checkpoints: a small streaming safetensors reader, the three tensor namings
mapped to llama.cpp's GGUF "phi2" names, and a random-weight checkpoint writer for tests/benchmarks.

All arrays use the numpy/HF Linear layout (out_features, in_features).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import mmap
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .config import PhiConfig
from .errors import ModelFileError

# ----------------------------------------------------------------------------- safetensors

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_LOADABLE = ("F16", "BF16", "F32")
_MAX_HEADER = 100 << 20


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32."""
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16). Inputs here are finite."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


class SafetensorsFile:
    """One .safetensors file: the header is parsed and checked up front; tensor data is mapped
    only while one tensor is copied out, so reading a checkpoint holds one tensor at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if n < 2 or n > min(size - 8, _MAX_HEADER):
                    raise ModelFileError(f"{self.path}: not a safetensors file (header length {n}, file size {size})")
                header = json.loads(f.read(n))
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{self.path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{self.path}: safetensors header is not a JSON object")
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            except (TypeError, KeyError, ValueError):
                raise ModelFileError(f"{self.path}: tensor {name}: malformed header entry") from None
            if dtype not in _ITEMSIZE:
                raise ModelFileError(f"{self.path}: tensor {name}: unknown dtype {dtype}")
            if not (0 <= begin <= end):
                raise ModelFileError(f"{self.path}: tensor {name}: bad data offsets {begin}..{end}")
            if end > data_len:
                raise ModelFileError(f"{self.path}: truncated: tensor {name} needs data up to byte "
                                     f"{self.data_start + end} but the file has {size} bytes")
            if math.prod(shape) * _ITEMSIZE[dtype] != end - begin:
                raise ModelFileError(f"{self.path}: tensor {name}: shape {list(shape)} x {dtype} "
                                     f"does not match its {end - begin}-byte span")
            self.entries[name] = (dtype, shape, begin, end)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Copy tensor `name` into the float32 array `out` (same element count)."""
        dtype, shape, begin, end = self.entries[name]
        if dtype not in _LOADABLE:
            raise ModelFileError(f"{self.path}: tensor {name}: dtype {dtype} is not supported "
                                 f"(expected one of {', '.join(_LOADABLE)})")
        if end == begin:
            return
        start = self.data_start + begin
        base = start - start % mmap.ALLOCATIONGRANULARITY
        np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[dtype]
        try:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), self.data_start + end - base,
                                                        access=mmap.ACCESS_READ, offset=base) as mm:
                src = np.frombuffer(mm, np_dtype, count=math.prod(shape), offset=start - base)
                flat = out.reshape(-1)
                flat[:] = bf16_to_f32(src) if dtype == "BF16" else src
                del src  # release the buffer before the map closes
        except (OSError, ValueError) as e:  # an mmap failure names no file
            raise ModelFileError(f"{self.path}: cannot read tensor {name} ({getattr(e, 'strerror', None) or e})") \
                from None


def write_safetensors(path: Path, specs: list[tuple[str, str, tuple[int, ...]]],
                      arrays: Iterator[np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Stream tensors into a safetensors file. `specs` = [(name, dtype, shape)] fixes the header;
    `arrays` then yields each tensor's data in the same order (already in that dtype)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for (name, dtype, shape), arr in zip(specs, arrays, strict=True):
            if arr.nbytes != math.prod(shape) * _ITEMSIZE[dtype]:
                raise ValueError(f"{name}: {arr.nbytes} bytes for shape {shape} {dtype}")
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


# ----------------------------------------------------------------------------- namings

# gguf name template -> source name templates, rows concatenated in this order.
# {i} = block index, {j} = i + 1, {f} = n_layer + 1, {p} = weight|bias.
_NAMINGS: dict[str, dict[str, list[str]]] = {
    "current": {
        "token_embd.weight": ["model.embed_tokens.weight"],
        "blk.{i}.attn_norm.{p}": ["model.layers.{i}.input_layernorm.{p}"],
        "blk.{i}.attn_qkv.{p}": ["model.layers.{i}.self_attn.q_proj.{p}", "model.layers.{i}.self_attn.k_proj.{p}",
                                 "model.layers.{i}.self_attn.v_proj.{p}"],
        "blk.{i}.attn_output.{p}": ["model.layers.{i}.self_attn.dense.{p}"],
        "blk.{i}.ffn_up.{p}": ["model.layers.{i}.mlp.fc1.{p}"],
        "blk.{i}.ffn_down.{p}": ["model.layers.{i}.mlp.fc2.{p}"],
        "output_norm.{p}": ["model.final_layernorm.{p}"],
        "output.{p}": ["lm_head.{p}"],
    },
    "phi-msft": {
        "token_embd.weight": ["transformer.embd.wte.weight"],
        "blk.{i}.attn_norm.{p}": ["transformer.h.{i}.ln.{p}"],
        "blk.{i}.attn_qkv.{p}": ["transformer.h.{i}.mixer.Wqkv.{p}"],
        "blk.{i}.attn_output.{p}": ["transformer.h.{i}.mixer.out_proj.{p}"],
        "blk.{i}.ffn_up.{p}": ["transformer.h.{i}.mlp.fc1.{p}"],
        "blk.{i}.ffn_down.{p}": ["transformer.h.{i}.mlp.fc2.{p}"],
        "output_norm.{p}": ["lm_head.ln.{p}"],
        "output.{p}": ["lm_head.linear.{p}"],
    },
    "mixformer-sequential": {
        "token_embd.weight": ["layers.0.wte.weight"],
        "blk.{i}.attn_norm.{p}": ["layers.{j}.ln.{p}"],
        "blk.{i}.attn_qkv.{p}": ["layers.{j}.mixer.Wqkv.{p}"],
        "blk.{i}.attn_output.{p}": ["layers.{j}.mixer.out_proj.{p}"],
        "blk.{i}.ffn_up.{p}": ["layers.{j}.mlp.fc1.{p}"],
        "blk.{i}.ffn_down.{p}": ["layers.{j}.mlp.fc2.{p}"],
        "output_norm.{p}": ["layers.{f}.ln.{p}"],
        "output.{p}": ["layers.{f}.linear.{p}"],
    },
}
NAMINGS = tuple(_NAMINGS)
_BLOCK_PARTS = ("attn_norm", "attn_qkv", "attn_output", "ffn_up", "ffn_down")


def gguf_tensor_names(n_layer: int) -> list[str]:
    """The GGUF tensor names of a Phi-2 model, in file order."""
    names = ["token_embd.weight"]
    for i in range(n_layer):
        names += [f"blk.{i}.{part}.{p}" for part in _BLOCK_PARTS for p in ("weight", "bias")]
    return names + ["output_norm.weight", "output_norm.bias", "output.weight", "output.bias"]


def expected_gguf_shapes(c: PhiConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape; a config outside the sanity limits is refused before the per-layer
    entries are listed."""
    c.validate()
    n, ff = c.n_embd, c.n_ff
    block = {"attn_norm": (n,), "attn_qkv": (3 * n, n), "attn_output": (n, n), "ffn_up": (ff, n), "ffn_down": (n, ff)}
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.n_vocab, n)}
    for i in range(c.n_layer):
        for part, w in block.items():
            shapes[f"blk.{i}.{part}.weight"] = w
            shapes[f"blk.{i}.{part}.bias"] = (n,) if part == "attn_norm" else (w[0],)
    shapes.update({"output_norm.weight": (n,), "output_norm.bias": (n,),
                   "output.weight": (c.n_vocab, n), "output.bias": (c.n_vocab,)})
    return shapes


def _template(gguf_name: str) -> tuple[str, dict[str, Any]]:
    """'blk.3.ffn_up.bias' -> ('blk.{i}.ffn_up.{p}', {'i': 3, 'p': 'bias'})."""
    parts = gguf_name.split(".")
    fields: dict[str, Any] = {"p": parts[-1]}
    if parts[0] == "blk":
        fields["i"] = int(parts[1])
        parts[1] = "{i}"
    if gguf_name != "token_embd.weight":
        parts[-1] = "{p}"
    return ".".join(parts), fields


def source_names(naming: str, gguf_name: str, n_layer: int) -> list[str]:
    """Checkpoint tensor names whose rows, concatenated in order, form `gguf_name`."""
    tmpl, fields = _template(gguf_name)
    i = fields.get("i", 0)
    return [s.format(i=i, j=i + 1, f=n_layer + 1, p=fields["p"]) for s in _NAMINGS[naming][tmpl]]


@functools.lru_cache(maxsize=8)
def _reverse_map(n_layer: int) -> dict[str, str]:
    return {src: g for naming in NAMINGS for g in gguf_tensor_names(n_layer)
            for src in source_names(naming, g, n_layer)}


def hf_to_gguf_name(hf_name: str, n_layer: int) -> str | None:
    """GGUF name that checkpoint tensor `hf_name` (any naming) goes into; None if it is not a
    Phi-2 weight. q/k/v projections map to the fused attn_qkv tensor."""
    return _reverse_map(n_layer).get(hf_name)


def _split_rows(naming: str, gguf_name: str, shape: tuple[int, ...], n_layer: int) -> list[tuple[str, tuple[int, ...]]]:
    srcs = source_names(naming, gguf_name, n_layer)
    rows = shape[0] // len(srcs)
    return [(s, (rows, *shape[1:])) for s in srcs]


# ----------------------------------------------------------------------------- reading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: cannot parse JSON ({e})") from None


class HFCheckpoint:
    """A Phi checkpoint directory (config.json + model.safetensors or sharded with an index)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelFileError(f"{self.path}: not a checkpoint directory")
        cfg_path = self.path / "config.json"
        cfg = _read_json(cfg_path)
        self.config = PhiConfig.from_hf(cfg, str(cfg_path))
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelFileError(f"{index}: no weight_map")
            shards = sorted(set(weight_map.values()))
        elif (self.path / "model.safetensors").exists():
            shards = ["model.safetensors"]
        else:
            raise ModelFileError(f"{self.path}: no model.safetensors or model.safetensors.index.json")
        for s in shards:
            if not (self.path / s).is_file():
                raise ModelFileError(f"{self.path}: shard {s} named in the index is missing")
        self._files = {s: SafetensorsFile(self.path / s) for s in shards}
        self._where = {name: f for f in self._files.values() for name in f.entries}
        self.naming = next((n for n in NAMINGS if source_names(n, "token_embd.weight", 0)[0] in self._where), None)
        if self.naming is None:
            raise ModelFileError(f"{self.path}: unrecognised tensor naming (no embedding tensor "
                                 f"{' / '.join(source_names(n, 'token_embd.weight', 0)[0] for n in NAMINGS)})")
        for name, shape in self.expected_shapes().items():
            self._sources(name, shape)

    def _sources(self, gguf_name: str, shape: tuple[int, ...]) -> list[tuple[SafetensorsFile, str]]:
        """The (file, tensor) pairs that make up `gguf_name`, checked against the expected shape."""
        found = []
        for src, want in _split_rows(self.naming, gguf_name, shape, self.config.n_layer):
            f = self._where.get(src)
            if f is None:
                raise ModelFileError(f"{self.path}: missing tensor {src} (needed for {gguf_name})")
            dtype, got = f.entries[src][:2]
            if got != want:
                raise ModelFileError(f"{f.path}: tensor {src} has shape {list(got)}, expected {list(want)}")
            if dtype not in _LOADABLE:
                raise ModelFileError(f"{f.path}: tensor {src}: dtype {dtype} is not supported "
                                     f"(expected one of {', '.join(_LOADABLE)})")
            found.append((f, src))
        return found

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_gguf_shapes(self.config)

    def tensor_names(self) -> list[str]:
        return gguf_tensor_names(self.config.n_layer)

    def load(self, gguf_name: str) -> np.ndarray:
        """One GGUF-named tensor as float32, reading only the source tensors it needs."""
        shape = self.expected_shapes().get(gguf_name)
        if shape is None:
            raise KeyError(gguf_name)
        out = np.empty(shape, np.float32)
        row = 0
        for f, src in self._sources(gguf_name, shape):
            rows = f.shape(src)[0]
            f.read_into(src, out[row:row + rows])
            row += rows
        return out

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.tensor_names():
            yield name, self.load(name)


# ----------------------------------------------------------------------------- random weights

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "tokenizer_config.json")
_ST_DTYPE = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def random_tensor(gguf_name: str, shape: tuple[int, ...], seed: int, std: float = 0.02) -> np.ndarray:
    """Deterministic per (seed, name): the same tensor whatever the naming, dtype or sharding."""
    rng = np.random.default_rng([seed, zlib.crc32(gguf_name.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    if gguf_name.endswith("norm.weight"):
        x *= 0.1
        x += 1.0
    else:
        x *= std if gguf_name.endswith(".weight") else 0.02
    return x


def _encode(x: np.ndarray, st_dtype: str) -> np.ndarray:
    if st_dtype == "BF16":
        return f32_to_bf16(x)
    return x.astype(np.float16) if st_dtype == "F16" else x


def write_random_checkpoint(out_dir: str | Path, config: str | Path | Mapping[str, Any], seed: int = 0,
                            shards: int = 2, dtype: str = "float16", naming: str = "current",
                            tokenizer_dir: str | Path | None = None, std: float = 0.02) -> Path:
    """Write a random-weight Phi checkpoint in HF layout, one tensor in memory at a time.
    `std` scales the matrices (norm weights are ~1, biases ~0.02)."""
    if dtype not in _ST_DTYPE:
        raise ValueError(f"dtype must be one of {', '.join(_ST_DTYPE)}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}")
    cfg_dict = dict(config) if isinstance(config, Mapping) else _read_json(Path(config))
    cfg = PhiConfig.from_hf(cfg_dict, "config")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    if tokenizer_dir is not None:
        for fname in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / fname).exists():
                shutil.copyfile(Path(tokenizer_dir) / fname, out / fname)

    st = _ST_DTYPE[dtype]
    shapes = expected_gguf_shapes(cfg)
    names = gguf_tensor_names(cfg.n_layer)
    # Balance shards by element count, keeping each fused tensor's parts together.
    total = sum(math.prod(s) for s in shapes.values())
    groups: list[list[str]] = [[] for _ in range(max(1, shards))]
    done = 0
    for g in names:
        groups[min(len(groups) - 1, done * len(groups) // total)].append(g)
        done += math.prod(shapes[g])
    groups = [grp for grp in groups if grp]
    files = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]

    def data(group: list[str]) -> Iterator[np.ndarray]:
        for g in group:
            x = random_tensor(g, shapes[g], seed, std)
            parts = _split_rows(naming, g, shapes[g], cfg.n_layer)
            for k in range(len(parts)):
                rows = shapes[g][0] // len(parts)
                yield _encode(x[k * rows:(k + 1) * rows], st)

    weight_map = {}
    for fname, group in zip(files, groups):
        specs = [(src, st, shp) for g in group for src, shp in _split_rows(naming, g, shapes[g], cfg.n_layer)]
        write_safetensors(out / fname, specs, data(group))
        weight_map.update({src: fname for src, _, _ in specs})
    if len(files) > 1:
        itemsize = _ITEMSIZE[st]
        index = {"metadata": {"total_size": total * itemsize}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phi2cpu.checkpoint",
                                 description="Write a random-weight Phi checkpoint (HF layout).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random", help="random weights with the shapes of a config.json")
    r.add_argument("out", help="output directory")
    r.add_argument("--config", required=True, help="HF config.json giving the shapes")
    r.add_argument("--tokenizer-dir", help="copy tokenizer files from this directory")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", choices=list(_ST_DTYPE), default="float16")
    r.add_argument("--naming", choices=list(NAMINGS), default="current")
    r.add_argument("--shards", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        write_random_checkpoint(args.out, args.config, seed=args.seed, shards=args.shards, dtype=args.dtype,
                                naming=args.naming, tokenizer_dir=args.tokenizer_dir)
    except ModelFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
