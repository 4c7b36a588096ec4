"""What the numbers were measured on: CPU, cores, memory, versions, commit."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .assets import repo_root
from .engines import ALL_ENGINES, version_of

# The flags that decide which kernels run (x86 names from /proc/cpuinfo, Arm from Features).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp",
                     "i8mm", "sve", "bf16")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key and key not in info:
                info[key] = val.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in INTERESTING_FLAGS if f in flags]


def mem_total() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def git_commit() -> Optional[str]:
    root = repo_root()
    if root is None:
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def collect() -> dict:
    from .. import _core
    from ..model import default_threads

    isa, why = _core.isa()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cores": default_threads(),
        "mem_total": mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "phi2cpu_isa": isa,
        "phi2cpu_isa_reason": why,
        "git_commit": git_commit(),
        "versions": {e: version_of(e) for e in ALL_ENGINES if e != "hf-bf16"},
        "numpy": __import__("numpy").__version__,
    }
