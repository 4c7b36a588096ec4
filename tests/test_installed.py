"""What tools/test.sh's last step promises: the suite tests the installed wheel, not this checkout,
on a machine where no C/C++ compiler can be found. Each check runs where its variable is set."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

import phi2cpu

REPO = Path(__file__).resolve().parents[1]
NO_COMPILER = os.environ.get("PHI2CPU_TEST_NO_COMPILER", "")
COMPILERS = ("cc", "c++", "gcc", "g++", "cpp", "clang", "clang++")


@pytest.mark.skipif(os.environ.get("PHI2CPU_TEST_INSTALLED") != "1",
                    reason="PHI2CPU_TEST_INSTALLED=1 (set by tools/test.sh) says the package is installed")
def test_the_package_under_test_is_installed_not_the_checkout():
    import phi2cpu._core

    pkg = Path(phi2cpu.__file__).resolve().parent
    assert REPO not in pkg.parents, pkg
    assert pkg.parent in {Path(p).resolve() for p in site.getsitepackages()}, pkg
    assert Path(phi2cpu._core.__file__).resolve().parent == pkg
    assert not any(Path(p or ".").resolve() == REPO / "python" for p in sys.path)
    direct_url = json.loads(metadata.distribution("phi2cpu").read_text("direct_url.json") or "{}")
    assert not direct_url.get("dir_info", {}).get("editable"), direct_url
    assert pkg in phi2cpu.default_model_path().parents  # the bundled demo model came with the wheel


@pytest.mark.skipif(not NO_COMPILER, reason="PHI2CPU_TEST_NO_COMPILER (set by tools/without_compilers.sh) says "
                                            "no compiler should be found")
def test_no_compiler_can_be_found(tmp_path):
    names = set(COMPILERS)
    for var in ("CC", "CXX"):  # what the interpreter's build would compile extensions with
        names.update((sysconfig.get_config_var(var) or "").split()[:1])
    assert {n: shutil.which(n) for n in names if shutil.which(n)} == {}
    if NO_COMPILER == "1":  # a private mount namespace: the drivers are gone from disk as well
        present = [f"{d}/{n}" for d in ("/usr/bin", "/usr/local/bin", "/bin") for n in names
                   if os.path.lexists(f"{d}/{n}")]
        assert present == []
    hello = tmp_path / "hello.c"
    hello.write_text("int main(void) { return 0; }\n")
    for cc in sorted(names):
        try:
            proc = subprocess.run([cc, str(hello), "-o", str(tmp_path / "hello")], capture_output=True)
        except FileNotFoundError:
            continue
        assert proc.returncode != 0, cc
    assert not (tmp_path / "hello").exists()
