"""A model file (or its repack cache) truncated or rewritten in place while a model is loaded: the
process lives, the call that would have read a vanished page raises ModelFileError instead of
returning numbers made from it, and every later call raises too. A file replaced by a rename (how
`pull`, `quantize` and most tools write) leaves the loaded model working with the old bytes.

Each case runs in a child process, so a regression shows as a failed test (SIGBUS is exit -7), not a
dead test run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phi2cpu import _core
from phi2cpu.quantize import quantize

IDS = [50256, 464, 2068, 7586, 21831, 18045, 625, 262]

# The child: load, evaluate once, call `change(path)`, evaluate again, print what happened.
CHILD = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    import phi2cpu
    from phi2cpu.errors import ModelFileError
    path, cache, how = sys.argv[1], sys.argv[2] or False, sys.argv[3]
    m = phi2cpu.load(path, threads=2, n_ctx=2048, repack_cache=cache)
    target = m.repack_report["cache_path"] if how.startswith("cache-") else path
    ids = [50256, 464, 2068, 7586, 21831, 18045, 625, 262]
    before = m.logits(ids)
    m.reset()

    def truncate():
        os.truncate(target, 4096)

    def rewrite():  # same size, new bytes, as `cp other.gguf model.gguf` leaves it
        data = bytearray(open(target, "rb").read())
        data[-4096:] = bytes(4096)
        with open(target, "r+b") as f:
            f.write(data)

    def rename():
        tmp = target + ".new"
        with open(tmp, "wb") as f:
            f.write(b"GGUF" + bytes(4092))
        os.replace(tmp, target)

    change = {"truncate": truncate, "cache-truncate": truncate, "rewrite": rewrite, "rename": rename}
    if how == "truncate-mid-forward":
        # the file shrinks while a long forward is reading it: the read itself must not kill us
        threading.Timer(0.2, truncate).start()
        long_prompt = (ids * 300)[:2000]
        t0 = time.monotonic()
        try:
            m.eval(long_prompt)
            print("NO ERROR")
        except ModelFileError as e:
            print("ERROR", f"{time.monotonic() - t0:.2f}", e)
        sys.exit(0)
    change[how.removeprefix("cache-")]()
    try:
        after = m.logits(ids)
        print("SAME" if np.array_equal(before, after) else "DIFFERENT")
    except ModelFileError as e:
        print("ERROR", e)
    try:  # still unusable afterwards (or still fine after a rename)
        m.reset()
        m.logits(ids)
        print("AGAIN OK")
    except ModelFileError as e:
        print("AGAIN ERROR", e)
""")


@pytest.fixture(scope="module")
def mini(mini_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    out = {}
    for q in ("f16", "q4_0"):
        out[q] = d / f"mini.{q}.gguf"
        quantize(mini_dir, out[q], q, progress=False)
    return out


def child(model: Path, tmp_path: Path, how: str, cache: str = "") -> list[str]:
    local = tmp_path / model.name
    local.write_bytes(model.read_bytes())
    r = subprocess.run([sys.executable, "-c", CHILD, str(local), cache, how],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (
        f"child died ({signal.Signals(-r.returncode).name if r.returncode < 0 else r.returncode}):\n{r.stderr}")
    return r.stdout.splitlines()


@pytest.mark.parametrize("qtype", ["f16", "q4_0"])
def test_truncated_file_raises_and_stays_unusable(mini, tmp_path, qtype):
    out = child(mini[qtype], tmp_path, "truncate")
    assert out[0].startswith("ERROR ") and "shrank while in use" in out[0], out
    assert out[1].startswith("AGAIN ERROR") and "load it again" in out[1], out


def test_file_rewritten_in_place_raises(mini, tmp_path):
    out = child(mini["f16"], tmp_path, "rewrite")
    assert out[0].startswith("ERROR ") and "modified in place" in out[0], out
    assert out[1].startswith("AGAIN ERROR"), out


def test_file_replaced_by_rename_keeps_working(mini, tmp_path):
    assert child(mini["f16"], tmp_path, "rename") == ["SAME", "AGAIN OK"]


def test_truncated_while_a_forward_reads_it(mini, tmp_path):
    """F16 matrices are read in place from the file mapping on every token, so the truncation lands
    while the kernels read it: without the guard this is SIGBUS."""
    out = child(mini["f16"], tmp_path, "truncate-mid-forward")
    assert len(out) == 1 and out[0].startswith("ERROR ") and "shrank while in use" in out[0], out


def test_truncated_repack_cache_raises(mini, tmp_path):
    if _core.isa()[0] == "scalar":
        pytest.skip("the scalar kernel path reads GGUF blocks in place: no repack cache")
    out = child(mini["q4_0"], tmp_path, "cache-truncate", cache=str(tmp_path / "cache"))
    assert out[0].startswith("ERROR ") and "repack cache shrank while in use" in out[0], out
    assert out[1].startswith("AGAIN ERROR"), out


SERVER_CHILD = textwrap.dedent("""
    import os, sys
    import phi2cpu
    from fastapi.testclient import TestClient
    from phi2cpu.server import create_app
    path = sys.argv[1]
    with TestClient(create_app(phi2cpu.load(path, threads=1, n_ctx=64), "mini")) as c:
        body = {"prompt": "def f(x):", "max_tokens": 2}
        print(c.get("/health").status_code, c.post("/v1/completions", json=body).status_code)
        os.truncate(path, 4096)
        r = c.post("/v1/completions", json=body)
        print(r.status_code, r.json()["error"]["message"])
        h = c.get("/health")
        print(h.status_code, h.json()["status"], h.json()["error"])
""")


def test_server_reports_the_changed_file(mini, tmp_path):
    """The server lives on: the request gets the error, and /health turns 503 so an orchestrator
    restarts it."""
    pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
    pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")
    local = tmp_path / "mini.gguf"
    local.write_bytes(mini["f16"].read_bytes())
    r = subprocess.run([sys.executable, "-c", SERVER_CHILD, str(local)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0] == "200 200", out
    assert out[1].startswith("500 ") and "shrank while in use" in out[1], out
    assert out[2].startswith("503 error ") and "shrank while in use" in out[2], out
