"""The model store: its root, names, list/rm, resolving MODEL for every command, and files that
appear whole or not at all (quantize stopped by Ctrl-C or a full disk)."""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import phi2cpu
from interrupts import files_in, interrupt, phi2cpu_cmd, small_disk, wait_until
from phi2cpu import store
from phi2cpu.errors import ModelFileError, Phi2Error


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("PHI2CPU_HOME", str(root))
    return root


def add(name: str, src: Path | None = None, repo: str = "test/repo") -> store.Entry:
    """Put a copy of a model file (default: the bundled one) in the store as `name`."""
    final = store.path_for(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.test.tmp")
    shutil.copyfile(src or phi2cpu.default_model_path(), tmp)
    return store.install(tmp, name, {"repo": repo})


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(phi2cpu_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi2cpu: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- root and names

def test_root_honours_phi2cpu_home_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PHI2CPU_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert store.root() == tmp_path / "h" / ".cache" / "phi2cpu"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.root() == tmp_path / "xdg" / "phi2cpu"
    monkeypatch.setenv("PHI2CPU_HOME", str(tmp_path / "mine"))
    assert store.root() == tmp_path / "mine"
    assert store.models_dir() == tmp_path / "mine" / "models"


@pytest.mark.parametrize("text, parsed", [
    ("phi-2:q4_0", ("phi-2", "q4_0")), ("Phi-2:Q4_K_M", ("phi-2", "q4_k_m")), ("phi-2", ("phi-2", None)),
    ("thebloke/phi-2-gguf:q4_k_m", ("thebloke/phi-2-gguf", "q4_k_m")), ("a/b:phi-2.q4_0", ("a/b", "phi-2.q4_0")),
    ("./phi-2", None), ("/abs/path.gguf", None), ("a/b/c:q4", None), ("a--b:q4", None), ("a..b:q4", None),
    ("phi-2:", None), (":q4_0", None), ("phi 2:q4", None),
])
def test_parse_name(text, parsed):
    assert store.parse_name(text) == parsed


def test_names_map_to_files_and_back(home):
    for name in ("phi-2:q4_0", "thebloke/phi-2-gguf:q4_k_m", "a/b:phi-2.q4_0"):
        path = store.path_for(name)
        assert path.parent.parent == store.models_dir() and path.suffix == ".gguf"
        assert "/" not in path.parent.name and ":" not in path.name
        assert store.name_of(path) == name
    assert store.path_for("TheBloke/Phi-2-GGUF:Q4_K_M") == store.path_for("thebloke/phi-2-gguf:q4_k_m")
    assert store.name_of(phi2cpu.default_model_path()) is None
    with pytest.raises(Phi2Error, match="BASE:TAG"):
        store.path_for("phi-2")


# ----------------------------------------------------------------------------- entries

def test_install_list_find_remove(home):
    assert store.entries() == []
    a = add("phi-2:q8_0", repo="microsoft/phi-2")
    b = add("thebloke/phi-2-gguf:q8_0")
    assert [e.name for e in store.entries()] == ["phi-2:q8_0", "thebloke/phi-2-gguf:q8_0"]
    assert a.size == phi2cpu.default_model_path().stat().st_size and a.type == "Q8_0"
    assert a.source["repo"] == "microsoft/phi-2" and a.source["name"] == "phi-2:q8_0"
    assert store.find("phi-2").path == a.path                    # the tag may be left out when one is stored
    assert store.find("PHI-2:Q8_0").path == a.path
    assert store.find("phi-2:q4_0") is None
    add("phi-2:q4_0")
    with pytest.raises(Phi2Error, match="phi-2:q4_0, phi-2:q8_0"):
        store.find("phi-2")
    # an unfinished download of a name is no entry, and goes with the name
    partial = store.partial_path("phi-2:q8_0", "ab" * 32)
    partial.write_bytes(b"GGUF")
    assert [e.name for e in store.entries()].count("phi-2:q8_0") == 1
    store.remove("phi-2:q8_0")
    assert not a.path.exists() and not partial.exists() and not a.path.with_suffix(".json").exists()
    assert a.path.parent.exists()                                # phi-2:q4_0 still lives there
    store.remove("thebloke/phi-2-gguf:q8_0")
    assert not b.path.parent.exists()
    with pytest.raises(Phi2Error, match="phi2cpu list"):
        store.remove("phi-2:q8_0")


def test_resolve_path_wins_then_name_then_error(home, tmp_path, monkeypatch):
    entry = add("phi-2:q8_0")
    assert store.resolve("phi-2:q8_0") == entry.path
    assert store.resolve("phi-2") == entry.path
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "phi-2:q8_0"
    shutil.copyfile(phi2cpu.default_model_path(), local)
    assert store.resolve("phi-2:q8_0") == Path("phi-2:q8_0")     # an existing path wins
    with pytest.raises(ModelFileError) as e:
        store.resolve("phi-2:q5_k_m")
    assert "phi2cpu list" in str(e.value) and "phi2cpu pull" in str(e.value)
    with pytest.raises(ModelFileError, match="absent.gguf: no such file or directory"):
        store.resolve("absent.gguf")


def test_load_takes_a_store_name(home):
    add("phi-2:q8_0")
    m = phi2cpu.load("phi-2:q8_0", threads=1, n_ctx=64)
    assert Path(m.path) == store.path_for("phi-2:q8_0")
    with pytest.raises(ModelFileError, match="phi2cpu pull"):
        phi2cpu.load("phi-2:q4_0")


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture
def stocked(home) -> dict:
    add("phi-2:q8_0", repo="microsoft/phi-2")
    return {"PHI2CPU_HOME": str(home)}


def test_cli_list_shows_name_type_size_date(stocked):
    r = cli("list", env=stocked)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "SIZE", "MODIFIED"]
    size = phi2cpu.default_model_path().stat().st_size / 2**20
    assert row.split()[:4] == ["phi-2:q8_0", "Q8_0", f"{size:.2f}", "MiB"]
    modified = time.localtime(store.path_for("phi-2:q8_0").stat().st_mtime)
    assert " ".join(row.split()[4:]) == time.strftime("%Y-%m-%d %H:%M", modified)


def test_cli_list_empty_store(home):
    r = cli("list", env={"PHI2CPU_HOME": str(home)})
    assert r.returncode == 0 and r.stdout == ""
    assert "no models" in r.stderr and "phi2cpu pull" in r.stderr


def test_cli_rm(stocked, home):
    one_line_error(cli("rm", "phi-2:q8_0", "phi-2:q4_0", env=stocked), "phi-2:q4_0", "phi2cpu list")
    assert store.get("phi-2:q8_0") is not None                    # nothing deleted when one name is unknown
    r = cli("rm", "phi-2:q8_0", env=stocked)
    assert r.returncode == 0 and r.stdout.startswith("deleted phi-2:q8_0 ("), r
    assert files_in(home) == []


def test_run_info_perplexity_take_a_name(stocked, tmp_path):
    bundled = str(phi2cpu.default_model_path())
    for args in (["run", "{}", "def add(a, b):", "-n", "12", "--temp", "0", "-q"], ["info", "{}"]):
        by_name = cli(*[a.replace("{}", "phi-2:q8_0") for a in args], env=stocked)
        by_path = cli(*[a.replace("{}", bundled) for a in args], env=stocked)
        assert by_name.returncode == 0 and by_path.returncode == 0, (by_name.stderr, by_path.stderr)
        if args[0] == "info":
            assert str(store.path_for("phi-2:q8_0")) in by_name.stdout
            by_name.stdout = by_name.stdout.replace(str(store.path_for("phi-2:q8_0")), bundled)
        assert by_name.stdout == by_path.stdout
    text = tmp_path / "code.py"
    text.write_text("def add(a, b):\n    return a + b\n" * 40)
    r = cli("perplexity", "phi-2", str(text), "--window", "64", "--max-windows", "2", "-q", env=stocked)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("ppl = "), r.stderr
    one_line_error(cli("run", "phi-2:q4_0", "x", env=stocked), "phi-2:q4_0", "phi2cpu list", "phi2cpu pull")
    one_line_error(cli("info", "phi-2:q4_0", env=stocked), "phi2cpu pull")


def test_rm_deletes_the_models_repack_cache(stocked, home):
    m = phi2cpu.load("phi-2:q8_0", threads=1, n_ctx=64)
    assert m.repack_report["weights"] == "cache-written", m.repack_report
    caches = sorted((home / "repack").glob("*.rpk"))
    assert len(caches) == 1
    del m
    r = cli("rm", "phi-2:q8_0", env=stocked)
    assert r.returncode == 0, r.stderr
    assert not caches[0].exists()


def test_serve_takes_a_name_and_serves_it_under_that_name(stocked):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen(phi2cpu_cmd("serve", "phi-2:q8_0", "--port", "0", "--threads", "1",
                                        "--log-level", "warning"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **stocked})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        line = ""
        while "serving" not in line:
            line = lines.get(timeout=60)
        assert line.startswith("phi2cpu: serving phi-2:q8_0 at "), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["phi-2:q8_0"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------- whole files only

def test_quantize_ctrl_c_leaves_no_file(mini_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(phi2cpu_cmd("quantize", str(mini_dir), str(out / "m.q4_0.gguf"), "--type", "q4_0",
                                        "--quiet", slow_quantize=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until("the temporary file has data", lambda: any(p.stat().st_size > 1 << 20 for p in out.glob(".*.tmp")),
               proc)
    code, err = interrupt(proc)
    assert code == 130, err
    assert files_in(out) == []


def test_quantize_full_disk_leaves_no_file(mini_dir, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        r = cli("quantize", str(mini_dir), str(disk / "m.q4_0.gguf"), "--type", "q4_0", "--quiet")
        assert r.returncode == 1
        assert r.stderr.strip() == f"phi2cpu: error: {disk / 'm.q4_0.gguf'}: No space left on device", r.stderr
        assert files_in(disk) == []
