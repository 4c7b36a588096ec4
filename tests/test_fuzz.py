"""The fuzz harness (tests/fuzz/fuzz_model_files.py) over the GGUF reader and the state loader,
seeded from the files the hardening tests generate. With atheris installed it runs under libFuzzer
for PHI2CPU_FUZZ_SECONDS per target (default 30), with a per-input time limit and an RSS limit;
the plain random-mutation loop runs everywhere."""
from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz") / "fuzz_model_files.py"
SECONDS = int(os.environ.get("PHI2CPU_FUZZ_SECONDS", "30"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(HARNESS), "seed", str(root)], check=True, capture_output=True, timeout=300)
    return root


def _findings(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))


@pytest.mark.parametrize("target", ["gguf", "state"])
def test_plain_mutation_loop_finds_nothing(corpus, target, tmp_path):
    run = subprocess.run([sys.executable, str(HARNESS), target, str(corpus / target), "--plain", "--seconds", "5"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "no findings" in run.stdout


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris) - the plain loop ran instead")
@pytest.mark.parametrize("target", ["gguf", "state"])
def test_atheris_finds_nothing(corpus, target, tmp_path):
    work = tmp_path / "corpus"
    work.mkdir()
    for p in (corpus / target).iterdir():  # libFuzzer adds to its first corpus folder
        (work / p.name).write_bytes(p.read_bytes())
    # A child starts with this process's peak RSS as its own (Linux keeps it across fork and exec),
    # and libFuzzer reads that peak: the 2 GiB limit counts from there.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 << 20 if sys.platform == "darwin" else 1 << 10)
    run = subprocess.run([sys.executable, str(HARNESS), target, str(work), f"-max_total_time={SECONDS}",
                          "-timeout=10", f"-rss_limit_mb={2048 + peak_mb}", f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, timeout=SECONDS + 300)
    assert run.returncode == 0 and not _findings(tmp_path), run.stderr[-4000:]
    assert "Done" in run.stderr
