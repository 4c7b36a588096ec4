"""Constrained generation on the bundled demo model: a code model that writes Python, never JSON,
unless its tokens are masked, so every valid output here is the mask's doing."""
from __future__ import annotations

import json
import re
from typing import List, Literal

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

import phi2cpu  # noqa: E402
from phi2cpu import grammar  # noqa: E402
from phi2cpu.errors import GrammarError  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "admin": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "admin", "tags"],
    "additionalProperties": False,
}


class Pet(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # additionalProperties false: the object must end
    kind: Literal["cat", "dog", "fish"]
    name: str = pydantic.Field(max_length=12)
    legs: int = pydantic.Field(ge=0, le=8)


class Owner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=12)
    pets: List[Pet] = pydantic.Field(max_length=2)


@pytest.fixture(scope="module")
def model():
    return phi2cpu.load(phi2cpu.default_model_path(), n_ctx=512)


def test_unconstrained_output_is_not_json(model):
    """What makes the other tests meaningful: without a mask the demo model writes code."""
    for seed in range(3):
        text = model.generate('{"name": ', 60, seed=seed, temperature=1.0)
        with pytest.raises(json.JSONDecodeError):
            json.loads('{"name": ' + text)


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_output_validates(model, seed):
    c = model.complete("def main():", 200, json_schema=SCHEMA, seed=seed, temperature=1.0)
    assert c.finish_reason == "stop"
    jsonschema.validate(json.loads(c.text), SCHEMA)
    assert c.text == model.detokenize(c.token_ids)  # nothing after the closing brace, no end-of-text text


def test_schema_as_text_greedy_and_streamed(model):
    text = model.generate("x = ", 200, json_schema=json.dumps(SCHEMA), temperature=0)
    jsonschema.validate(json.loads(text), SCHEMA)
    pieces = list(model.generate("x = ", 200, json_schema=SCHEMA, temperature=0, stream=True))
    assert "".join(pieces) == text


def test_pydantic_schema(model):
    for seed in range(3):
        c = model.complete("import json\n", 300, json_schema=Owner.model_json_schema(), seed=seed,
                           temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        assert c.finish_reason == "stop"
        Owner.model_validate_json(c.text)


def test_json_object(model):
    c = model.complete("def f():", 100, json_schema=grammar.json_object(), seed=3)
    assert c.finish_reason == "stop"
    assert isinstance(json.loads(c.text), dict)


def test_gbnf_grammar(model):
    g = r'''
root   ::= "answer: " choice " because " reason "."
choice ::= "yes" | "no"
reason ::= [a-z ]{1,30}
'''
    for seed in range(3):
        c = model.complete("# ", 80, grammar=g, seed=seed)
        assert c.finish_reason == "stop"
        assert re.fullmatch(r"answer: (yes|no) because [a-z ]{1,30}\.", c.text), c.text


def test_max_tokens_cuts_the_output_short_and_says_so(model):
    c = model.complete("def main():", 4, json_schema=SCHEMA, seed=0)
    assert c.finish_reason == "length"
    assert c.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(c.text)


def test_constraint_leaves_logprobs_the_models_own(model):
    """A masked distribution would give the first token (an opening brace) most of the mass; the
    reported log p is the model's own."""
    from phi2cpu.generate import token_logprob

    c = model.complete("x = ", 30, json_schema=SCHEMA, temperature=0)
    ids = model.tokenize("x = ")
    assert model.detokenize(c.token_ids[:1]).startswith("{")
    own = token_logprob(model.logits(ids)[-1], c.token_ids[0])
    assert own < -0.1
    assert c.token_logprobs[0] == pytest.approx(own, abs=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"json_schema": "{not json"}, "not valid JSON"),
    ({"json_schema": {"type": "strnig"}}, "invalid JSON schema"),
    ({"json_schema": [1, 2]}, "must be an object or a boolean"),
    ({"json_schema": False}, "admits no output"),
    ({"grammar": "root ::= undefined_rule"}, "invalid grammar"),
    ({"grammar": 'root ::= root "a"'}, "cannot follow the gbnf constraint"),   # no finite output
    ({"json_schema": {"$ref": "#"}}, "cannot follow the json_schema constraint"),
    ({"json_schema": {"not": {"type": "string"}}}, "Unimplemented keys"),
    ({"grammar": "  "}, "empty"),
    ({"json_schema": {}, "grammar": 'root ::= "a"'}, "not both"),
])
def test_bad_constraints_are_clear_errors_before_model_work(model, kwargs, message):
    model.reset()
    with pytest.raises(GrammarError, match=message):
        model.generate("x", 10, **kwargs)
    assert model.n_past == 0


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "phi2cpu", "run", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_json_schema_file(tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    r = _cli("def main():", "--json-schema", str(schema), "-n", "200", "-s", "1", "--temp", "1")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMA)


def test_cli_grammar_file_and_incomplete_note(tmp_path):
    g = tmp_path / "yes.gbnf"
    g.write_text('root ::= "answer: " ("yes" | "no") "."\n')
    r = _cli("x", "--grammar-file", str(g), "-n", "20", "-s", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout in ("answer: yes.", "answer: no.")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    r = _cli("x", "--json-schema", str(schema), "-n", "3")
    assert r.returncode == 0, r.stderr
    assert "phi2cpu: note: the output is incomplete" in r.stderr


@pytest.mark.parametrize("content, words", [
    (None, ["missing.json", "No such file"]),
    ("{oops", ["bad.json", "not valid JSON"]),
    ('{"type": "strnig"}', ["bad.json", "invalid JSON schema"]),
    (b"\xff\xfe", ["bad.json", "not valid UTF-8"]),
])
def test_cli_bad_schema_file_is_one_error_line(tmp_path, content, words):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = _cli("x", "--json-schema", str(path))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi2cpu: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_schema_and_grammar_together_refused(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    (tmp_path / "g.gbnf").write_text('root ::= "a"')
    r = _cli("x", "--json-schema", str(tmp_path / "s.json"), "--grammar-file", str(tmp_path / "g.gbnf"))
    assert r.returncode == 1 and "not both" in r.stderr
