#!/usr/bin/env bash
# Builds the C++ kernel tests and the platform-layer tests (csrc/tests) with this machine's compiler,
# warnings as errors, and runs them: the wheel workflow runs this once per platform, with the
# compiler that builds that platform's wheels (cibuildwheel's before-all).
# Usage: tools/kernel_tests.sh [BUILD_DIR [CMAKE_ARG...]]; PHI2CPU_TEST_RUNNER runs the programs
# through an emulator, e.g. "qemu-aarch64 -cpu max" or "wine" for a cross build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/kernel-tests}
shift || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPHI2CPU_BUILD_TESTS=ON -DPHI2CPU_WERROR=ON "$@"
cmake --build "$build" --target test_kernels test_platform --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
ext=
[ -f "$build/test_kernels.exe" ] && ext=.exe
# (the ${a[@]+...} form: macOS bash 3.2 treats an empty array as unset)
read -r -a runner <<<"${PHI2CPU_TEST_RUNNER:-}"
mkdir -p "$build/platform-run"
${runner[@]+"${runner[@]}"} "$build/test_kernels$ext" | tail -n 2
${runner[@]+"${runner[@]}"} "$build/test_platform$ext" "$build/platform-run" | tail -n 1
