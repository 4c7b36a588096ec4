"""Structured output and chat templates over real HTTP on loopback, as clients use them: the
openai client's structured-output `parse`, LangChain's `with_structured_output`, llama.cpp's
`grammar` / `json_schema` fields, and `serve --chat-template` or a GGUF's own template.

The server runs the bundled demo model, a code model that never writes JSON by itself (see
test_grammar.py), so every valid object here is the token mask's doing."""
from __future__ import annotations

import json
import re
import urllib.request
from typing import List, Literal

import pytest

pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")

import phi2cpu  # noqa: E402
from phi2cpu import chat_template as ct  # noqa: E402

from hostile_gguf import STRING, tiny_spec  # noqa: E402
from serve_process import start_serve, stop_serve as _stop  # noqa: E402

CTX = 512


class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=16)
    country: str = pydantic.Field(max_length=16)
    population: int = pydantic.Field(ge=0, le=100_000_000)
    capital: bool
    rivers: List[Literal["Seine", "Thames", "Danube", "Nile"]] = pydantic.Field(max_length=2)


SCHEMA = City.model_json_schema()
ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


@pytest.fixture(scope="module")
def server():
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX))
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def local():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX)


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("seed", range(3))
def test_openai_parse_with_a_pydantic_model(client, seed):
    r = client.chat.completions.parse(model="anything", messages=ASK, response_format=City, max_tokens=300,
                                      temperature=1.0, seed=seed)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


def test_openai_parse_cut_short_by_max_tokens_says_length(client):
    """An object cut off at max_tokens is returned as it is with finish_reason "length" (as OpenAI
    does); the parse helper turns that into its LengthFinishReasonError, never a bad object."""
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="m", messages=ASK, response_format=City, max_tokens=4, seed=0)
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=4, seed=0, response_format={
        "type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA}})
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")


def test_langchain_with_structured_output(server):
    lc = pytest.importorskip("langchain_openai")
    # any model name but LangChain's default gpt-3.5-turbo, for which it switches to tool calling
    llm = lc.ChatOpenAI(base_url=server + "/v1", api_key="unused", model="phi-2", max_tokens=300, max_retries=0,
                        temperature=1.0, seed=1)
    city = llm.with_structured_output(City).invoke("Describe Paris as JSON.")
    assert isinstance(city, City)
    # any object: nothing bounds its keys, so a code model may write them until max_tokens (finish
    # reason "length"); with this seed the demo model closes it at once
    json_llm = lc.ChatOpenAI(base_url=server + "/v1", api_key="unused", model="phi-2", max_tokens=300,
                             max_retries=0, temperature=1.0, seed=0)
    obj = json_llm.with_structured_output(None, method="json_mode").invoke("Describe Paris as a JSON object.")
    assert isinstance(obj, dict)


def test_json_object_and_streaming(client):
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=200, seed=4,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    chunks = list(client.chat.completions.create(
        model="m", messages=ASK, max_tokens=300, seed=5, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA, "strict": True}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    City.model_validate_json(text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_llama_cpp_grammar_and_json_schema_fields(server):
    g = 'root ::= "answer: " ("yes" | "no") " because " [a-z ]{1,24} "."'
    status, r = _post(server + "/v1/completions", {"prompt": "# ", "grammar": g, "max_tokens": 60, "n": 3, "seed": 2})
    assert status == 200, r
    for c in r["choices"]:
        assert c["finish_reason"] == "stop" and re.fullmatch(r"answer: (yes|no) because [a-z ]{1,24}\.", c["text"])
    status, r = _post(server + "/v1/completions", {"prompt": "x = ", "json_schema": SCHEMA, "max_tokens": 300,
                                                   "seed": 3, "temperature": 1.0})
    assert status == 200, r
    jsonschema.validate(json.loads(r["choices"][0]["text"]), SCHEMA)
    status, r = _post(server + "/v1/chat/completions", {"messages": ASK, "grammar": g, "max_tokens": 60})
    assert status == 200 and re.fullmatch(r"answer: (yes|no) because [a-z ]{1,24}\.",
                                          r["choices"][0]["message"]["content"]), r


@pytest.mark.parametrize("path, fields, param, words", [
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "strnig"}}}}, "response_format", "invalid JSON schema"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}, "grammar",
     "not response_format and grammar"),
    ("/v1/completions", {"grammar": "root ::= (", "json_schema": None}, "grammar", "invalid grammar"),
    ("/v1/completions", {"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}},
     "json_schema", "invalid JSON schema"),
    ("/v1/completions", {"json_schema": {"$ref": "#"}}, "json_schema", "cannot follow"),
])
def test_bad_constraints_are_400(server, path, fields, param, words):
    body = {"prompt": "x"} if path == "/v1/completions" else {"messages": ASK}
    status, err = _post(server + path, {**body, "max_tokens": 5, **fields})
    assert status == 400 and err["error"]["param"] == param and words in err["error"]["message"], err


def test_final_assistant_message_is_continued(server, local):
    msgs = [{"role": "user", "content": "Write an add function."}, {"role": "assistant", "content": "def add(a, b):"}]
    status, r = _post(server + "/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0})
    assert status == 200, r
    prompt = "Alice: Write an add function.\nBob: def add(a, b):"
    assert ct.builtin("phi2").render(msgs) == prompt
    assert r["usage"]["prompt_tokens"] == len(local.tokenize(prompt))
    want = local.generate(prompt, 12, temperature=0, stop=["\nAlice:", "\nBob:"])
    assert want.startswith("\n")  # the text goes on as it is: its newline and indent are kept
    assert r["choices"][0]["message"]["content"] == want


def test_serve_chat_template_name(local):
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX), "--chat-template", "chatml")
    try:
        status, r = _post(url + "/v1/chat/completions", {"messages": ASK, "max_tokens": 3, "temperature": 0})
        assert status == 200, r
        assert r["usage"]["prompt_tokens"] == len(local.tokenize(ct.builtin("chatml").render(ASK)))
    finally:
        _stop(proc)


def test_serve_uses_the_gguf_chat_template(tmp_path):
    """A ChatML fine-tune's file carries its template; serve renders with it and stops at <|im_end|>."""
    path = tiny_spec().set("tokenizer.chat_template", STRING, ct.CHATML).write(tmp_path / "chatml.gguf")
    m = phi2cpu.load(path, n_ctx=128)
    proc, url = start_serve(str(path), "--threads", "1", "--ctx-size", "128")
    try:
        status, r = _post(url + "/v1/chat/completions", {"messages": ASK, "max_tokens": 3, "temperature": 0})
        assert status == 200, r
        assert r["usage"]["prompt_tokens"] == len(m.tokenize(ct.builtin("chatml").render(ASK)))
    finally:
        _stop(proc)
