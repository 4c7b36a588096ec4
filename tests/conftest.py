"""Shared test fixtures: paths to the read-only assets beside the checkout, skipping with a reason
when they are absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHI2CPU_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session", autouse=True)
def model_store(tmp_path_factory) -> Path:
    """Every test (and the processes it starts) keeps its model store, repack caches included, in a
    temporary folder instead of the user's ~/.cache/phi2cpu."""
    root = tmp_path_factory.mktemp("phi2cpu-home")
    saved = {k: os.environ.get(k) for k in ("PHI2CPU_HOME", "PHI2CPU_REPACK_CACHE")}
    os.environ["PHI2CPU_HOME"] = str(root)
    os.environ.pop("PHI2CPU_REPACK_CACHE", None)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test asset {path} is not present (set PHI2CPU_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def phi2_dir() -> Path:
    """The real Phi-2 tokenizer, config.json and model.safetensors.index.json (no weights)."""
    return _need(SHARED / "phi-2")


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    """phi2-mini-code: a 31M model with Phi-2's architecture and real trained weights."""
    return _need(SHARED / "models" / "phi2-mini-code")


@pytest.fixture(scope="session")
def eval_text() -> str:
    return _need(SHARED / "eval" / "python_eval.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def mini_gguf(tmp_path_factory, mini_dir):
    """mini_gguf(qtype) -> phi2-mini-code written by `phi2cpu quantize` in that mix, made once per
    test run (tests only read it)."""
    from phi2cpu.quantize import quantize

    folder = tmp_path_factory.mktemp("mini-gguf")
    made: dict[str, Path] = {}

    def get(qtype: str) -> Path:
        if qtype not in made:
            path = folder / f"mini.{qtype}.gguf"
            quantize(mini_dir, path, qtype, progress=False)
            made[qtype] = path
        return made[qtype]
    return get
