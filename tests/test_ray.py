"""phi2cpu on Ray, on a local cluster on loopback that these tests start and stop themselves:
`phi2cpu serve --ray` with two one-thread replicas answers as `phi2cpu serve` does, spreads
requests over both, survives a replica killed mid-run; Ray Data scores, generates and measures
perplexity exactly as Model does; the config examples are valid Serve configs."""
from __future__ import annotations

import asyncio
import json
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray tests need Ray: pip install \"phi2cpu[ray]\"")
pytest.importorskip("ray.serve", reason="the Ray tests need Ray Serve: pip install \"phi2cpu[ray]\"")
pytest.importorskip("ray.data", reason="the Ray tests need Ray Data: pip install \"phi2cpu[ray]\"")
pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
yaml = pytest.importorskip("yaml", reason="the config examples are YAML (PyYAML comes with Ray)")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.exceptions import ActorDiedError  # noqa: E402

import phi2cpu  # noqa: E402
import phi2cpu.ray as pray  # noqa: E402
from phi2cpu.errors import Phi2Error  # noqa: E402
from phi2cpu.ray import serving  # noqa: E402
from serve_process import start_serve, stop_serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "ray"
CTX = 512
# no usage reports leave the machine; one CPU per engine replica and per Ray Data engine
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on loopback with 4 logical CPUs (2 engine replicas + 2 Ray Data engines)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in RAY_ENV.items():
            mp.setenv(k, v)
        ctx = ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                       logging_level="warning", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ctx.address_info["address"]
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_serve(cluster):
    """`phi2cpu serve --ray --replicas 2 --threads 1` joined to the cluster."""
    proc, url = start_serve("--ray", "--ray-address", cluster, "--replicas", "2", "--threads", "1",
                            "--ctx-size", str(CTX), "--port", str(_free_port()),
                            env={**os.environ, **RAY_ENV}, timeout=240)
    yield url
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Serve is shut down, the process exits 0
    try:
        assert proc.wait(timeout=90) == 0
    except subprocess.TimeoutExpired:
        stop_serve(proc, timeout=30)
        pytest.fail("phi2cpu serve --ray did not stop on Ctrl-C")


@pytest.fixture(scope="module")
def plain():
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX))
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def local():
    return phi2cpu.load(None, threads=1, n_ctx=2048)


def _post(url: str, path: str, body: dict) -> tuple:
    """(status, headers, body bytes)."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=180) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _comparable(raw: bytes, stream: bool):
    """A response without what differs between two runs of the same request (id, created)."""
    def strip(obj):
        obj.pop("id", None)
        obj.pop("created", None)
        return obj
    if not stream:
        return strip(json.loads(raw))
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    return [strip(json.loads(e)) for e in events[:-1]]


def _engine_replicas() -> set:
    prefix = f"SERVE_REPLICA::{serving.APP_NAME}#{serving.ENGINE}#"
    return {a["name"][len(prefix):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


REQUESTS = [
    ("/v1/completions", {"prompt": "def fibonacci(n):", "max_tokens": 40, "temperature": 0}),
    ("/v1/completions", {"prompt": "import os\n", "max_tokens": 40, "temperature": 0.9, "seed": 7}),
    ("/v1/completions", {"prompt": ["class Stack:", "def add(a, b):"], "max_tokens": 16, "temperature": 0,
                         "logprobs": 2}),
    ("/v1/completions", {"prompt": "for i in range(", "max_tokens": 24, "temperature": 0.8, "seed": 3,
                         "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Write a sort function."}],
                              "max_tokens": 32, "temperature": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 24,
                              "temperature": 0.7, "seed": 11, "stream": True}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 8, "temperature": -1}),  # the same 400
]


def test_answers_identical_to_phi2cpu_serve(ray_serve, plain):
    for path, body in REQUESTS:
        body = {"model": "m", **body}
        a_status, a_headers, a = _post(ray_serve, path, body)
        b_status, _, b = _post(plain, path, body)
        assert a_status == b_status, (path, body, a, b)
        stream = body.get("stream", False) and a_status == 200
        assert _comparable(a, stream) == _comparable(b, stream), (path, body)
        assert a_headers.get("x-phi2cpu-replica") in _engine_replicas()
    for path in ("/v1/models", "/health"):
        with urllib.request.urlopen(ray_serve + path, timeout=60) as r:
            listed = json.loads(r.read())
        with urllib.request.urlopen(plain + path, timeout=60) as r:
            expected = json.loads(r.read())
        for d in (listed, expected):
            for card in d.get("data", []):
                card.pop("created")
        assert listed == expected


def _burst(url: str, n: int, max_tokens: int) -> list:
    body = {"model": "m", "prompt": "def fibonacci(n):", "max_tokens": max_tokens, "temperature": 0}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: _post(url, "/v1/completions", body), range(n)))


def test_requests_spread_over_both_replicas(ray_serve):
    replicas = _engine_replicas()
    assert len(replicas) == 2
    answers = _burst(ray_serve, 8, 48)
    assert all(status == 200 for status, _, _ in answers)
    assert {h["x-phi2cpu-replica"] for _, h, _ in answers} == replicas
    assert len({json.loads(b)["choices"][0]["text"] for _, _, b in answers}) == 1
    engines = serve.get_deployment_handle(serving.ENGINE, app_name=serving.APP_NAME)
    described = [engines.describe.remote().result(timeout_s=60) for _ in range(6)]
    assert all(d["threads"] == 1 and d["n_ctx"] == CTX and d["replica"] in replicas for d in described)
    assert {d["model"] for d in described} == {str(phi2cpu.default_model_path())}


def test_killed_replica_its_requests_retried_and_it_recovers(ray_serve, local):
    expected = local.generate("def fibonacci(n):", max_tokens=200, temperature=0)
    before = _engine_replicas()
    body = {"model": "m", "prompt": "def fibonacci(n):", "max_tokens": 200, "temperature": 0}
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(_post, ray_serve, "/v1/completions", body) for _ in range(12)]
        first = next(iter(f for f in futures if f.result(timeout=300)))  # the others are in flight or queued
        victim = first.result()[1]["x-phi2cpu-replica"]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{serving.APP_NAME}#{serving.ENGINE}#{victim}", namespace="serve"))
        answers = [f.result(timeout=300) for f in futures]
    # none lost: every request is answered whole, the same text; those the lost replica held were retried
    assert [status for status, _, _ in answers] == [200] * 12
    assert all(json.loads(b)["choices"][0]["text"] == expected for _, _, b in answers)
    retried = [h for _, h, _ in answers if h.get("x-phi2cpu-retries")]
    assert retried and all(h["x-phi2cpu-replica"] != victim for h in retried)
    # Serve starts a replacement: two replicas again, both answering
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = serve.status().applications[serving.APP_NAME]
        now = _engine_replicas()
        if (status.status == "RUNNING" and victim not in now and len(now) == 2
                and status.deployments[serving.ENGINE].replica_states.get("RUNNING") == 2):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the deployment did not recover: {serve.status()}")
    assert now != before
    answers = _burst(ray_serve, 8, 48)
    assert all(status == 200 for status, _, _ in answers)
    assert {h["x-phi2cpu-replica"] for _, h, _ in answers} == now


def _completion_tokens(url: str, replica: str) -> float:
    """The completion tokens `replica` has counted (/metrics is asked until that replica answers)."""
    for _ in range(200):
        with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
            if r.headers["x-phi2cpu-replica"] == replica:
                text = r.read().decode()
                return float(next(line.split()[1] for line in text.splitlines()
                                  if line.startswith("phi2cpu_completion_tokens_total")))
    pytest.fail(f"/metrics never came from replica {replica}")


def test_a_client_that_goes_away_cancels_its_request(ray_serve):
    host, port = ray_serve.removeprefix("http://").split(":")
    before = {r: _completion_tokens(ray_serve, r) for r in _engine_replicas()}
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"model": "m", "prompt": "def fibonacci(n):", "stream": True,
                                                        "max_tokens": 480, "temperature": 0}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    replica = r.getheader("x-phi2cpu-replica")
    assert r.status == 200 and r.read1(64).startswith(b"data: ")
    conn.close()  # gone after the first event
    time.sleep(5)  # more than the whole stream takes here (1-4 s); a cancelled one counts no tokens
    assert _completion_tokens(ray_serve, replica) == before[replica]
    status, _, body = _post(ray_serve, "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 4})
    assert status == 200


# --- the ingress's retry rules, with a stand-in for the engine replicas ------------------------

class _Engines:
    """A handle stand-in: each call plays the next script (a list of messages, where an exception
    is raised at its place)."""

    def __init__(self, *scripts):
        self.scripts, self.calls = list(scripts), 0

    def _stream(self, script):
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item

    @property
    def http(self):
        return self

    def remote(self, scope, body):
        self.calls += 1
        gen = self._stream(self.scripts.pop(0))

        class Responses:
            def __aiter__(self):
                return self

            async def __anext__(self):
                try:
                    return next(gen)
                except StopIteration:
                    raise StopAsyncIteration from None

            def cancel(self):
                pass
        return Responses()


def _start(content_type: bytes = b"application/json"):
    return {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}


def _relay(engines: _Engines, retries: int = 2) -> list:
    ingress = serving.Ingress(retries, 1 << 20)
    ingress.engine = engines
    sent = []
    messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}])

    async def receive():
        try:
            return next(messages)
        except StopIteration:
            await asyncio.sleep(3600)

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [], "query_string": b""}
    asyncio.run(ingress(scope, receive, send))
    return sent


def test_ingress_retries_a_request_its_replica_lost_before_answering():
    body = {"type": "http.response.body", "body": b'{"ok": 1}', "more_body": False}
    engines = _Engines([ActorDiedError()], [_start(), body])
    sent = _relay(engines)
    assert engines.calls == 2
    assert sent[0]["status"] == 200 and (b"x-phi2cpu-retries", b"1") in sent[0]["headers"]
    assert sent[1:] == [body]


def test_ingress_holds_an_answer_until_whole_so_a_cut_one_is_retried():
    part = {"type": "http.response.body", "body": b'{"ok":', "more_body": True}
    rest = {"type": "http.response.body", "body": b' 1}', "more_body": False}
    engines = _Engines([_start(), part, ActorDiedError()], [_start(), part, rest])
    sent = _relay(engines)
    assert engines.calls == 2
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[1:] == [part, rest] and (b"x-phi2cpu-retries", b"1") in sent[0]["headers"]


def test_ingress_gives_a_clear_503_when_every_try_is_lost():
    sent = _relay(_Engines([ActorDiedError()], [ActorDiedError()], [ActorDiedError()]), retries=2)
    assert sent[0]["status"] == 503
    err = json.loads(sent[1]["body"])["error"]
    assert err["code"] == "replica_lost" and "3 times" in err["message"] and "ActorDiedError" in err["message"]


def test_ingress_ends_a_cut_stream_with_an_error_event_never_resending():
    chunk = {"type": "http.response.body", "body": b'data: {"x": 1}\n\n', "more_body": True}
    engines = _Engines([_start(b"text/event-stream"), chunk, ActorDiedError()], [_start(), chunk])
    sent = _relay(engines)
    assert engines.calls == 1  # half an answer was out: it is not sent again
    assert sent[:2] == [_start(b"text/event-stream"), chunk]
    last = sent[2]
    assert last["more_body"] is False
    event = json.loads(last["body"].decode().removeprefix("data: "))
    assert event["error"]["code"] == "replica_lost"


# --- Ray Data ------------------------------------------------------------------------------------

TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "class Stack:\n    pass\n",
         "x = [i * i for i in range(10)]", "with open(path) as f:\n    data = f.read()\n",
         "for key, value in d.items():\n    print(key, value)\n"]


def test_ray_data_scores_equal_token_logprobs(cluster, local):
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    rows = sorted(pray.score(ds, threads=1, actors=2, batch_size=2).take_all(), key=lambda r: r["id"])
    assert [r["text"] for r in rows] == TEXTS
    for r in rows:
        expected = local.token_logprobs(r["text"])
        assert np.array_equal(np.asarray(r["token_logprobs"]), expected)
        assert r["logprob"] == pytest.approx(expected.sum(), rel=1e-12) and r["n_tokens"] == expected.size
    # a continuation given a context: the continuation's part of the whole sequence's log-probs
    ctx, cont = "def add(a, b):", "\n    return a + b\n"
    (row,) = pray.score(ray.data.from_items([{"c": ctx, "t": cont}]), text_column="t", context_column="c").take_all()
    ids = local.tokenize(ctx) + local.tokenize(cont)
    whole = local.token_logprobs(ids)
    assert np.array_equal(np.asarray(row["token_logprobs"]), whole[len(local.tokenize(ctx)) - 1:])
    logits = local.logits(ids)
    n = len(local.tokenize(ctx))
    assert row["greedy"] == bool(np.all(logits[n - 1:-1, :50295].argmax(axis=1) == ids[n:]))


def test_ray_data_generates_and_measures_perplexity_as_model_does(cluster, local):
    prompts = ["def fibonacci(n):", "import sys\n", "class Node:"]
    ds = ray.data.from_items([{"prompt": p} for p in prompts])
    rows = pray.generate(ds, threads=1, actors=2, batch_size=1, max_tokens=24, temperature=0.8, seed=5).take_all()
    got = {r["prompt"]: (r["text"], r["finish_reason"], list(r["token_logprobs"])) for r in rows}
    for p in prompts:
        c = local.complete(p, 24, temperature=0.8, seed=5)
        assert got[p] == (c.text, c.finish_reason, c.token_logprobs)
    text = "".join(TEXTS) * 6
    (row,) = pray.perplexity(ray.data.from_items([{"text": text}]), window=64).take_all()
    ref = local.perplexity(text, window=64)
    assert (row["ppl"], row["nll_mean"], row["n_scored"]) == (ref.ppl, ref.nll_mean, ref.n_scored)


def test_ray_data_refuses_a_row_it_cannot_score(cluster):
    with pytest.raises(Exception, match="at least two tokens"):
        pray.score(ray.data.from_items([{"text": "x"}])).take_all()
    with pytest.raises(Phi2Error, match="actors must be"):
        pray.score(ray.data.from_items([{"text": "ab cd"}]), actors=0)


def test_score_jsonl_example(cluster, local, tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import score_jsonl
    finally:
        sys.path.remove(str(EXAMPLES))
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"text": t, "tag": i}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "scores.jsonl"
    assert score_jsonl.main([str(src), str(out), "--actors", "2", "--token-logprobs"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tag"] for r in rows] == list(range(len(TEXTS)))  # the input's order
    for r in rows:
        expected = local.token_logprobs(r["text"])
        assert r["token_logprobs"] == expected.tolist()
        assert r["n_tokens"] == expected.size and r["logprob"] == pytest.approx(expected.sum(), rel=1e-12)
        assert r["ppl"] == pytest.approx(np.exp(-expected.mean()), rel=1e-12)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok then"}\n{"txt": "no"}\n')
    assert score_jsonl.main([str(bad), str(tmp_path / "none.jsonl")]) == 1
    assert not (tmp_path / "none.jsonl").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.jsonl", "prompts.jsonl", "scores.jsonl"]


# --- configs and arguments (no cluster) ---------------------------------------------------------

def _validate_serve_config(config: dict) -> dict:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    assert application["import_path"] == "phi2cpu.ray:app"
    pray.AppArgs.model_validate(application["args"])
    pray.app(application["args"])  # builds the application graph
    return application["args"]


def test_config_examples_are_valid_serve_configs():
    args = _validate_serve_config(yaml.safe_load((EXAMPLES / "serve_config.yaml").read_text()))
    assert args["replicas"] < args["max_replicas"]
    service = yaml.safe_load((EXAMPLES / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    args = _validate_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    cpus = int(service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
               ["resources"]["limits"]["cpu"])
    assert cpus % args["threads"] == 0  # whole replicas per worker pod


def test_replicas_threads_and_autoscaling_bounds_reach_serve(tmp_path):
    """`serve build` writes the options Serve would deploy with: one CPU per engine thread,
    autoscaling bounds, none for the ingress."""
    (tmp_path / "built_app.py").write_text(
        "import phi2cpu.ray\n"
        "scaled = phi2cpu.ray.deployment(None, threads=2, replicas=1, max_replicas=3, target_ongoing_requests=1.5)\n"
        "fixed = phi2cpu.ray.app({'threads': 3, 'replicas': 4})\n")
    serve_cli = Path(sys.executable).with_name("serve")
    if not serve_cli.exists():
        pytest.skip(f"Ray's serve command is not beside {sys.executable}")
    built = {}
    for name in ("scaled", "fixed"):
        r = subprocess.run([str(serve_cli), "build", f"built_app:{name}", "-o", str(tmp_path / f"{name}.yaml")],
                           cwd=tmp_path, env={**os.environ, **RAY_ENV, "PYTHONPATH": str(tmp_path)},
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        (application,) = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())["applications"]
        built[name] = {d["name"]: d for d in application["deployments"]}
    engine, ingress = built["scaled"][serving.ENGINE], built["scaled"][serving.DEPLOYMENT]
    assert engine["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3,
                                            "target_ongoing_requests": 1.5}
    assert engine["ray_actor_options"] == {"num_cpus": 2.0} and engine["max_ongoing_requests"] == 4
    assert ingress["ray_actor_options"] == {"num_cpus": 0.0} and ingress["num_replicas"] == 1
    engine = built["fixed"][serving.ENGINE]
    assert engine["num_replicas"] == 4 and engine["ray_actor_options"] == {"num_cpus": 3.0}
    assert "autoscaling_config" not in engine


def test_bad_arguments_are_clear_errors():
    with pytest.raises(Phi2Error, match="bad args.*thread"):
        pray.app({"threads": 0})
    with pytest.raises(Phi2Error, match="bad args.*replica_count"):
        pray.app({"replica_count": 2})
    with pytest.raises(Phi2Error, match="max_replicas must be"):
        pray.deployment(None, replicas=3, max_replicas=2)
    with pytest.raises(Phi2Error, match="unknown replica setting 'ctx'"):
        pray.deployment(None, ctx=512)
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "serve", "--replicas", "2"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == "phi2cpu: error: --replicas, --max-replicas and " \
                                                              "--ray-address need --ray"
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "serve", "--ray", "--port", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "--port must be in 1..65535 with --ray" in r.stderr
