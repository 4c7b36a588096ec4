"""A real `phi2cpu serve` in a subprocess on a free loopback port, for the server tests."""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest


def start_serve(*options: str, env: Optional[dict] = None, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start `phi2cpu serve --port 0 ...options` (in `env`, default this process's) and wait for
    its "serving ... at URL" line: the process and its base URL (http://HOST:PORT, without /v1).
    Fails the test if it never comes within `timeout` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "phi2cpu", "serve", "--port", "0", "--log-level", "warning", *options],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + timeout
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("phi2cpu: serving ") and " at http://" in line:
            url = line.split(" at ", 1)[1].split()[0].removesuffix("/v1")
    if url is None:
        proc.kill()
        pytest.fail("the server did not start:\n" + "".join(seen))
    return proc, url


def stop_serve(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the server and wait for it; fails the test if it does not stop within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the server did not stop on SIGTERM")
