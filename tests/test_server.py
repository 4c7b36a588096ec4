"""`phi2cpu serve` over real HTTP on loopback, driven by the official `openai` client: completions,
chat, streaming, bad requests, client disconnects and a burst of concurrent clients."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")
openai = pytest.importorskip("openai", reason="these tests drive the server with the openai client")

import phi2cpu  # noqa: E402
from phi2cpu import cli  # noqa: E402
from phi2cpu.server import chat_prompt  # noqa: E402
from serve_process import start_serve, stop_serve  # noqa: E402

NAME = "phi2-mini-code.q8_0"  # the bundled model's file name without .gguf
CTX = 2048


class Server:
    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post_raw(self, path: str, data: bytes) -> tuple:
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server():
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX))
    yield Server(proc, url)
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local():
    """The same model in this process: what the server's answers must equal."""
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX)


# --- happy paths ---------------------------------------------------------------------------------

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    h = server.get("/health")
    assert h["status"] == "ok" and h["model"] == NAME and h["requests_running"] == 0


def test_completion_equals_library(client, local):
    prompt = "def fibonacci(n):"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.model == NAME and r.id.startswith("cmpl-")
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.text == local.generate(prompt, max_tokens=16, temperature=0)
    assert r.usage.prompt_tokens == len(local.tokenize(prompt))
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_completion_stop_string(client, local):
    r = client.completions.create(model=NAME, prompt="import os\nimport sys\n", max_tokens=40, temperature=0,
                                  stop=["\n"])
    full = local.generate("import os\nimport sys\n", max_tokens=40, temperature=0)
    assert "\n" in full  # else the test would prove nothing
    assert r.choices[0].text == full.split("\n")[0] and r.choices[0].finish_reason == "stop"


def test_completion_stream_equals_non_stream(client):
    kw = dict(model=NAME, prompt="class Stack:\n", max_tokens=24, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2 and "".join(texts) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=NAME, prompt="def parse(path):", max_tokens=16, temperature=0.9, seed=7)
    a, b = (client.completions.create(**kw).choices[0].text for _ in range(2))
    assert a == b


def test_prompt_list_and_token_ids(client, local):
    r = client.completions.create(model=NAME, prompt=["x = 1", "import re"], max_tokens=6, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [local.generate(p, max_tokens=6, temperature=0)
                                           for p in ("x = 1", "import re")]
    ids = local.tokenize("import re")
    assert client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0).choices[0].text \
        == r.choices[1].text


MESSAGES = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Write a function that adds two numbers."}]


def test_chat_completion_equals_library(client, local):
    prompt, stops = chat_prompt(MESSAGES)
    assert prompt.startswith("You write Python.\n") and prompt.endswith(":")  # the reply's cue
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == local.generate(prompt, max_tokens=24, temperature=0, stop=stops).lstrip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(local.tokenize(prompt))


def test_chat_stream_equals_non_stream(client):
    kw = dict(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1


# --- concurrency -----------------------------------------------------------------------------------

def test_burst_of_concurrent_clients_gets_sequential_answers(client):
    """8 clients at once, half streaming, different prompts and lengths: each gets exactly what it
    gets alone, so no request saw another's cache and nothing was lost."""
    prompts = ["def add(a, b):", "import numpy as np\n", "class Node:", "for i in range(10):",
               "# read a file\n", "def main():\n", "x = [1, 2, 3]\n", "try:\n"]

    def ask(i: int) -> str:
        kw = dict(model=NAME, prompt=prompts[i], max_tokens=8 + 2 * i, temperature=0)
        if i % 2:
            return "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
        return client.completions.create(**kw).choices[0].text

    alone = [ask(i) for i in range(len(prompts))]
    assert len(set(alone)) == len(prompts)
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, range(len(prompts))))
    assert together == alone


def test_health_answers_during_generation_and_disconnect_cancels(server, client):
    kw = dict(model=NAME, prompt="x = 1\nx = 1\n", max_tokens=CTX - 16, temperature=0)
    stream = client.completions.create(**kw, stream=True)
    it = iter(stream)
    for _ in range(3):
        next(it)
    t = time.monotonic()
    h = server.get("/health")
    assert h["requests_running"] == 1 and time.monotonic() - t < 1.0
    stream.close()
    deadline = time.monotonic() + 5
    while server.get("/health")["requests_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.get("/health")["requests_running"] == 0, "the abandoned stream kept generating"
    # the full ~2000 tokens take far longer than that; the model is free for the next request at once
    r = client.completions.create(model=NAME, prompt="x = 1\nx = 1\n", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4


# --- bad requests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, param, words", [
    (dict(prompt="x", temperature=5), "temperature", "temperature"),
    (dict(prompt="x", top_p=0), "top_p", "top_p"),
    (dict(prompt="x", max_tokens=0), "max_tokens", "max_tokens"),
    (dict(prompt=None), "prompt", "prompt is required"),
    (dict(prompt="x", n=0), "n", "n must be an integer in [1, 128]"),
    (dict(prompt="x", suffix="y"), "suffix", "fill in the middle"),
    (dict(prompt="x", max_tokens=0, echo=False), "max_tokens", "0 only with echo"),
    (dict(prompt="x", stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (dict(prompt="x", logit_bias={"99999999": 1}), "logit_bias", "outside"),
    (dict(prompt="x = 1\n" * 700), "prompt", "context holds 2048"),
])
def test_bad_completion_requests_are_400(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, **{"max_tokens": 4, **kw})
    err = e.value.body
    assert e.value.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"]


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "hi"}], "role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "text parts"),
])
def test_bad_chat_requests_are_400(client, messages, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=4)
    assert words in e.value.body["message"]


def test_any_model_name_is_served_without_alias(client):
    """Without --alias the one model answers to any name (tests/test_server_deploy.py: with one)."""
    r = client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=2, temperature=0)
    assert r.model == NAME and r.usage.completion_tokens == 2
    with pytest.raises(openai.NotFoundError) as e:  # the catalogue lists only the served id
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found" and NAME in e.value.body["message"]


def test_malformed_bodies(server):
    status, body = server.post_raw("/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = server.post_raw("/v1/chat/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = server.post_raw("/v1/nothing", b"{}")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_server_still_serves_after_errors(client):
    assert client.completions.create(model=NAME, prompt="def f():", max_tokens=3, temperature=0).choices[0].text


# --- command line --------------------------------------------------------------------------------

def test_serve_without_server_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "phi2cpu[server]"' in err


def test_serve_port_in_use_is_one_line_error(server):
    port = server.url.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "serve", str(phi2cpu.default_model_path()),
                        "--port", port, "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("phi2cpu: error: cannot listen on"), \
        r.stderr


# --- sampling options, disconnects and a full queue ------------------------------------------------

def test_logit_bias_and_penalties_reach_the_sampler(client, local):
    fields = set(phi2cpu.sampling.SamplingParams.__dataclass_fields__)
    if not {"logit_bias", "presence_penalty", "frequency_penalty"} <= fields:
        pytest.skip("this version's sampler has no logit_bias / penalties")
    kw = dict(model=NAME, prompt="def add(a, b):", max_tokens=8, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    first = local.tokenize(plain)[0]
    banned = client.completions.create(**kw, logit_bias={str(first): -100}).choices[0].text
    assert banned != plain
    assert banned == local.generate("def add(a, b):", 8, temperature=0, logit_bias={first: -100.0})
    kw["max_tokens"] = 32
    penalized = client.completions.create(**kw, frequency_penalty=2.0, presence_penalty=0.5).choices[0].text
    assert penalized != client.completions.create(**kw).choices[0].text
    assert penalized == local.generate("def add(a, b):", 32, temperature=0, frequency_penalty=2.0,
                                       presence_penalty=0.5)


def test_non_streaming_disconnect_cancels(server):
    import socket

    body = json.dumps({"prompt": "x = 1\nx = 1\n", "max_tokens": CTX - 16, "temperature": 0}).encode()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 5
        while not server.get("/health")["requests_running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.get("/health")["requests_running"] == 1
    deadline = time.monotonic() + 5
    while server.get("/health")["requests_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.get("/health")["requests_running"] == 0, "the abandoned request kept generating"


def test_full_queue_is_503():
    """In-process server with room for one waiting request: a third concurrent one is refused."""
    import uvicorn

    from phi2cpu.server import create_app

    model = phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX)
    server = uvicorn.Server(uvicorn.Config(create_app(model, NAME, max_queue=1), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        health = Server(None, f"http://127.0.0.1:{port}")
        long = dict(model=NAME, prompt="x = 1\nx = 1\n", max_tokens=CTX - 16, temperature=0, stream=True)
        running = c.completions.create(**long)
        next(iter(running))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.completions.create, model=NAME, prompt="x", max_tokens=2, temperature=0)
            while health.get("/health")["requests_waiting"] < 1:
                time.sleep(0.02)
            with pytest.raises(openai.InternalServerError) as e:
                c.completions.create(model=NAME, prompt="y", max_tokens=2)
            assert e.value.status_code == 503 and "busy" in e.value.body["message"]
            running.close()
            assert waiting.result(timeout=60).choices[0].text is not None  # the waiting one still ran
    finally:
        server.should_exit = True
        thread.join(timeout=20)
