"""Helpers for the tests that stop a write half-way: Ctrl-C (SIGINT) to a `phi2cpu` subprocess,
a quantizer slowed down so that the signal lands mid-write, and a small tmpfs as a full disk."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

# Ctrl-C as in a terminal: a process started in the background of a non-interactive shell inherits
# SIGINT ignored, and Python then installs no KeyboardInterrupt handler; the commands here restore it.
CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
PHI2CPU = CTRL_C + """
import sys
from phi2cpu.cli import main
sys.exit(main(sys.argv[1:]))
"""
# `phi2cpu ARGS...` with each tensor's quantization delayed, so a SIGINT finds the output half-written
SLOW_QUANTIZE = CTRL_C + """
import sys, time
import phi2cpu._core as core
quantize = core.quantize
core.quantize = lambda *a, **k: (time.sleep(0.1), quantize(*a, **k))[1]
from phi2cpu.cli import main
sys.exit(main(sys.argv[1:]))
"""


def phi2cpu_cmd(*args: str, slow_quantize: bool = False) -> list[str]:
    return [sys.executable, "-c", SLOW_QUANTIZE if slow_quantize else PHI2CPU, *args]


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """Ctrl-C: SIGINT, then the exit status and stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only; the test is skipped elsewhere)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def grow_disk(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def files_in(path: Path) -> list[str]:
    """Every file under `path`, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
