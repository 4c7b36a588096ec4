#!/usr/bin/env bash
# Usage: tools/test_installed.sh WHEEL VENV (step 3 of tools/test.sh, run by tools/without_compilers.sh)
# Makes a fresh VENV, installs WHEEL and the test dependencies from binary packages only (nothing may
# be built: there is no compiler), and runs the suite against that installed package.
set -euo pipefail
wheel=$1 venv=$2
cd "$(dirname "$0")/.."
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# HF transformers (on torch) is the reference the NumPy oracle is checked against; atheris drives
# the bounded fuzz run over the GGUF reader and the state loader (tests/test_fuzz.py). Tests only.
python -m pip install --quiet --only-binary=:all: "$wheel[test]" torch==2.13.0 transformers atheris
python -c 'import phi2cpu, phi2cpu._core; print("testing the installed", phi2cpu.__file__)'
# The checkout's python/ is not on sys.path (tests/ is, for its helpers); tests/test_installed.py
# checks that the package under test is this venv's.
PHI2CPU_TEST_INSTALLED=1 exec python -m pytest -rs --durations=25 tests
