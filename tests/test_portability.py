"""The engine on other compilers and operating systems, as far as this machine can show it: the
engine, the kernel tests and the platform layer's tests (csrc/tests/test_platform.cpp) built with
Clang under -Wall -Wextra -Werror and run; the same built by Clang for aarch64; and cross-compiled
for 64-bit Windows with mingw-w64 and run under wine (test_kernels_cpp.py builds them with the
default compiler, also under -Werror). Each test skips, saying why, when its compiler (or wine) is
not installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINGW = "x86_64-w64-mingw32-g++-posix"


def _need(*tools: str) -> None:
    if os.environ.get("PHI2CPU_TEST_NO_COMPILER"):
        pytest.skip("this run has no compiler by design (tools/test.sh runs these tests in its step with one)")
    if not (REPO / "csrc" / "tests").is_dir():
        pytest.skip(f"the C++ sources are not beside these tests ({REPO / 'csrc'} is missing)")
    missing = [t for t in ("cmake", *tools) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: cmake clang g++-mingw-w64-x86-64-posix wine64)")


def _build(build_dir: Path, cmake_args: list[str], env: dict | None = None) -> None:
    """Configures with warnings as errors and builds both C++ test programs (and so the engine)."""
    env = {**os.environ, **(env or {})}
    cfg = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DPHI2CPU_BUILD_TESTS=ON",
                          "-DPHI2CPU_WERROR=ON", *cmake_args], capture_output=True, text=True, env=env)
    assert cfg.returncode == 0, cfg.stdout[-4000:] + cfg.stderr[-4000:]
    build = subprocess.run(["cmake", "--build", str(build_dir), "--target", "test_kernels", "test_platform", "-j2"],
                           capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]


def _run(cmd: list[str], env: dict | None = None) -> str:
    """Runs one test program; it must exit 0 and report passes and no failures."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    m = re.search(r"^(\d+) passed, (\d+) failed\s*$", r.stdout, re.M)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", out[-4000:]
    return r.stdout


def _wine() -> str | None:
    # Debian's wine64 package installs its loader outside PATH
    return shutil.which("wine") or shutil.which("wine64") or next(
        (p for p in ("/usr/lib/wine/wine64",) if os.access(p, os.X_OK)), None)


def test_clang_builds_warning_free_and_passes(tmp_path):
    _need("clang++")
    _build(tmp_path / "build", ["-DCMAKE_CXX_COMPILER=clang++"])
    out = _run([str(tmp_path / "build" / "test_kernels")])
    assert "scalar" in out
    (tmp_path / "run").mkdir()
    _run([str(tmp_path / "build" / "test_platform"), str(tmp_path / "run")])


def test_clang_aarch64_cross_build_warning_free(tmp_path):
    """The NEON, dot-product and i8mm kernels under Clang's -Werror (the macOS arm64 wheels build
    with Clang); test_kernels_cpp.py runs the GCC build's kernel tests under qemu, so here only the
    platform tests run, on an emulated core with both extensions."""
    _need("clang++", "aarch64-linux-gnu-g++", "qemu-aarch64")
    _build(tmp_path / "build", [f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'cmake' / 'aarch64-linux-gnu-clang.cmake'}"])
    (tmp_path / "run").mkdir()
    out = _run(["qemu-aarch64", "-cpu", "max", str(tmp_path / "build" / "test_platform"), str(tmp_path / "run")])
    assert "arm features: dotprod i8mm\n" in out, out


def test_windows_cross_build_runs_under_wine(tmp_path):
    _need(MINGW)
    _build(tmp_path / "build", [f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'cmake' / 'x86_64-w64-mingw32.cmake'}"])
    exes = [tmp_path / "build" / f"{name}.exe" for name in ("test_kernels", "test_platform")]
    for exe in exes:
        assert exe.read_bytes()[:2] == b"MZ", exe  # a Windows executable
    wine = _wine()
    if wine is None:
        pytest.skip("built for Windows warning-free; wine is not installed, so not run (Debian: wine64)")
    env = {"WINEPREFIX": str(tmp_path / "wineprefix"), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="}
    (tmp_path / "run").mkdir()
    out = _run([wine, str(exes[0])], env)
    assert "scalar" in out
    _run([wine, str(exes[1]), str(tmp_path / "run")], env)
