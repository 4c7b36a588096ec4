#!/usr/bin/env bash
# Replay the fuzz corpus (every hostile GGUF and state file the tests generate, plus random mutations
# of them) through phi2cpu.load / load_state with the C++ engine built under AddressSanitizer +
# UndefinedBehaviorSanitizer. Any report aborts the run (exit non-zero).
#
#   tools/asan_replay.sh [SECONDS_OF_MUTATIONS_PER_TARGET]   (default 20)
#
# Needs g++ (or clang++) with libasan/libubsan, cmake, pybind11 and the Python packages phi2cpu
# depends on in the active environment; builds into build/asan (or $PHI2CPU_ASAN_BUILD) and leaves
# the normal build alone. The flags are $PHI2CPU_SANITIZE_FLAGS when set: the C++ kernel tests
# (tests/test_kernels_cpp.py) pass theirs and the same build folder, so the engine library they built
# is reused and only the Python module is compiled here.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
py="$(command -v python)"
build="$(realpath -m "${PHI2CPU_ASAN_BUILD:-build/asan}")"
flags="${PHI2CPU_SANITIZE_FLAGS:--O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer}"

cmake -S . -B "$build" -DSKBUILD=ON -DCMAKE_BUILD_TYPE=Debug -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$build" --target _core -j "$(nproc)" >/dev/null

# A package folder whose _core is the sanitized one: the Python sources linked, the module copied.
pkg="$build/pkg/phi2cpu"
rm -rf "$build/pkg" && mkdir -p "$pkg"
for f in python/phi2cpu/*; do
  case "$f" in *_core*.so|*__pycache__) ;; *) ln -s "$PWD/$f" "$pkg/" ;; esac
done
cp "$build"/_core*.so "$pkg/"

corpus="$build/corpus"
rm -rf "$corpus"
"$py" tests/fuzz/fuzz_model_files.py seed "$corpus" >/dev/null

cxx="$(command -v g++ || command -v c++)"
export LD_PRELOAD="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# -S: no site hooks, so an editable install's finder cannot put the normal _core back in front.
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export PYTHONPATH="$build/pkg:$site"
for target in gguf state; do
  "$py" -S -c "import phi2cpu._core as c; assert '$build' in c.__file__, c.__file__"
  "$py" -S tests/fuzz/fuzz_model_files.py "$target" "$corpus/$target" --replay
  "$py" -S tests/fuzz/fuzz_model_files.py "$target" "$corpus/$target" --plain --seconds "$seconds"
done
