"""Chat templates: the built-ins, the sandbox, files, a GGUF's own template, continuing a final
assistant message, and `phi2cpu chat --chat-template`."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

pytest.importorskip("jinja2")

import phi2cpu  # noqa: E402
from phi2cpu import chat_template as ct  # noqa: E402
from phi2cpu.chat import ChatSession  # noqa: E402
from phi2cpu.errors import TemplateError  # noqa: E402
from phi2cpu.prompts import FORMATS, messages_prompt  # noqa: E402

from hostile_gguf import STRING, tiny_spec  # noqa: E402

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}]


def test_default_is_phi2_chat_format_identical_to_the_transcript_rules():
    t = ct.builtin(ct.DEFAULT)
    assert t.render(HI) == "Be brief.\nAlice: Hi\nBob: Hello!\nAlice: How are you?\nBob:"
    assert t.stop == FORMATS["chat"].stop
    rng = random.Random(0)
    texts = ["", " hi ", "a\nb", "What?", "  ", "ünï"]
    checked = 0
    for _ in range(2000):
        msgs = []
        for _ in range(rng.randint(1, 6)):
            role = rng.choice(["system", "user", "assistant"])
            msgs.append({"role": role, "content": rng.choice(texts[1:4] if role == "assistant" else texts)})
        if msgs[-1]["role"] != "user":
            continue
        assert t.render(msgs) == messages_prompt(msgs), msgs
        checked += 1
    assert checked > 500


def test_other_builtins():
    assert ct.builtin("phi2-qa").render(HI) == (
        "Be brief.\nInstruct: Hi\nOutput: Hello!\nInstruct: How are you?\nOutput:")
    assert ct.builtin("chatml").render(HI) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert "<|im_end|>" in ct.builtin("chatml").stop


@pytest.mark.parametrize("name, expected", [
    ("phi2", "Alice: What is 2+2?\nBob: The answer is"),
    ("phi2-qa", "Instruct: What is 2+2?\nOutput: The answer is"),
    ("chatml", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nThe answer is"),
])
def test_final_assistant_message_is_continued(name, expected):
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "The answer is "}]
    assert ct.builtin(name).render(msgs) == expected
    # an empty final assistant message is a fresh reply
    fresh = msgs[:1] + [{"role": "assistant", "content": ""}]
    assert ct.builtin(name).render(fresh) == ct.builtin(name).render(msgs[:1])


@pytest.mark.parametrize("source, message", [
    ("{{ ''.__class__.__mro__ }}", "refused by the sandbox"),
    ("{{ messages.append(1) }}", "refused by the sandbox"),
    ("{{ cycler.__init__.__globals__ }}", "refused by the sandbox"),
    ("{{ raise_exception('system messages are not supported') }}", "system messages are not supported"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ nothing.here }}", "is undefined"),
])
def test_sandbox_and_render_errors(source, message):
    t = ct.ChatTemplate.from_source(source, "t")
    with pytest.raises(TemplateError, match=message):
        t.render([{"role": "user", "content": "x"}])


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateError, match="line 2"):
        ct.ChatTemplate.from_source("ok\n{% for x in %}", "t")


def test_hf_template_helpers_render():
    src = ("{{ bos_token }}{% for m in messages %}{{ m.role | tojson }}:{{ m.content }}{% if loop.last %}{% break %}"
           "{% endif %};{% endfor %}{{ eos_token }}{{ strftime_now('%Y') | length }}")
    out = ct.ChatTemplate.from_source(src, "t").render([{"role": "user", "content": "é"}])
    assert out == '<|endoftext|>"user":é<|endoftext|>4'


def test_load_names_files_and_errors(tmp_path):
    assert ct.load("chatml").name == "chatml"
    f = tmp_path / "t.jinja"
    f.write_text(ct.CHATML)
    t = ct.load(str(f))
    assert t.render(HI) == ct.builtin("chatml").render(HI)
    assert t.stop == ("<|im_end|>", "<|im_start|>")  # found in the template's text
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"chat_template": ct.PHI2_QA}))
    assert ct.load(str(cfg)).render(HI) == ct.builtin("phi2-qa").render(HI)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"chat_template": [{"name": "default", "template": "x"}]}))
    for spec, words in ((str(tmp_path / "missing.jinja"), "not a built-in"), ("nosuchname", "chatml"),
                        (str(bad), "must be a string")):
        with pytest.raises(TemplateError, match=words):
            ct.load(spec)
    (tmp_path / "latin1.jinja").write_bytes(b"\xe9")
    with pytest.raises(TemplateError, match="UTF-8"):
        ct.load(str(tmp_path / "latin1.jinja"))


@pytest.fixture()
def chatml_gguf(tmp_path):
    """A tiny phi2 file that carries a ChatML tokenizer.chat_template, as ChatML fine-tunes do."""
    return tiny_spec().set("tokenizer.chat_template", STRING, ct.CHATML).write(tmp_path / "chatml.gguf")


def test_gguf_template_is_used_unless_one_is_named(chatml_gguf):
    m = phi2cpu.load(chatml_gguf, n_ctx=128)
    t = ct.for_model(m)
    assert t.name.startswith("tokenizer.chat_template") and t.render(HI) == ct.builtin("chatml").render(HI)
    assert "<|im_end|>" in t.stop
    assert ct.for_model(m, "phi2").render(HI) == messages_prompt(HI)
    assert ct.for_model(phi2cpu.load(phi2cpu.default_model_path(), n_ctx=64)).name == "phi2"


def test_chat_session_renders_through_its_template(chatml_gguf):
    m = phi2cpu.load(chatml_gguf, n_ctx=256)
    s = ChatSession(m, system="Be brief.", max_tokens=4, temperature=0)
    s.ask("Hi")
    assert m.detokenize(m.tokens).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_end|>" in s.stop


def test_chat_cli_chat_template_flag(tmp_path):
    model = phi2cpu.load(phi2cpu.default_model_path(), n_ctx=256)
    want = len(model.tokenize(ct.builtin("chatml").render([{"role": "user", "content": "hello there"}])))
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "chat", "--chat-template", "chatml", "-n", "3", "--temp", "0",
                        "-v"], input="hello there\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{want} tokens processed" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "chat", "--chat-template", "chatml"], input="/show\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(chat template chatml)" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "chat", "--chat-template", str(tmp_path / "nope.jinja")],
                       input="", capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("phi2cpu: error: --chat-template") and "not a file" in r.stderr


def test_gguf_bos_and_eos_tokens_are_the_files_own(tmp_path):
    spec = tiny_spec().set("tokenizer.chat_template", STRING, "{{ bos_token }}|{{ eos_token }}")
    path = spec.set("tokenizer.ggml.eos_token_id", 4, 259).write(tmp_path / "eos.gguf")  # 259: "llo"
    assert ct.for_model(phi2cpu.load(path, n_ctx=64)).render(HI) == "<|endoftext|>|llo"


TINY_CKPT = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
             "num_hidden_layers": 2, "intermediate_size": 320, "vocab_size": 51200, "partial_rotary_factor": 0.4}


def test_quantize_stores_the_checkpoints_chat_template(tmp_path, phi2_dir):
    """As llama.cpp's converter: tokenizer_config.json's chat_template (or chat_template.jinja) goes
    into the GGUF, and a GGUF-to-GGUF conversion keeps it."""
    from phi2cpu.checkpoint import write_random_checkpoint
    from phi2cpu.quantize import quantize

    ck = write_random_checkpoint(tmp_path / "ck", TINY_CKPT, seed=1, tokenizer_dir=phi2_dir)
    (ck / "tokenizer_config.json").write_text(json.dumps({"chat_template": ct.CHATML, "eos_token": "<|im_end|>"}))
    quantize(ck, tmp_path / "a.gguf", "f32", progress=False)
    m = phi2cpu.load(tmp_path / "a.gguf", n_ctx=64)
    assert ct.for_model(m).render(HI) == ct.builtin("chatml").render(HI)
    quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "q8_0", progress=False)
    assert phi2cpu.load(tmp_path / "b.gguf", n_ctx=64).file.kv["tokenizer.chat_template"] == ct.CHATML
    (ck / "chat_template.jinja").write_text(ct.PHI2_QA)  # transformers' newer place for it wins
    quantize(ck, tmp_path / "c.gguf", "f32", progress=False)
    assert ct.for_model(phi2cpu.load(tmp_path / "c.gguf", n_ctx=64)).render(HI) == ct.builtin("phi2-qa").render(HI)
    (ck / "chat_template.jinja").unlink()
    (ck / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    quantize(ck, tmp_path / "d.gguf", "f32", progress=False)
    assert "tokenizer.chat_template" not in phi2cpu.load(tmp_path / "d.gguf", n_ctx=64).file.kv


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_bad_chat_template_is_one_error_line_before_loading(tmp_path, command):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    r = subprocess.run([sys.executable, "-m", "phi2cpu", command, "--chat-template", str(bad), "--port", "0"]
                       if command == "serve" else [sys.executable, "-m", "phi2cpu", command, "--chat-template",
                                                   str(bad)], input="", capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"phi2cpu: error: chat template {bad}: line 1"), lines


def test_pull_brings_a_fine_tunes_chat_template(tmp_path, phi2_dir):
    """`phi2cpu pull` of a ChatML fine-tune: its tokenizer_config.json is fetched with the weights and
    the converted model renders ChatML; a repository without the file pulls as before."""
    import os

    from fake_hub import FakeHub
    from phi2cpu.checkpoint import write_random_checkpoint

    ck = write_random_checkpoint(tmp_path / "ck", TINY_CKPT, seed=2, shards=1, tokenizer_dir=phi2_dir)
    files = {n: ck / n for n in ("config.json", "tokenizer.json", "model.safetensors")}
    with FakeHub() as hub:
        hub.add_repo("someone/phi-2-chatml", {**files, "tokenizer_config.json": json.dumps(
            {"chat_template": ct.CHATML, "eos_token": "<|im_end|>"}).encode()})
        hub.add_repo("someone/phi-2-plain", files)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env = {**base, "HF_HOME": str(tmp_path / "hf"), "PHI2CPU_HOME": str(tmp_path / "store"),
               "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        for repo, name in (("someone/phi-2-chatml", "chatml:f16"), ("someone/phi-2-plain", "plain:f16")):
            r = subprocess.run([sys.executable, "-m", "phi2cpu", "pull", repo, "--type", "f16", "--name", name, "-q"],
                               capture_output=True, text=True, env=env, timeout=300)
            assert r.returncode == 0, r.stderr
    store = tmp_path / "store" / "models"
    chatml = phi2cpu.load(store / "chatml" / "f16.gguf", n_ctx=64)
    assert ct.for_model(chatml).render(HI) == ct.builtin("chatml").render(HI)
    assert ct.for_model(phi2cpu.load(store / "plain" / "f16.gguf", n_ctx=64)).name == "phi2"
