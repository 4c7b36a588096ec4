"""Prompt lookup from the outside: `run --lookup`, chat sessions, the Python API and the server's
`lookup` request field and `serve --lookup` default."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import phi2cpu
from phi2cpu.chat import ChatSession
from phi2cpu.errors import SamplingError

PROMPT = "for i in range(10):\n    print(i)\nfor j in range(10):\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi2cpu", *args], capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi2cpu: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def local():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=512)


def test_run_lookup_prints_the_plain_output_and_the_kept_share():
    base = ["run", PROMPT, "-n", "24", "--temp", "0", "--no-escape"]
    plain = cli(*base)
    look = cli(*base, "--lookup", "--lookup-k", "4", "--lookup-ngram", "2", "--lookup-fixed")
    assert plain.returncode == look.returncode == 0, look.stderr
    assert look.stdout == plain.stdout and look.stdout
    assert "guessed tokens kept" in look.stderr and "guessed" not in plain.stderr


@pytest.mark.parametrize("options, words", [
    (["--lookup", "--lookup-k", "0"], ["lookup k"]),
    (["--lookup", "--lookup-ngram", "1", "--lookup-ngram-min", "2"], ["must not exceed"]),
    (["--lookup-k", "4"], ["need --lookup"]),
])
def test_run_lookup_bad_settings_are_one_line_errors(options, words):
    one_line_error(cli("run", "x", "-n", "2", *options), *words)


def test_api_generate_and_complete_take_lookup(local):
    text = local.generate(PROMPT, max_tokens=24, temperature=0)
    assert local.generate(PROMPT, max_tokens=24, temperature=0, lookup=True) == text
    c = local.complete(PROMPT, max_tokens=24, temperature=0, lookup={"k": 2, "adaptive": False})
    assert c.text == text and c.stats.drafted_tokens > 0
    with pytest.raises(SamplingError, match="lookup"):
        local.generate(PROMPT, lookup="fast")


def test_chat_session_with_lookup_says_what_one_without_says(local):
    replies = []
    for lookup in (None, dict(k=4, adaptive=False)):
        s = ChatSession(local, max_tokens=24, lookup=lookup, temperature=0)
        replies.append([s.ask("print the numbers 1 to 3"), s.ask("and again")])
    assert replies[0] == replies[1]
    with pytest.raises(SamplingError, match="lookup k"):
        ChatSession(local, lookup=0)


# --- the server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    pytest.importorskip("fastapi", reason="the server needs fastapi")
    pytest.importorskip("uvicorn", reason="the server needs uvicorn")
    from serve_process import start_serve, stop_serve

    proc, url = start_serve("--threads", "1", "--ctx-size", "512", "--lookup", "--lookup-k", "4", "--lookup-fixed")
    yield url
    stop_serve(proc)


def _post(url: str, body: dict):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("lookup", ["default", False, True, {"k": 2, "ngram_max": 2}])
def test_server_lookup_gives_the_librarys_plain_text(server, local, lookup):
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "logprobs": 1}
    if lookup != "default":
        body["lookup"] = lookup
    status, text = _post(server, body)
    assert status == 200, text
    choice = json.loads(text)["choices"][0]
    assert choice["text"] == local.generate(PROMPT, max_tokens=24, temperature=0)
    assert len(choice["logprobs"]["tokens"]) == 24


def test_server_lookup_streams_and_stops(server, local):
    want = local.generate(PROMPT, max_tokens=40, temperature=0, stop=["\")\nprint"])
    status, raw = _post(server, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": ["\")\nprint"],
                                 "stream": True})
    assert status == 200
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("lookup, words", [({"k": 0}, "k"), ({"ngram_min": 3, "ngram_max": 2}, "must not exceed"),
                                           ({"q": 1}, "q"), ("yes", "lookup")])
def test_server_bad_lookup_is_400(server, lookup, words):
    status, text = _post(server, {"prompt": "x", "max_tokens": 2, "lookup": lookup})
    assert status == 400, text
    err = json.loads(text)["error"]
    assert words in err["message"] and (err["param"] or "").startswith("lookup")
