"""`phi2cpu serve` against hostile clients, over loopback: bodies over the size limit, JSON nested
too deep, loosely typed fields, clients that trickle bytes, and prompts large enough to stall the
event loop or to leave memory behind."""
from __future__ import annotations

import http.client
import json
import random
import socket
import string
import subprocess
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")

import phi2cpu  # noqa: E402
from phi2cpu.server_limits import DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH, json_depth  # noqa: E402
from serve_process import start_serve, stop_serve  # noqa: E402

CTX = 2048
READ_TIMEOUT = 2.0  # seconds; the default is 20, shortened so the slow-client tests end quickly
LIMIT = DEFAULT_MAX_BODY_BYTES  # the server runs with the documented default


class Server:
    def __init__(self, proc: subprocess.Popen, host: str, port: int):
        self.proc, self.host, self.port = proc, host, port

    def request(self, method: str, path: str, body: object = None, raw: bytes = None) -> tuple:
        """(status, parsed JSON body, seconds taken) over a fresh connection."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        t = time.monotonic()
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
            return r.status, json.loads(payload), time.monotonic() - t
        finally:
            conn.close()

    def post(self, body: object = None, raw: bytes = None, path: str = "/v1/completions") -> tuple:
        status, payload, _ = self.request("POST", path, body, raw)
        return status, payload

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


def _start(*options: str) -> Server:
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX), "--read-timeout", str(READ_TIMEOUT),
                            *options)
    url = url.removeprefix("http://")
    host, port = url.rsplit(":", 1)
    return Server(proc, host, int(port))


@pytest.fixture(scope="module")
def server():
    s = _start()
    yield s
    stop_serve(s.proc)


@pytest.fixture
def fresh_server():
    """A server of its own, so its idle memory is not what earlier tests left behind."""
    s = _start()
    yield s
    stop_serve(s.proc)


def _read_response(s: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or `limit_s` passes)."""
    return _closed_within(s, limit_s)[1]


def _closed_within(s: socket.socket, limit_s: float) -> tuple:
    """(whether the server closes `s` within `limit_s` seconds, what it sent before)."""
    s.settimeout(0.2)
    got, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def _status_and_error(response: bytes) -> tuple:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"], head.lower()


def _words(n_bytes: int, seed: int = 0) -> str:
    """Random letter words: the slowest ordinary text to tokenize, and the most words to cache."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        w = "".join(rng.choices(string.ascii_letters, k=rng.randint(3, 40)))
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)[:n_bytes]


def _padded(body: dict, size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes, filled out with an ignored `user` field."""
    body = {**body, "user": ""}
    fill = size - len(json.dumps(body).encode())
    assert fill >= 0
    return json.dumps({**body, "user": "u" * fill}).encode()


# --- body size --------------------------------------------------------------------------------------

def test_body_at_the_limit_is_served(server):
    raw = _padded({"prompt": "def f():", "max_tokens": 2, "temperature": 0}, LIMIT)
    assert len(raw) == LIMIT
    status, body = server.post(raw=raw)
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_declared_length_over_the_limit_is_413_before_the_body_is_sent(server):
    with server.connect() as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))  # and not one byte of the body
        status, err, head = _status_and_error(_read_response(s, 5))
    assert status == 413 and err["type"] == "invalid_request_error" and err["code"] == "request_too_large"
    assert str(LIMIT) in err["message"] and b"connection: close" in head


@pytest.mark.parametrize("chunked", [True, False])
def test_body_growing_past_the_limit_is_413(server, chunked):
    """A chunked body is refused once it passes the limit; a 10 MB prompt sent in full (the
    reproducer that once blocked /health for 28 s) is refused by its Content-Length."""
    prompt = b'{"prompt": "' + b"x = 1 " * ((10 << 20) // 6) + b'"}'
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(prompt)
    with server.connect() as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"%s\r\n\r\n" % framing)
        try:
            for i in range(0, len(prompt), 64 << 10):
                chunk = prompt[i:i + (64 << 10)]
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after refusing
        status, err, _ = _status_and_error(_read_response(s, 5))
    assert status == 413 and err["code"] == "request_too_large"
    assert server.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("head", [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 << 10) + b"\r\n\r\n",  # over 16 KiB
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",  # TLS on the HTTP port
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
])
def test_invalid_http_is_400_in_openai_shape(server, head):
    with server.connect() as s:
        s.sendall(head[:-4])  # the head's limit applies to what is buffered before it is complete
        time.sleep(0.2)
        try:
            s.sendall(head[-4:])
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, err, head_lines = _status_and_error(_read_response(s, 5))
    assert status == 400 and err["code"] == "invalid_http_request" and b"application/json" in head_lines


def test_max_body_bytes_option():
    server = _start("--max-body-bytes", "1000")
    try:
        raw = _padded({"prompt": "x", "max_tokens": 1}, 1000)
        assert server.post(raw=raw)[0] == 200
        status, body = server.post(raw=raw[:-1] + b' }')
        assert status == 413 and "at most 1000" in body["error"]["message"]
    finally:
        stop_serve(server.proc)


# --- JSON depth ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"prompt": "x", "a": ' + b"[" * 1000 + b"]" * 1000 + b"}"])
def test_deep_json_is_400_in_openai_shape(server, raw):
    status, body = server.post(raw=raw)
    assert status == 400 and body["error"]["code"] == "json_too_deep"
    assert f"at most {MAX_JSON_DEPTH}" in body["error"]["message"]


def test_json_at_the_depth_limit_is_served(server):
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # inside the top-level object
    raw = b'{"prompt": "x = 1", "max_tokens": 1, "user": %s}' % nested.encode()
    assert json_depth(raw) == MAX_JSON_DEPTH
    status, body = server.post(raw=raw)
    # past the depth limit, to validation: `user` is a string (types are strict), so this is its 400
    assert status == 400 and body["error"]["param"] == "user" and body["error"]["code"] is None, body
    status, body = server.post(raw=raw.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1))
    assert status == 400 and body["error"]["code"] == "json_too_deep"


@pytest.mark.parametrize("raw, depth", [
    (b'{}', 1), (b'"[[["', 0), (b'{"a": "\\"[[", "b": [[{}]]}', 4), (b'[["\\\\", []]]', 3), (b'7', 0),
])
def test_json_depth_skips_strings(raw, depth):
    assert json_depth(raw) == depth


# --- strict types ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, param, words", [
    ({"n": True}, "n", "integer"),
    ({"n": 1.0}, "n", "integer"),
    ({"n": "1"}, "n", "integer"),
    ({"best_of": True}, "best_of", "integer"),
    ({"echo": 0}, "echo", "true or false"),
    ({"seed": 2 ** 64}, "seed", "18446744073709551615"),
    ({"seed": -1}, "seed", "seed"),
    ({"seed": True}, "seed", "integer"),
    ({"max_tokens": 2 ** 63}, "max_tokens", "max_tokens"),
    ({"top_k": 10 ** 30}, "top_k", "top_k"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
    ({"stream": False, "stream_options": {}}, "stream_options", "only allowed when stream"),
    ({"model": 7}, "model", "string"),
    ({"logit_bias": {"+5": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"\u0665": 1}}, "logit_bias", "token ids"),  # an Arabic-Indic digit five
    ({"stop": ["x" * 10_000, 5]}, "stop", "..."),  # the value is cut short in the message
])
def test_loosely_typed_fields_are_400(server, fields, param, words):
    status, body = server.post({"prompt": "x", "max_tokens": 1, **fields})
    err = body["error"]
    assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == param, body
    assert words in err["message"] and len(err["message"]) < 300


@pytest.mark.parametrize("fields", [{"seed": 2 ** 64 - 1}, {"n": 1, "best_of": 1, "echo": False},
                                    {"stream": True, "stream_options": {"include_usage": True}}])
def test_fields_at_their_limits_are_served(server, fields):
    body = json.dumps({"prompt": "x", "max_tokens": 1, "temperature": 0.5, **fields}).encode()
    with server.connect() as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        response = _read_response(s, 30)
    assert response.startswith(b"HTTP/1.1 200"), response[:300]


# --- the event loop stays free ----------------------------------------------------------------------

MAX_SIZE_BODIES = {  # 1 MiB bodies that cost the server the most work of each kind
    # four prompts each just under the most bytes the context can hold: tokenized, then refused
    "prompts": lambda: _padded({"prompt": [_words(255 << 10, seed=i) for i in range(4)], "max_tokens": 1}, LIMIT),
    "messages": lambda: _padded({"messages": [{"role": "user", "content": "a"}] * 30_000, "max_tokens": 1},
                                LIMIT),
    "logit_bias": lambda: _padded({"prompt": "x", "max_tokens": 1, "logit_bias": {str(i): 1 for i in range(50_000)}},
                                  LIMIT),
    "objects": lambda: _padded({"prompt": "x", "max_tokens": 1, "metadata": [{"a": 1}] * 100_000}, LIMIT),
    "brackets": lambda: b"[" * LIMIT,
}


@pytest.mark.parametrize("kind", list(MAX_SIZE_BODIES))
def test_health_answers_during_a_max_size_request(server, kind):
    """Parsing, validating and tokenizing run off the event loop: /health answers all the while."""
    raw = MAX_SIZE_BODIES[kind]()
    path = "/v1/chat/completions" if kind == "messages" else "/v1/completions"
    latencies, results = [], []
    worker = threading.Thread(target=lambda: results.extend(server.post(raw=raw, path=path) for _ in range(3)))
    worker.start()
    time.sleep(0.01)
    while worker.is_alive():
        status, h, seconds = server.request("GET", "/health")
        assert status == 200 and h["status"] == "ok"
        latencies.append(seconds)
        time.sleep(0.005)
    worker.join()
    assert len(results) == 3 and {r[0] for r in results} <= {200, 400}
    if kind == "prompts":
        assert all(r[1]["error"]["code"] == "context_length_exceeded" for r in results)
    assert latencies, "the large requests ended before /health was asked"
    print(f"\n/health during 3 max-size requests ({kind}): {len(latencies)} answers, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 2.0  # generous: the point is that it answers, not how fast this machine is


def test_prompt_over_the_context_in_bytes_is_refused_untokenized(server):
    raw = _padded({"prompt": "x" * (LIMIT - 200), "max_tokens": 1}, LIMIT)
    status, body, seconds = server.request("POST", "/v1/completions", raw=raw)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "bytes" in body["error"]["message"]


# --- memory -----------------------------------------------------------------------------------------

def test_rss_returns_to_idle_after_large_requests(fresh_server):
    """After max-size bodies of every kind, and a prompt that fills the context."""
    server = fresh_server
    for _ in range(2):  # warm up every path once, with small inputs
        server.post({"prompt": "def f():", "max_tokens": 4, "temperature": 0})
        server.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                    path="/v1/chat/completions")
        server.request("GET", "/health")
    time.sleep(0.5)
    idle = server.rss_kib()
    big = _words(255 << 10, seed=2)
    requests = [
        ("/v1/completions", _padded({"prompt": [big, _words(255 << 10, seed=3)], "max_tokens": 1}, LIMIT)),
        ("/v1/completions", _padded({"prompt": [_words(200 << 10, seed=s) for s in range(4, 8)],
                                     "max_tokens": 1}, LIMIT)),
        ("/v1/completions", _padded({"prompt": "y" * (LIMIT - 100), "max_tokens": 1}, LIMIT)),
        ("/v1/completions", _padded({"prompt": [i % 50_000 for i in range(130_000)], "max_tokens": 1}, LIMIT)),
        ("/v1/chat/completions", _padded({"messages": [{"role": "user", "content": _words(4000, seed=s)}
                                                      for s in range(200)], "max_tokens": 1}, LIMIT)),
        ("/v1/completions", b"[" * LIMIT),
        # ~1900 tokens: the prompt fills almost every position of the KV cache
        ("/v1/completions", json.dumps({"prompt": "x = 1\n" * 480, "max_tokens": 8}).encode()),
    ]
    after = []
    for path, raw in requests:
        status, _ = server.post(raw=raw, path=path)
        assert status in (400, 200), status
        time.sleep(0.2)
        after.append(server.rss_kib())
    print(f"\nserver RSS: idle {idle / 1024:.1f} MiB; after each max-size request "
          f"{', '.join(f'{a / 1024:.1f}' for a in after)} MiB")
    assert max(after) <= idle * 1.10


# --- slow clients -----------------------------------------------------------------------------------

def _trickle(s: socket.socket, data: bytes, gap: float, limit_s: float) -> tuple:
    """Send `data` a byte every `gap` seconds until the server closes the connection. Returns
    (seconds until closed, what the server sent), or (None, ...) if still open after limit_s."""
    t = time.monotonic()
    s.settimeout(gap)
    got = b""
    for i in range(len(data)):
        if time.monotonic() - t > limit_s:
            return None, got
        try:
            s.send(data[i:i + 1])
            chunk = s.recv(65536)
            if not chunk:
                return time.monotonic() - t, got
            got += chunk
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t, got
    return None, got


HEADERS = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("prefix, trickled", [
    (b"", HEADERS + b"X-Slow: " + b"a" * 4000),  # headers, one byte at a time
    (HEADERS + b"Content-Length: 4000\r\n\r\n", b"x" * 4000),  # a body, one byte at a time
])
def test_slow_client_gets_408_and_is_dropped(server, prefix, trickled):
    with server.connect() as s:
        s.sendall(prefix)
        closed_after, got = _trickle(s, trickled, gap=0.25, limit_s=READ_TIMEOUT + 6)
        got += _read_response(s, 1)
    assert closed_after is not None, "the slow client was never dropped"
    print(f"\nslow client dropped after {closed_after:.2f} s (read timeout {READ_TIMEOUT} s)")
    assert READ_TIMEOUT - 0.5 <= closed_after
    status, err, _ = _status_and_error(got)
    assert status == 408 and err["code"] == "request_timeout"


def test_many_silent_connections_are_closed_and_health_answers(server):
    t = time.monotonic()
    socks = [server.connect() for _ in range(40)]
    try:
        for s in socks[:20]:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # a request line, then nothing
        status, _, seconds = server.request("GET", "/health")
        assert status == 200
        ends = [_closed_within(s, max(0.1, READ_TIMEOUT + 5 - (time.monotonic() - t))) for s in socks]
        closed = [c for c, _ in ends]
        assert all(closed), f"{closed.count(False)} of {len(socks)} idle connections were left open"
        # a begun request is told why; a connection that sent nothing is closed without a word
        assert all(got.startswith(b"HTTP/1.1 408 ") for _, got in ends[:20])
        assert all(got == b"" for _, got in ends[20:])
        print(f"\n40 idle connections all closed {time.monotonic() - t:.2f} s after opening; "
              f"/health meanwhile took {seconds * 1000:.1f} ms")
    finally:
        for s in socks:
            s.close()


def test_keep_alive_and_long_generations_are_not_cut(server):
    """The deadline covers reading a request, not answering it: a generation that runs past it
    completes, and a kept-alive connection serves its next request."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        t = time.monotonic()
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "x = 1\n", "max_tokens": CTX - 16, "temperature": 0, "stream": True}),
            headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        events = [line for line in r.read().decode().splitlines() if line.startswith("data: {")]
        took = time.monotonic() - t
        assert r.status == 200 and json.loads(events[-1][6:])["choices"][0]["finish_reason"] == "length"
        time.sleep(0.5)
        conn.request("GET", "/health")  # the same connection, kept alive
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        closed, got = _closed_within(conn.sock, READ_TIMEOUT + 3)  # then idle: closed, no 408
        assert closed and got == b""
        print(f"\na {CTX - 16}-token stream took {took:.1f} s with a {READ_TIMEOUT} s read timeout")
    finally:
        conn.close()


# --- tokenizer pieces the server relies on -----------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=64).tokenizer


def test_encode_releasing_the_gil_gives_the_same_ids(tokenizer):
    for text in ["def f(x):\n    return x", "héllo wörld 😀", _words(5000), "<|endoftext|> a", ""]:
        assert tokenizer.encode(text, release_gil=True) == tokenizer.encode(text)


def test_max_token_bytes_bounds_the_token_count(tokenizer):
    m = tokenizer.max_token_bytes
    assert m == max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.n_vocab))
    for text in [" " * 5000, "\t" * 3000, "x" * 5000, _words(5000)]:
        assert len(tokenizer.encode(text)) >= len(text.encode()) / m
