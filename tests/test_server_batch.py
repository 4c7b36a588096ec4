"""The server's slots over real HTTP on loopback (uvicorn in a thread of this process, so the
engine's step log can be read): answers that do not depend on the other requests nor on the
prefix cache, chunked prefill between other slots' decode steps, the prefix cache across
requests, FIFO admission, a full queue, disconnects and /health."""
from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")

import phi2cpu  # noqa: E402
from phi2cpu.server import create_app  # noqa: E402
from phi2cpu.modelinfo import kv_bytes_per_seq  # noqa: E402
from phi2cpu.server_limits import default_parallel  # noqa: E402

CTX = 512
LONG = "def total(values):\n    result = 0\n    for v in values:\n        result += v\n    return result\n\n" * 8
PROMPTS = ["import os\n", "class Stack:\n    def __init__(self):\n", LONG, "def add(a, b):",
           "# sort a list\n" * 5, "x = [", "for i in range(10):\n    print(", "def main():\n    args ="]


def load(n_seq: int):
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX, n_seq=n_seq)


@pytest.fixture(scope="module")
def local():
    """One sequence, the library: what every answer must equal."""
    return load(1)


@contextmanager
def serving(model, **kw):
    app = create_app(model, "m", **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Client(sock.getsockname()[1], app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Client:
    def __init__(self, port: int, app):
        self.port, self.app = port, app
        self.sched = app.state.engine.scheduler

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def post(self, path: str, body: dict):
        c = self._conn()
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = json.loads(r.read())
        c.close()
        return r.status, data, r.headers

    def complete(self, **body) -> dict:
        status, data, _ = self.post("/v1/completions", body)
        assert status == 200, data
        return data

    def get(self, path: str):
        c = self._conn()
        c.request("GET", path)
        r = c.getresponse()
        data = r.read()
        c.close()
        return json.loads(data) if path != "/metrics" else data.decode()

    def stream(self, **body):
        """An open streaming completion: (connection, response); read lines from the response."""
        c = self._conn()
        c.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
        return c, c.getresponse()

    def wait(self, check, what: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.get("/health")
            if check(h):
                return h
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}: {h}")


def first_event(resp) -> dict:
    for line in resp:
        if line.startswith(b"data: {"):
            return json.loads(line[6:])
    pytest.fail("the stream ended without an event")


def evaluated(client: Client) -> float:
    for line in client.get("/metrics").splitlines():
        if line.startswith("phi2cpu_prompt_tokens_evaluated_total "):
            return float(line.split()[1])
    pytest.fail("no phi2cpu_prompt_tokens_evaluated_total in /metrics")


GREEDY = dict(prompt="def fibonacci(n):\n", max_tokens=24, temperature=0, logprobs=2)
SEEDED = dict(prompt="class Queue:\n", max_tokens=24, temperature=0.9, top_k=40, seed=7, logprobs=2)


def answer(data: dict) -> tuple:
    (ch,) = data["choices"]
    return ch["text"], ch["logprobs"]["token_logprobs"], ch["logprobs"]["top_logprobs"], ch["finish_reason"]


def test_answers_do_not_depend_on_the_other_requests_or_the_prefix_cache(local):
    want = {}
    for name, req in (("greedy", GREEDY), ("seeded", SEEDED)):
        kw = {k: v for k, v in req.items() if k not in ("prompt", "max_tokens", "logprobs")}
        c = local.complete(req["prompt"], req["max_tokens"], **kw)
        want[name] = (c.text, c.token_logprobs)
    others = [dict(prompt=p, max_tokens=8 + 5 * i, temperature=0.8 if i % 2 else 0, seed=i) for i, p in enumerate(PROMPTS[:7])]
    with serving(load(8), batch_chunk=16) as client:
        alone = {"greedy": answer(client.complete(**GREEDY)), "seeded": answer(client.complete(**SEEDED))}
        for name in want:
            assert (alone[name][0], alone[name][1]) == want[name]  # the library's text and log-probs, exactly
        for name, req in (("greedy", GREEDY), ("seeded", SEEDED)):
            client.sched.step_log.clear()
            with ThreadPoolExecutor(8) as pool:
                futs = [pool.submit(client.complete, **o) for o in others] + [pool.submit(client.complete, **req)]
                amid = answer(futs[-1].result())
                for f in futs:
                    f.result()
            assert amid == alone[name]
            assert max(len(s.decode) + len(s.chunks) for s in client.sched.step_log) > 1  # it did share steps
            again = client.complete(**req)  # its prompt is cached now
            assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1
            assert answer(again) == alone[name]


def test_chat_resending_its_history_evaluates_only_the_new_turn(local):
    turn1 = [{"role": "user", "content": "Write a function that adds two numbers."}]
    with serving(load(2)) as client:
        s, r1, _ = client.post("/v1/chat/completions", dict(messages=turn1, max_tokens=16, temperature=0))
        assert s == 200 and r1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        turn2 = turn1 + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                         {"role": "user", "content": "Now make it multiply."}]
        before = evaluated(client)
        s, r2, _ = client.post("/v1/chat/completions", dict(messages=turn2, max_tokens=16, temperature=0))
        assert s == 200
        used = r2["usage"]
        new = used["prompt_tokens"] - used["prompt_tokens_details"]["cached_tokens"]
        assert used["prompt_tokens_details"]["cached_tokens"] >= r1["usage"]["prompt_tokens"] - 1
        assert evaluated(client) - before == new  # what the model actually processed
        assert new < used["prompt_tokens"] // 2
    with serving(load(1)) as fresh:  # the same reply from an empty cache
        s, cold, _ = fresh.post("/v1/chat/completions", dict(messages=turn2, max_tokens=16, temperature=0))
        assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cold["choices"][0]["message"]["content"] == r2["choices"][0]["message"]["content"]


def test_a_prefix_is_copied_from_a_busy_slot():
    with serving(load(2)) as client:
        c, resp = client.stream(prompt=LONG, max_tokens=200, temperature=0, ignore_eos=True)
        first_event(resp)  # LONG is in slot 0 and decoding
        before = evaluated(client)
        r = client.complete(prompt=LONG + "def mean(values):", max_tokens=4, temperature=0)
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= r["usage"]["prompt_tokens"] - 8
        assert evaluated(client) - before == r["usage"]["prompt_tokens"] - r["usage"]["prompt_tokens_details"]["cached_tokens"]
        c.close()


def test_long_prompt_is_chunked_between_decode_steps():
    chunk = 8
    with serving(load(2), batch_chunk=chunk) as client:
        client.sched.grace_seconds = 30  # wait for the decoding stream at every step, however loaded the machine
        c, resp = client.stream(prompt="def f(x):", max_tokens=400, temperature=0, ignore_eos=True)
        first_event(resp)
        client.sched.step_log.clear()
        r = client.complete(prompt=LONG, max_tokens=2, temperature=0)
        n = r["usage"]["prompt_tokens"]
        c.close()
    log = list(client.sched.step_log)
    chunked = [s for s in log if s.chunks]
    assert all(s.prompt_tokens <= chunk for s in log)
    assert sum(s.prompt_tokens for s in log) >= n - 1
    assert len(chunked) >= (n - 1) // chunk
    # every step that fed a piece of the long prompt also fed the other stream its next token
    assert all(len(s.decode) >= 1 for s in chunked), log


def test_n_choices_run_in_slots_of_their_own(local):
    with serving(load(4)) as client:
        client.sched.grace_seconds = 30  # no step while a choice is still sampling
        r = client.complete(prompt="def parse(path):\n", n=3, max_tokens=6, temperature=1.0, seed=11, logprobs=0)
        log = list(client.sched.step_log)
    assert max(len(s.decode) for s in log) == 3  # the three choices decoded together
    texts = [ch["text"] for ch in sorted(r["choices"], key=lambda ch: ch["index"])]
    assert texts == [local.complete("def parse(path):\n", 6, temperature=1.0, seed=11 + j).text for j in range(3)]


def test_fifo_admission():
    with serving(load(1)) as client:
        c, resp = client.stream(prompt="def f(x):", max_tokens=400, temperature=0, ignore_eos=True)
        first_event(resp)
        done = []
        with ThreadPoolExecutor(4) as pool:
            for i in range(4):
                pool.submit(lambda i=i: (client.complete(prompt=f"x{i} =", max_tokens=3, temperature=0),
                                         done.append(i)))
                client.wait(lambda h, i=i: h["queue_length"] == i + 1, f"request {i} to queue")
            c.close()
        assert done == [0, 1, 2, 3]


def test_health_full_queue_and_disconnect():
    with serving(load(2), max_queue=1) as client:
        h = client.get("/health")
        assert (h["slots_busy"], h["slots_total"], h["queue_length"]) == (0, 2, 0)
        streams = [client.stream(prompt=f"def f{i}(x):", max_tokens=400, temperature=0, ignore_eos=True)
                   for i in range(2)]
        for _, resp in streams:
            first_event(resp)
        streams.append(client.stream(prompt="def f2(x):", max_tokens=400, temperature=0, ignore_eos=True))
        h = client.wait(lambda h: h["queue_length"] == 1, "the third request to queue")
        assert (h["slots_busy"], h["slots_total"]) == (2, 2)
        status, body, headers = client.post("/v1/completions", dict(prompt="x", max_tokens=2))
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert int(headers["Retry-After"]) >= 1
        streams[0][0].close()  # a client goes away: its slot goes to the queued request
        first_event(streams[2][1])
        h = client.wait(lambda h: h["queue_length"] == 0 and h["slots_busy"] == 2, "the queued request to start")
        for c, _ in streams[1:]:
            c.close()
        client.wait(lambda h: h["slots_busy"] == 0 and h["requests_running"] == 0, "both slots to be freed")


def test_a_queued_client_that_leaves_is_dropped():
    with serving(load(1)) as client:
        c0, r0 = client.stream(prompt="def f(x):", max_tokens=400, temperature=0, ignore_eos=True)
        first_event(r0)
        c1, _ = client.stream(prompt="def g(x):", max_tokens=400, temperature=0)
        client.wait(lambda h: h["queue_length"] == 1, "the second request to queue")
        c1.close()
        client.wait(lambda h: h["queue_length"] == 0, "the queue to drop it")
        c0.close()
        client.wait(lambda h: h["slots_busy"] == 0, "the slot to be freed")
        assert client.complete(prompt="x =", max_tokens=2, temperature=0)["choices"]


def test_an_engine_failure_fails_requests_and_shows_on_health():
    with serving(load(1)) as client:
        assert client.complete(prompt="x =", max_tokens=2, temperature=0)["choices"]

        def broken():
            if client.sched.queue:  # once the next request is queued: it must get the error
                raise RuntimeError("the cache is broken")

        client.sched._apply_truncates = broken  # the engine thread raises outside a step
        status, body, _ = client.post("/v1/completions", dict(prompt="y =", max_tokens=2))
        assert status == 500 and "the cache is broken" in body["error"]["message"], body
        c = client._conn()
        c.request("GET", "/health")
        r = c.getresponse()
        h = json.loads(r.read())
        c.close()
        assert r.status == 503 and h["status"] == "error" and "the cache is broken" in h["error"]
        status, body, _ = client.post("/v1/completions", dict(prompt="z =", max_tokens=2))
        assert status == 503 and body["error"]["code"] == "engine_failed"
        c, resp = client.stream(prompt="z =", max_tokens=2)  # refused before the stream begins
        assert resp.status == 503 and json.loads(resp.read())["error"]["code"] == "engine_failed"
        c.close()


def test_default_parallel_and_kv_bytes(local):
    c = local.config
    per = kv_bytes_per_seq(c, 2048, "f16")
    assert per == 2 * c.n_layer * 2048 * c.n_embd * 2 == kv_bytes_per_seq(c, 2048, "f32") // 2
    assert default_parallel(c, 2048, "f16", memory=1 << 40) == 4
    assert default_parallel(c, 2048, "f16", memory=2 * 3 * per + 1) == 3
    assert default_parallel(c, 2048, "f16", memory=0) == 1
    phi2 = type("C", (), {"n_layer": 32, "n_embd": 2560})
    assert math.isclose(kv_bytes_per_seq(phi2, 2048, "f16") / 2 ** 20, 640)


FEATURES = [
    dict(prompt="def copy(a):\n    return a\n\ndef copy2(a):\n", max_tokens=20, temperature=0, lookup=True, logprobs=1),
    dict(prompt="data =", max_tokens=30, temperature=0.7, seed=3,
         json_schema={"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
    dict(prompt="def square(x):", max_tokens=5, temperature=0, echo=True, logprobs=2),
    dict(prompt="for i in range(3):\n", max_tokens=24, temperature=0, stop=["\n\n", "print"]),
    dict(prompt="class A:", max_tokens=6, temperature=1.0, seed=2, best_of=3),
]


def test_every_feature_gives_the_same_answer_amid_others():
    """Prompt lookup, a JSON schema, echo with log-probs, stop strings and best_of, in slots beside
    other requests: the same choices as on a one-slot server."""
    with serving(load(1)) as alone:
        want = [alone.complete(**req)["choices"] for req in FEATURES]
    with serving(load(8), batch_chunk=16) as client:
        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(client.complete, prompt=p, max_tokens=10, temperature=0) for p in PROMPTS[:3]]
            got = [pool.submit(client.complete, **req) for req in FEATURES]
            got = [f.result()["choices"] for f in got]
            for f in futs:
                f.result()
    assert got == want


def test_serve_command_takes_parallel_and_batch_chunk():
    import urllib.request

    from serve_process import start_serve, stop_serve

    proc, url = start_serve("--threads", "1", "--ctx-size", "256", "--parallel", "3", "--batch-chunk", "8",
                            "--queue", "5")
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            h = json.loads(r.read())
        assert (h["slots_total"], h["slots_busy"], h["queue_length"]) == (3, 0, 0)
    finally:
        stop_serve(proc)
