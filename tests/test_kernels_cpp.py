"""The dependency-free C++ kernel tests (csrc/tests), built with CMake and run here: natively,
under AddressSanitizer + UBSan, and cross-compiled for aarch64 under qemu so the NEON path is
exercised without an ARM machine; and the fuzz corpus of model files replayed through the Python
module built with the same sanitizers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WERROR = "-DPHI2CPU_WERROR=ON"  # -Wall -Wextra as errors: the build must stay warning-free
SANITIZE = "-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"


def _need(*tools: str) -> None:
    if os.environ.get("PHI2CPU_TEST_NO_COMPILER"):
        pytest.skip("this run has no compiler by design (tools/test.sh runs the C++ kernel tests in its step with one)")
    if not (REPO / "csrc" / "tests").is_dir():
        pytest.skip(f"the C++ sources are not beside these tests ({REPO / 'csrc'} is missing)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: cmake g++ g++-aarch64-linux-gnu qemu-user)")


def _build_and_run(build_dir: Path, cmake_args: list[str], runner: list[str], env: dict | None = None,
                   target: str = "test_kernels", args: tuple[str, ...] = ()) -> str:
    """Builds target (a test program) in build_dir (again only if needed) and runs it; returns its stdout."""
    cmd = ["cmake", "-S", str(REPO), "-B", str(build_dir), "-DPHI2CPU_BUILD_TESTS=ON", *cmake_args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    build = subprocess.run(["cmake", "--build", str(build_dir), "--target", target, "-j2"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    run = subprocess.run([*runner, str(build_dir / target), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    m = re.search(r"^(\d+) passed, (\d+) failed$", run.stdout, re.M)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", out[-4000:]
    return run.stdout


def test_kernels_native(tmp_path):
    _need("cmake", "c++")
    # the x86 decode GEMV prefetches on some CPUs and not on others (kernels/x86/cpu_x86.h): both ways,
    # whatever this CPU's default is (the second run finds the build done)
    for prefetch in ("0", "4096"):
        out = _build_and_run(tmp_path / "native", [WERROR], [], env={"PHI2CPU_GEMV_PREFETCH": prefetch})
        assert "scalar" in out
    # the platform layer (csrc/platform) against what the engine relies on, in a folder of its own
    (tmp_path / "platform").mkdir()
    _build_and_run(tmp_path / "native", [WERROR], [], target="test_platform", args=(str(tmp_path / "platform"),))


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory) -> Path:
    """One sanitizer build folder: the kernel tests build the engine library there, and the corpus
    replay adds only the Python module on top of it."""
    return tmp_path_factory.mktemp("asan")


def test_kernels_sanitizers(sanitized_build):
    _need("cmake", "c++")
    _build_and_run(sanitized_build, ["-DCMAKE_BUILD_TYPE=Debug", f"-DCMAKE_CXX_FLAGS={SANITIZE}"], [])


def test_model_file_corpus_under_sanitizers(sanitized_build):
    """tools/asan_replay.sh: every hostile GGUF and state file the tests generate, and 10 s of random
    mutations per target, loaded through the engine built with ASan + UBSan; any report fails."""
    _need("cmake", "c++")
    try:
        import pybind11  # noqa: F401  (the replay builds the Python module against it)
    except ImportError:
        pytest.skip("pybind11 is not installed in this environment")
    r = subprocess.run(["bash", str(REPO / "tools" / "asan_replay.sh"), "10"], capture_output=True, text=True,
                       timeout=1500, env={**os.environ, "PHI2CPU_ASAN_BUILD": str(sanitized_build),
                                          "PHI2CPU_SANITIZE_FLAGS": SANITIZE})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-6000:]
    for target in ("gguf", "state"):  # both corpora were replayed and mutated, not skipped
        assert re.search(rf"^{target}: replayed [1-9]\d* files", out, re.M), out[-6000:]
        assert re.search(rf"^{target}: [1-9]\d* inputs in", out, re.M), out[-6000:]


def test_kernels_aarch64_neon_under_qemu(tmp_path):
    _need("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64")
    toolchain = REPO / "cmake" / "aarch64-linux-gnu.cmake"
    out = _build_and_run(tmp_path / "aarch64", [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", WERROR],
                         ["qemu-aarch64", "-cpu", "max"])
    # the emulated core has FEAT_DotProd and FEAT_I8MM: the NEON path and the SMMLA prefill GEMM
    assert "kernel paths tested: scalar, neon, neon_i8mm\n" in out, out
    # a core without the dot-product extension: the OS reports no FEAT_DotProd, so no NEON path is
    # picked (only the path list and its table rows: the scalar kernels ran on the core above)
    out = _build_and_run(tmp_path / "aarch64", [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", WERROR],
                         ["qemu-aarch64", "-cpu", "cortex-a53"], args=("--paths",))
    assert "kernel paths tested: scalar\n" in out, out
    (tmp_path / "platform").mkdir()
    # what HWCAP / HWCAP2 say per core: Neoverse N1 has dot products but no 8-bit matrix multiply
    for cpu, features in (("max", " dotprod i8mm"), ("neoverse-n1", " dotprod"), ("cortex-a53", "")):
        out = _build_and_run(tmp_path / "aarch64", [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", WERROR],
                             ["qemu-aarch64", "-cpu", cpu], target="test_platform", args=(str(tmp_path / "platform"),))
        assert f"arm features:{features}\n" in out, (cpu, out)
