"""`phi2cpu serve` deployment options over loopback: --api-key / PHI2CPU_API_KEY, --alias,
--cors-origins, server-side sampling defaults, /tokenize and /detokenize, /metrics, and every
llama.cpp / OpenAI field either honoured or refused."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")
prom_parser = pytest.importorskip("prometheus_client.parser", reason="pip install \"phi2cpu[server]\"")
openai = pytest.importorskip("openai", reason="these tests drive the server with the openai client")

import phi2cpu  # noqa: E402
from serve_process import start_serve, stop_serve  # noqa: E402

KEY = "s3cret-key"
CTX = 512
ORIGIN = "http://ui.example"


def _request(url: str, method: str = "GET", body: object = None, headers: dict = None) -> tuple:
    """(status, headers, parsed body or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, hdrs, payload = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, payload = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(payload)
    except ValueError:
        return status, hdrs, payload.decode()


@pytest.fixture(scope="module")
def keyed():
    """A server with a key, two aliases, CORS for one origin and a greedy default temperature."""
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX), "--api-key", KEY, "--alias", "phi-2",
                            "--alias", "demo", "--cors-origins", ORIGIN, "--temp", "0")
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def plain():
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX))
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def local():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX)


AUTH = {"Authorization": f"Bearer {KEY}"}


# --- API key ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}])
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                          ("POST", "/v1/chat/completions"), ("POST", "/tokenize"),
                                          ("POST", "/detokenize"), ("GET", "/metrics")])
def test_every_route_but_health_needs_the_key(keyed, headers, method, path):
    status, hdrs, body = _request(keyed + path, method, {} if method == "POST" else None, headers)
    assert status == 401 and hdrs["WWW-Authenticate"] == "Bearer"
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_api_key"


def test_health_and_docs_need_no_key(keyed):
    assert _request(keyed + "/health")[0] == 200
    status, _, html = _request(keyed + "/docs")
    assert status == 200 and "swagger" in html.lower()
    status, _, doc = _request(keyed + "/openapi.json")
    assert status == 200


def test_openapi_shows_every_field(plain):
    from phi2cpu.server_models import ChatCompletionRequest, ChatMessage, CompletionRequest

    _, _, doc = _request(plain + "/openapi.json")
    schemas = doc["components"]["schemas"]
    for model in (CompletionRequest, ChatCompletionRequest, ChatMessage):
        fields = {f.alias or name for name, f in model.model_fields.items()}
        assert set(schemas[model.__name__]["properties"]) == fields
    assert {"logprobs", "echo", "n", "best_of", "n_predict", "mirostat", "grammar"} <= \
        fields_of(schemas, "CompletionRequest")
    assert {"top_logprobs", "response_format", "max_completion_tokens"} <= fields_of(schemas, "ChatCompletionRequest")
    ops = doc["paths"]["/v1/chat/completions"]["post"]
    assert ops["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert "422" not in ops["responses"] and "400" in ops["responses"]


def fields_of(schemas: dict, name: str) -> set:
    return set(schemas[name]["properties"])


def test_openai_client_with_the_key(keyed):
    good = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in good.models.list().data] == ["phi-2"]
    assert good.completions.create(model="demo", prompt="x", max_tokens=2).usage.completion_tokens == 2
    bad = openai.OpenAI(base_url=keyed + "/v1", api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


def test_key_from_the_environment():
    env = {**os.environ, "PHI2CPU_API_KEY": KEY}
    proc, url = start_serve("--threads", "1", "--ctx-size", "64", env=env)
    try:
        assert _request(url + "/v1/models")[0] == 401
        assert _request(url + "/v1/models", headers=AUTH)[0] == 200
    finally:
        stop_serve(proc)


def test_binding_beyond_loopback_without_a_key_warns(monkeypatch, capsys, local):
    import uvicorn

    from phi2cpu import server

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # bind, warn, return
    monkeypatch.setattr(server, "reserve_kv_cache", lambda model: None)
    server.serve(local, "m", host="0.0.0.0", port=0)
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "without an API key" in err and "PHI2CPU_API_KEY" in err
    server.serve(local, "m", host="0.0.0.0", port=0, api_key=KEY)
    server.serve(local, "m", host="127.0.0.1", port=0)
    assert "warning" not in capsys.readouterr().err


def test_empty_api_key_is_an_error():
    from phi2cpu import cli

    assert cli.main(["serve", "--api-key", ""]) == 1


# --- aliases, CORS, defaults ----------------------------------------------------------------------------

def test_alias_names_the_model(keyed):
    c = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0, timeout=60)
    r = c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.model == "phi-2"
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert "'demo', 'phi-2'" in e.value.body["message"]
    assert c.models.retrieve("demo").id == "phi-2"


def test_cors_preflight_and_response_headers(keyed, plain):
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    status, hdrs, _ = _request(keyed + "/v1/chat/completions", "OPTIONS", headers=pre)
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in hdrs["Access-Control-Allow-Headers"].lower()
    status, hdrs, _ = _request(keyed + "/v1/models", headers={"Origin": ORIGIN, **AUTH})
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == ORIGIN
    status, hdrs, _ = _request(keyed + "/v1/models", headers={"Origin": "http://other.example", **AUTH})
    assert "Access-Control-Allow-Origin" not in hdrs
    status, hdrs, _ = _request(plain + "/v1/models", headers={"Origin": ORIGIN})  # no --cors-origins: no CORS
    assert status == 200 and "Access-Control-Allow-Origin" not in hdrs


def test_sampling_defaults_equal_runs_unless_set(keyed, plain, local):
    from phi2cpu.cli import build_parser

    prompt = "def merge(a, b):"
    run = build_parser()[1]["run"].parse_args(["x"])
    assert (run.temperature, run.top_k, run.top_p, run.min_p, run.repeat_penalty) == (0.8, 40, 0.95, 0.05, 1.0)
    # no sampling fields: run's defaults (only the seed is given)
    _, _, body = _request(plain + "/v1/completions", "POST", {"prompt": prompt, "max_tokens": 16, "seed": 5})
    assert body["choices"][0]["text"] == local.generate(prompt, 16, seed=5)
    # --temp 0 on the server: greedy unless a request says otherwise
    _, _, body = _request(keyed + "/v1/completions", "POST", {"prompt": prompt, "max_tokens": 16}, AUTH)
    assert body["choices"][0]["text"] == local.generate(prompt, 16, temperature=0)
    _, _, body = _request(keyed + "/v1/completions", "POST", {"prompt": prompt, "max_tokens": 16, "seed": 5,
                                                              "temperature": 0.8}, AUTH)
    assert body["choices"][0]["text"] == local.generate(prompt, 16, seed=5)


# --- tokenize, detokenize ----------------------------------------------------------------------------

def test_tokenize_and_detokenize(plain, local):
    text = "def héllo():\n    return '😀'"
    status, _, body = _request(plain + "/tokenize", "POST", {"content": text})
    assert status == 200 and body["tokens"] == local.tokenize(text)
    _, _, pieces = _request(plain + "/tokenize", "POST", {"content": text, "with_pieces": True, "add_special": True})
    assert [p["id"] for p in pieces["tokens"]] == body["tokens"]
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces["tokens"])
    assert raw.decode() == text  # the emoji's bytes span tokens: those pieces come as byte lists
    assert any(isinstance(p["piece"], list) for p in pieces["tokens"])
    status, _, back = _request(plain + "/detokenize", "POST", {"tokens": body["tokens"]})
    assert status == 200 and back["content"] == text
    status, _, err = _request(plain + "/detokenize", "POST", {"tokens": [10 ** 6]})
    assert status == 400 and err["error"]["param"] == "tokens"
    status, _, err = _request(plain + "/tokenize", "POST", {"content": 5})
    assert status == 400 and err["error"]["param"] == "content" and "string" in err["error"]["message"]


# --- metrics -----------------------------------------------------------------------------------------

def _metrics(url: str, headers: dict = None) -> dict:
    status, hdrs, text = _request(url + "/metrics", headers=headers)
    assert status == 200 and hdrs["Content-Type"].startswith("text/plain")
    out = {}
    for family in prom_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_tokens_and_latencies(plain):
    before = _metrics(plain)
    c = openai.OpenAI(base_url=plain + "/v1", api_key="unused", max_retries=0, timeout=60)
    r = c.completions.create(model="x", prompt="def f():", max_tokens=6, temperature=0, n=2)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="x", prompt="x", temperature=9)
    after = _metrics(plain)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("phi2cpu_requests_total", endpoint="/v1/completions", status="200") == 1
    assert delta("phi2cpu_requests_total", endpoint="/v1/completions", status="400") == 1
    assert delta("phi2cpu_completion_tokens_total") == r.usage.completion_tokens == 12
    assert delta("phi2cpu_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("phi2cpu_time_to_first_token_seconds_count") == 1  # one request
    assert delta("phi2cpu_time_per_output_token_seconds_count") == 2 * (6 - 1)  # between tokens of each choice
    assert after[("phi2cpu_queue_depth", ())] == 0 and after[("phi2cpu_requests_running", ())] == 0
    assert after[("phi2cpu_time_to_first_token_seconds_sum", ())] > 0


# --- honoured or refused, never ignored ------------------------------------------------------------

@pytest.mark.parametrize("path, fields, param", [
    ("/v1/completions", {"mirostat": 2}, "mirostat"),
    ("/v1/completions", {"typical_p": 0.5}, "typical_p"),
    ("/v1/completions", {"tfs_z": 0.9}, "tfs_z"),
    ("/v1/completions", {"dry_multiplier": 0.8}, "dry_multiplier"),
    ("/v1/completions", {"xtc_probability": 0.5}, "xtc_probability"),
    ("/v1/completions", {"n_probs": 3}, "n_probs"),
    ("/v1/completions", {"samplers": ["top_k"]}, "samplers"),
    ("/v1/completions", {"grammar": "root ::= undefined_rule"}, "grammar"),
    ("/v1/completions", {"suffix": "return x"}, "suffix"),
    ("/v1/completions", {"some_new_field": 1}, "some_new_field"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "response_format"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("/v1/chat/completions", {"store": True}, "store"),
    ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "1"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"echo": True}, "echo"),  # a completions field
])
def test_fields_not_honoured_are_refused(plain, path, fields, param):
    body = {"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    status, _, err = _request(plain + path, "POST", {**body, "max_tokens": 2, **fields})
    assert status == 400 and err["error"]["param"] == param, err
    assert len(err["error"]["message"]) < 300


def test_llama_cpp_fields_are_honoured(plain, local):
    url = plain + "/v1/completions"
    base = {"prompt": "def f(x):", "temperature": 0}
    _, _, a = _request(url, "POST", {**base, "n_predict": 7})
    _, _, b = _request(url, "POST", {**base, "max_tokens": 7})
    assert a["usage"]["completion_tokens"] == 7 and a["choices"][0]["text"] == b["choices"][0]["text"]
    pen = {"repeat_penalty": 1.5, "max_tokens": 24}
    _, _, a = _request(url, "POST", {**base, **pen, "repeat_last_n": 8})
    _, _, b = _request(url, "POST", {**base, **pen, "penalty_last_n": 8})
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == local.generate(
        "def f(x):", 24, temperature=0, repeat_penalty=1.5, penalty_last_n=8)
    eos = {"logit_bias": {"50256": 100}, "max_tokens": 5}  # end-of-text first, unless it is banned
    _, _, a = _request(url, "POST", {**base, **eos})
    _, _, b = _request(url, "POST", {**base, **eos, "ignore_eos": True})
    assert a["choices"][0]["finish_reason"] == "stop" and a["usage"]["completion_tokens"] == 1
    assert b["usage"]["completion_tokens"] == 5 and b["choices"][0]["finish_reason"] == "length"
    # accepted at the values that turn them off, and the tuning of samplers that are off
    off = {"mirostat": 0, "mirostat_tau": 5.0, "typical_p": 1.0, "tfs_z": 1.0, "dry_multiplier": 0.0,
           "dry_base": 1.75, "cache_prompt": True, "user": "u", "max_tokens": 7}
    _, _, c = _request(url, "POST", {**base, **off})
    assert c["choices"][0]["text"] == local.generate("def f(x):", 7, temperature=0)
