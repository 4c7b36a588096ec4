"""The repack cache: written on a first load, mapped on later ones with logits bit-identical to
repacking in memory; a corrupt, truncated, stale or unwritable cache is never used and the load
falls back to repacking; no temporary file is ever left behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phi2cpu
from phi2cpu import _core
from phi2cpu.errors import ModelFileError
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import quantize
from phi2cpu.repack_cache import cache_dir, prune

DATA_OFFSET = 2 << 20  # where a cache file's matrices start
IDS = [50256, 464, 2068, 7586, 21831, 18045, 625, 262]


@pytest.fixture(scope="module")
def models(mini_dir, tmp_path_factory):
    """phi2-mini-code as Q4_0 and Q8_0 (every matrix is repacked on x86 and Arm)."""
    d = tmp_path_factory.mktemp("rc-models")
    out = {}
    for q in ("q4_0", "q8_0"):
        out[q] = d / f"mini.{q}.gguf"
        quantize(mini_dir, out[q], q, progress=False)
    return out


def run(path, cache) -> tuple[dict, np.ndarray]:
    """Load, then logits of a batch (the GEMM path) and of three single steps (the GEMV path)."""
    m = phi2cpu.load(path, threads=2, n_ctx=64, repack_cache=cache)
    batch = m.logits(IDS)
    steps = [m.eval([i]) for i in (11, 12, 13)]
    return m.repack_report, np.vstack([batch, *steps])


def repacks_here() -> bool:
    return _core.isa()[0] != "scalar"


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_written_then_mapped_with_identical_logits(models, tmp_path, qtype):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    ref_report, ref = run(models[qtype], False)
    assert ref_report["weights"] == "memory" and ref_report["cache_path"] == ""
    first, got1 = run(models[qtype], tmp_path)
    assert first["weights"] == "cache-written", first["note"]
    path = Path(first["cache_path"])
    assert path.parent == tmp_path and path.suffix == ".rpk" and files(tmp_path) == [path.name]
    assert path.stat().st_size == DATA_OFFSET + first["bytes"] == DATA_OFFSET + ref_report["bytes"]
    second, got2 = run(models[qtype], tmp_path)
    assert second["weights"] == "cache" and second["cache_path"] == str(path)
    assert second["huge_bytes"] >= -1
    np.testing.assert_array_equal(got1, ref)
    np.testing.assert_array_equal(got2, ref)


def corrupt_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("damage", ["data", "header", "truncated", "garbage", "empty"])
def test_damaged_cache_is_never_used(models, tmp_path, damage):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    _, ref = run(models["q8_0"], False)
    report, _ = run(models["q8_0"], tmp_path)
    path = Path(report["cache_path"])
    if damage == "data":
        corrupt_byte(path, DATA_OFFSET + 1000)
    elif damage == "header":
        corrupt_byte(path, 100)  # inside the manifest
    elif damage == "truncated":
        os.truncate(path, path.stat().st_size - 4096)
    elif damage == "garbage":
        path.write_bytes(os.urandom(DATA_OFFSET + 4096))
    else:
        path.write_bytes(b"")
    again, got = run(models["q8_0"], tmp_path)
    # the damaged file is dropped and written again, and the logits are the repacked ones
    assert again["weights"] == "cache-written" and again["cache_path"] == str(path)
    np.testing.assert_array_equal(got, ref)
    third, got3 = run(models["q8_0"], tmp_path)
    assert third["weights"] == "cache"
    np.testing.assert_array_equal(got3, ref)
    assert files(tmp_path) == [path.name]


def test_small_page_cache_folios_are_read_again(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    _, ref = run(models["q8_0"], False)
    first, _ = run(models["q8_0"], tmp_path)
    hot, _ = run(models["q8_0"], tmp_path)
    if hot["huge_bytes"] < 0.9 * hot["bytes"]:
        pytest.skip(f"{tmp_path}'s filesystem does not keep the cache in 2 MiB page-cache folios")
    # Drop the cached pages, then read a page of every other 2 MiB range with plain reads: those
    # ranges come back in small folios, and a mapping of them gets small pages there.
    fd = os.open(first["cache_path"], os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for at in range(DATA_OFFSET, DATA_OFFSET + first["bytes"], 4 << 20):
            os.pread(fd, 4096, at)
    finally:
        os.close(fd)
    again, got = run(models["q8_0"], tmp_path)
    assert again["weights"] == "cache" and "read again" in again["note"], again
    assert again["huge_bytes"] >= 0.9 * again["bytes"]
    np.testing.assert_array_equal(got, ref)


def test_changed_model_file_gets_a_new_cache_and_the_old_one_goes(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    model = tmp_path / "m.gguf"
    shutil.copyfile(models["q4_0"], model)
    caches = tmp_path / "caches"
    old, _ = run(model, caches)
    # same size and bytes, a new mtime: the cache must not be trusted for it
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new, _ = run(model, caches)
    assert new["weights"] == "cache-written" and new["cache_path"] != old["cache_path"]
    assert files(caches) == [Path(new["cache_path"]).name]  # the stale one was pruned
    # a different model under the same path
    shutil.copyfile(models["q8_0"], model)
    other, got = run(model, caches)
    assert other["weights"] == "cache-written"
    np.testing.assert_array_equal(got, run(models["q8_0"], False)[1])
    model.unlink()
    (tmp_path / "n.gguf").write_bytes(models["q4_0"].read_bytes())
    run(tmp_path / "n.gguf", caches)
    assert len(files(caches)) == 1  # the cache of the deleted model is gone too


def test_prune_after_the_model_is_deleted(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    kept, gone = tmp_path / "kept.gguf", tmp_path / "gone.gguf"
    shutil.copyfile(models["q4_0"], kept)
    shutil.copyfile(models["q8_0"], gone)
    caches = tmp_path / "caches"
    a, _ = run(kept, caches)
    run(gone, caches)
    assert len(files(caches)) == 2
    gone.unlink()
    prune(caches)
    assert files(caches) == [Path(a["cache_path"]).name]
    prune(tmp_path / "no-such-folder")  # nothing to do


def test_unusable_folder_falls_back_to_memory(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    _, ref = run(models["q4_0"], False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    report, got = run(models["q4_0"], blocker / "repack")
    assert report["weights"] == "memory" and report["cache_path"] == ""
    assert "cannot create" in report["note"]
    np.testing.assert_array_equal(got, ref)


FULL_DISK = """
import resource, signal, sys
import numpy as np
import phi2cpu
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
m = phi2cpu.load(sys.argv[1], threads=2, n_ctx=64, repack_cache=sys.argv[2])
print(m.repack_report["weights"], "|", m.repack_report["note"])
np.save(sys.argv[3], m.logits([50256, 464, 2068]))
"""


def test_a_write_that_fails_leaves_no_file(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    caches = tmp_path / "caches"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(models["q8_0"]), str(caches), str(tmp_path / "l.npy")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("memory |") and "File too large" in out, out
    assert files(caches) == []
    ref = phi2cpu.load(models["q8_0"], threads=2, n_ctx=64, repack_cache=False).logits([50256, 464, 2068])
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), ref)


def test_temporary_files_of_dead_writers_are_removed(models, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    tmp_path.joinpath("caches").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "caches" / f".0123456789abcdef.rpk.{dead.pid}.tmp"
    live = tmp_path / "caches" / f".0123456789abcdef.rpk.{os.getpid()}.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    run(models["q4_0"], tmp_path / "caches")
    assert not stale.exists() and live.exists()


def test_scalar_path_reads_the_file_in_place(models, tmp_path):
    code = ("import sys, phi2cpu; m = phi2cpu.load(sys.argv[1], threads=1, n_ctx=16, repack_cache=sys.argv[2]); "
            "print(m.repack_report['weights'])")
    env = dict(os.environ, PHI2CPU_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code, str(models["q4_0"]), str(tmp_path / "c")], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "file" and files(tmp_path / "c") == []


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("PHI2CPU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PHI2CPU_REPACK_CACHE", raising=False)
    assert cache_dir() == cache_dir(True) == tmp_path / "home" / "repack"
    assert cache_dir(False) is None
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("PHI2CPU_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "phi2cpu" / "repack"
    monkeypatch.setenv("PHI2CPU_REPACK_CACHE", "off")
    assert cache_dir() is None and cache_dir(True) == tmp_path / "xdg" / "phi2cpu" / "repack"
    monkeypatch.setenv("PHI2CPU_REPACK_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_default_load_uses_the_store(monkeypatch, tmp_path):
    if not repacks_here():
        pytest.skip("the scalar kernel path reads GGUF blocks in place")
    monkeypatch.setenv("PHI2CPU_HOME", str(tmp_path))
    monkeypatch.delenv("PHI2CPU_REPACK_CACHE", raising=False)
    assert phi2cpu.load(threads=1, n_ctx=16).repack_report["weights"] == "cache-written"
    assert len(files(tmp_path / "repack")) == 1
    monkeypatch.setenv("PHI2CPU_REPACK_CACHE", "off")
    assert phi2cpu.load(threads=1, n_ctx=16).repack_report["weights"] == "memory"


# ----------------------------------------------------------------------------- GGUF vocabulary strings

def test_gguf_strings():
    buf = b"".join(len(s).to_bytes(8, "little") + s for s in (b"ab", "Ġthe".encode(), b""))
    assert _core.gguf_strings(buf, 0, 3) == (["ab", "Ġthe", ""], len(buf))
    assert _core.gguf_strings(b"xx" + buf, 2, 2) == (["ab", "Ġthe"], 2 + 10 + 13)
    assert _core.gguf_strings(buf, 0, 4) == (None, -1)                # runs past the end
    assert _core.gguf_strings(buf[:-1] + b"\x05", 0, 3) == (None, -1)  # bad length at the end
    assert _core.gguf_strings(buf, 0, 1 << 62) == (None, -1)
    with pytest.raises(UnicodeDecodeError):
        _core.gguf_strings(b"\x01" + b"\0" * 7 + b"\xff", 0, 1)


def test_vocabulary_cut_short_or_not_utf8(tmp_path):
    data = phi2cpu.default_model_path().read_bytes()
    at = data.find(b"tokenizer.ggml.tokens") + 40_000
    (tmp_path / "cut.gguf").write_bytes(data[:at])
    with pytest.raises(ModelFileError, match="truncated GGUF file"):
        read_model_file(tmp_path / "cut.gguf")
    first = data.find(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 4 + 4 + 8 + 8  # first string
    bad = bytearray(data)
    bad[first] = 0xFF
    (tmp_path / "bad.gguf").write_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match="corrupt GGUF file"):
        read_model_file(tmp_path / "bad.gguf")
    f = read_model_file(phi2cpu.default_model_path())
    assert len(f.tokens) == f.config.n_vocab and f.tokens[:3] == ["!", '"', "#"]
