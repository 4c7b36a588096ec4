"""The files a benchmark run needs, found or made once and cached.

- shared/ assets (Phi-2's config and tokenizer, the phi2-mini-code checkpoint, the eval text):
  beside the repository checkout, or given with --shared.
- A random-weight checkpoint with Phi-2's exact config, HF layout, two fp16 shards, written
  deterministically by phi2cpu.checkpoint (no torch), and its GGUF files made by the real
  quantize path. Cache names carry a hash of everything that determines the bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..checkpoint import expected_gguf_shapes, write_random_checkpoint
from ..config import PhiConfig

FORMAT_QTYPE = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_K_M": "q4_k_m",
                "Q2_K": "q2_k", "Q3_K_M": "q3_k_m", "Q4_K_S": "q4_k_s", "IQ4_XS": "iq4_xs", "Q5_K_M": "q5_k_m",
                "Q6_K": "q6_k"}
# bytes per parameter of each file (the mixes' sizes on full-size Phi-2, rounded up): disk checks and
# the order formats are shown in
BYTES_PER_PARAM = {"hf-f16": 2.0, "F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32, "Q4_K_M": 0.61,
                   "Q2_K": 0.43, "Q3_K_M": 0.53, "Q4_K_S": 0.58, "IQ4_XS": 0.56, "Q5_K_M": 0.74, "Q6_K": 0.83}
RANDOM_SEED = 0
DISK_MARGIN = 1 << 30


class AssetError(RuntimeError):
    """An input the run needs cannot be found or made; the message says which and why."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "phi2cpu" / "bench"


def repo_root() -> Optional[Path]:
    """The checkout this package lives in, when it is run from one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "python" / "phi2cpu").is_dir():
            return parent
    return None


def find_shared(explicit: Optional[str]) -> Optional[Path]:
    """--shared, else $PHI2CPU_SHARED, else `shared/` beside the checkout this package runs from
    or beside the current directory (a checkout with a non-editable install)."""
    for cand in (explicit, os.environ.get("PHI2CPU_SHARED")):
        if cand:
            return Path(cand)
    root = repo_root()
    for base in ([root] if root is not None else []) + [Path.cwd()]:
        if (base.parent / "shared").is_dir():
            return base.parent / "shared"
    return None


@dataclass
class Shared:
    phi2_config: Path      # shared/phi-2/config.json (with the tokenizer files beside it)
    mini_dir: Path         # shared/models/phi2-mini-code
    eval_text: Path        # shared/eval/python_eval.txt

    @classmethod
    def at(cls, root: Optional[Path]) -> "Shared":
        if root is None:
            raise AssetError("cannot find the shared/ assets folder: pass --shared DIR "
                             "(the folder holding phi-2/, models/phi2-mini-code/ and eval/)")
        return cls(root / "phi-2" / "config.json", root / "models" / "phi2-mini-code",
                   root / "eval" / "python_eval.txt")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:10]


def n_params(config: PhiConfig) -> int:
    return sum(math.prod(s) for s in expected_gguf_shapes(config).values())


def source_tag(src_dir: Path) -> str:
    """A hash of an HF checkpoint's config and the names, sizes and times of its files."""
    files = sorted(p for p in src_dir.iterdir() if p.suffix in (".json", ".safetensors"))
    stamp = "".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)};" for p in files)
    return _digest((src_dir / "config.json").read_bytes(), stamp.encode())


def ensure_disk(folder: Path, need_bytes: float, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need_bytes + DISK_MARGIN:
        raise AssetError(f"not enough disk for {what}: needs {need_bytes / 2**30:.1f} GiB (+1 GiB margin) "
                         f"in {folder}, {free / 2**30:.1f} GiB free")


class Cache:
    """Models made for the benchmark, kept under one folder between runs."""

    def __init__(self, folder: Path, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.setup_s = 0.0  # time spent making files in this run

    def random_checkpoint(self, config_path: Path, seed: int = RANDOM_SEED) -> Path:
        """HF-layout random-weight checkpoint (two fp16 shards) with `config_path`'s shapes and the
        tokenizer files beside it."""
        cfg_text = config_path.read_bytes()
        name = f"phi2-random-{_digest(cfg_text, str(seed).encode(), b'float16', b'2 shards')}"
        out = self.folder / name
        if (out / "config.json").is_file():
            return out
        config = PhiConfig.from_hf(json.loads(cfg_text), str(config_path))
        ensure_disk(self.folder, n_params(config) * BYTES_PER_PARAM["hf-f16"], f"the random checkpoint {name}")
        self.log(f"writing random-weight checkpoint {out} ({n_params(config) / 1e9:.2f}B params, seed {seed})")
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        write_random_checkpoint(tmp, config_path, seed=seed, shards=2, dtype="float16",
                                tokenizer_dir=config_path.parent)
        # config.json last: its presence marks a complete checkpoint.
        cfg_file = tmp / "config.json"
        cfg_file.rename(tmp / "config.json.part")
        tmp.rename(out)
        (out / "config.json.part").rename(out / "config.json")
        self.setup_s += time.perf_counter() - t0
        return out

    def gguf(self, src_dir: Path, fmt: str) -> Path:
        """`src_dir` (an HF checkpoint) converted to `fmt` by phi2cpu.quantize, cached."""
        from ..quantize import quantize

        tag = source_tag(src_dir)
        out = self.folder / f"{src_dir.name}-{tag}.{FORMAT_QTYPE[fmt]}.gguf"
        if out.is_file():
            return out
        config = PhiConfig.from_hf(json.loads((src_dir / "config.json").read_text()), str(src_dir))
        ensure_disk(self.folder, n_params(config) * BYTES_PER_PARAM[fmt], f"{out.name}")
        self.log(f"quantizing {src_dir.name} to {fmt}: {out}")
        t0 = time.perf_counter()
        quantize(src_dir, out, FORMAT_QTYPE[fmt], progress=False)
        self.setup_s += time.perf_counter() - t0
        return out
