"""CLI behaviour that needs no engine: argument and usage errors, error formatting, and the run /
perplexity / info / quantize plumbing with a fake model."""
import io
import re
import subprocess
import sys
import types

import pytest

import phi2cpu
from fakes import scripted_model, table_model
from phi2cpu.cli import main
from phi2cpu.config import PhiConfig
from phi2cpu.errors import ModelFileError
from phi2cpu.perplexity import perplexity


@pytest.fixture(autouse=True)
def no_store(monkeypatch):
    """The model paths here exist nowhere: MODEL goes to the (fake) loader as given, not through the store."""
    monkeypatch.setattr("phi2cpu.store.resolve", lambda model: model)


@pytest.fixture
def fake_load(monkeypatch):
    """Replaces phi2cpu.load; records calls; returns the model in `.model`."""
    state = types.SimpleNamespace(calls=[], model=None)

    def load(path, **kw):
        state.calls.append((str(path), kw))
        return state.model

    monkeypatch.setattr(phi2cpu, "load", load, raising=False)
    monkeypatch.setattr(phi2cpu, "default_model_path", lambda: "BUNDLED.q8", raising=False)
    return state


def one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi2cpu: error: "), err
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("args, name", [
    (["--top-p", "2"], "top_p"), (["--top-p", "0"], "top_p"),
    (["--temperature", "-1"], "temperature"), (["--temperature", "nan"], "temperature"),
    (["--top-k", "-1"], "top_k"), (["--seed", "-5"], "seed"), (["--max-tokens", "0"], "max_tokens"),
    (["--min-p", "1.5"], "min_p"), (["--repeat-penalty", "0"], "repeat_penalty"),
    (["--presence-penalty", "3"], "presence_penalty"), (["--frequency-penalty", "-2.5"], "frequency_penalty"),
    (["--repeat-last-n", "-1"], "penalty_last_n"), (["--logit-bias", "50256"], "--logit-bias"),
    (["--logit-bias", "x=1"], "--logit-bias"), (["--logit-bias", "5=nan"], "logit_bias"),
])
def test_invalid_sampling_values_exit_1(fake_load, capsys, args, name):
    assert main(["run", "model.q4", "hello", *args]) == 1
    out, err = capsys.readouterr()
    one_error_line(err, name)
    assert out == "" and fake_load.calls == []


@pytest.mark.parametrize("argv", [
    ["run", "m", "p", "--top-k", "abc"], ["run"], [], ["nosuch"], ["run", "m", "p", "--bogus"],
    ["run", "m", "p", "--threads", "0"], ["run", "m", "p", "--ctx", "-1"], ["perplexity", "m"],
    ["run", "a", "b", "c"],
])
def test_usage_errors_exit_2(fake_load, capsys, argv):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err
    assert fake_load.calls == []


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    assert main(["perplexity", "--help"]) == 0
    out = capsys.readouterr().out
    assert "non-overlapping windows" in out and "WINDOW-2" in out and "ppl = X" in out


def test_run_streams_only_text_to_stdout(fake_load, capsys):
    fake_load.model = scripted_model("def f", "(): pass")
    rc = main(["run", "model.q4", "def f", "--temperature", "0", "--threads", "1", "--ctx", "64"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "(): pass"
    assert fake_load.calls == [("model.q4", {"n_ctx": 64, "threads": 1})]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prompt: 5 tokens") and "generated: " in lines[0]


def test_run_options_after_positionals_and_stop(fake_load, capsys):
    fake_load.model = scripted_model("x", "abc\n\ndef")
    rc = main(["run", "model.q4", "x", "--stop", "\n\n", "--temperature", "0"])
    assert rc == 0 and capsys.readouterr().out == "abc"


def test_run_prompt_after_double_dash(fake_load, capsys):
    fake_load.model = scripted_model("-x", "ok")
    assert main(["run", "--temperature", "0", "model.q4", "--", "-x"]) == 0
    assert capsys.readouterr().out == "ok"


def test_run_bundled_model_note(fake_load, capsys):
    fake_load.model = scripted_model("hi", "there")
    assert main(["run", "hi", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "there"
    assert fake_load.calls[0][0] == "BUNDLED.q8"
    note = err.splitlines()[0]
    assert "31M" in note and "not Phi-2" in note and "phi2cpu quantize" in note


def test_run_context_full_note(fake_load, capsys):
    fake_load.model = scripted_model("abcde", "0123456789", n_ctx=8)
    assert main(["run", "m", "abcde", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "012" and "context (8 tokens) is full" in err


def test_run_prompt_too_long(fake_load, capsys):
    fake_load.model = scripted_model("", "a", n_ctx=4)
    assert main(["run", "m", "abcdefgh"]) == 1
    one_error_line(capsys.readouterr().err, "prompt is 8 tokens; the context holds 4")


def test_prompt_from_stdin(fake_load, capsys, monkeypatch):
    fake_load.model = scripted_model("é\n", "ok")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO("é\n".encode())))
    assert main(["run", "m", "-", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ok"

    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"ab\xffcd")))
    assert main(["run", "m", "-"]) == 1
    one_error_line(capsys.readouterr().err, "stdin is not valid UTF-8", "0xff", "offset 2")


def test_prompt_with_undecodable_argv_bytes(fake_load, capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over non-UTF-8 argv
    assert main(["run", "m", bad]) == 1
    one_error_line(capsys.readouterr().err, "PROMPT is not valid UTF-8", "0xe9")
    assert main(["run", "m", "ok", "--stop", bad]) == 1
    one_error_line(capsys.readouterr().err, "--stop")
    assert fake_load.calls == []


@pytest.mark.parametrize("exc, code, words", [
    (ModelFileError("bad.q4: not a GGUF file\n(magic b'XXXX')"), 1, ["bad.q4: not a GGUF file"]),
    (FileNotFoundError(2, "No such file or directory", "missing.q4"), 1,
     ["missing.q4: No such file or directory"]),
    (KeyboardInterrupt(), 130, []),
])
def test_load_errors(monkeypatch, capsys, exc, code, words):
    def load(path, **kw):
        raise exc

    monkeypatch.setattr(phi2cpu, "load", load, raising=False)
    assert main(["run", "m", "hello"]) == code
    err = capsys.readouterr().err
    if words:
        one_error_line(err, *words)
    assert "Traceback" not in err


def test_perplexity_command(fake_load, capsys, tmp_path):
    text = "the quick brown fox jumps over the lazy dog, " * 3
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8")
    fake_load.model, _ = table_model()
    assert main(["perplexity", "m.q8", str(path), "--window", "10", "--max-windows", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    expected = perplexity(table_model()[0], text, window=10, max_windows=3).ppl
    assert out[-1] == f"ppl = {expected:.4f}"
    assert fake_load.calls[0] == ("m.q8", {"n_ctx": 10})

    path.write_bytes(b"abc\xfe")
    assert main(["perplexity", "m.q8", str(path)]) == 1
    one_error_line(capsys.readouterr().err, "not valid UTF-8", "0xfe")
    assert main(["perplexity", "m.q8", str(tmp_path / "nope.txt")]) == 1
    one_error_line(capsys.readouterr().err, "nope.txt: No such file or directory")


def test_quantize_delegates_argv(monkeypatch):
    seen = []
    fake = types.ModuleType("phi2cpu.quantize")
    fake.main = lambda argv, prog: seen.append((argv, prog)) or 0
    monkeypatch.setitem(sys.modules, "phi2cpu.quantize", fake)
    monkeypatch.setattr(phi2cpu, "quantize", fake, raising=False)
    assert main(["quantize", "src", "out.q4", "--type", "q4_0"]) == 0
    assert seen == [(["src", "out.q4", "--type", "q4_0"], "phi2cpu quantize")]


def test_info(monkeypatch, capsys):
    tensors = {
        "token_embd.weight": types.SimpleNamespace(name="token_embd.weight", ggml_type=8,
                                                   shape=(256, 51200), offset=0, nbytes=13926400),
        "output_norm.weight": types.SimpleNamespace(name="output_norm.weight", ggml_type=0,
                                                    shape=(256,), offset=0, nbytes=1024),
    }
    mf = types.SimpleNamespace(path="m.q8", config=PhiConfig(n_embd=256), tensors=tensors,
                               kv={"general.architecture": "phi2"}, tokenizer_json=None,
                               recipe={"type": "q8_0"}, file_size=14_000_000)
    fake = types.ModuleType("phi2cpu.gguf_io")
    fake.read_model_file = lambda path: mf
    monkeypatch.setitem(sys.modules, "phi2cpu.gguf_io", fake)
    assert main(["info", "m.q8"]) == 0
    out = capsys.readouterr().out
    for words in ("phi2", "Q8_0", "F32", "tensors:       2", "13,107,456", "q8_0",
                  "rebuilt from the GGUF vocab", "n_embd"):
        assert words in out


def test_module_entry_point_with_non_utf8_argv():
    proc = subprocess.run([sys.executable, "-m", "phi2cpu", "run", "m.q4", b"\xff\xfe"],
                          capture_output=True)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("phi2cpu: error: PROMPT is not valid UTF-8")


def test_broken_pipe_is_quiet():
    # `phi2cpu ... | head` must not print a traceback when the reader goes away
    code = ("import sys, phi2cpu, fakes\n"
            "phi2cpu.load = lambda p, **k: fakes.FakeModel(lambda h: fakes.onehot(ord('z')), n_ctx=4096)\n"
            "import phi2cpu.store; phi2cpu.store.resolve = lambda m: m\n"
            "from phi2cpu.cli import main\n"
            "sys.exit(main(['run', 'm', 'x', '--max-tokens', '3000', '--ctx', '4096']))\n")
    cmd = f"{sys.executable} -c \"{code}\" | head -c 5"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True,
                          cwd=str(__import__("pathlib").Path(__file__).parent))
    assert proc.stdout == b"zzzzz"
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr


def test_format_wraps_prompt_and_adds_stops(fake_load, capsys):
    fake_load.model = scripted_model("Instruct: hi\nOutput:", " 42\nInstruct: more")
    assert main(["run", "m.q4", "hi", "--format", "qa", "--temperature", "0", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == " 42" and err == ""  # --quiet: no timing line


def test_logit_bias_outside_the_vocabulary(fake_load, capsys):
    fake_load.model = scripted_model("x", "ab")
    assert main(["run", "m.q4", "x", "--logit-bias", "99999=1"]) == 1
    out, err = capsys.readouterr()
    one_error_line(err, "vocabulary")
    assert out == ""


def test_sampling_flags_reach_the_sampler(fake_load, capsys):
    fake_load.model = scripted_model("x", "ab")
    a = fake_load.model.tokenizer.encode("a")[0]
    assert main(["run", "m.q4", "x", "--temperature", "0", "--logit-bias", f"{a}=-inf", "-q"]) == 0
    out, _ = capsys.readouterr()
    assert "a" not in out


def test_verbose_prints_a_timing_breakdown(fake_load, capsys, monkeypatch):
    from phi2cpu import _core

    monkeypatch.setattr(_core, "isa", lambda: ("avx2", "test"))
    fake_load.model = scripted_model("x", "ab")
    fake_load.model.path, fake_load.model.threads = "m.q4", 1
    assert main(["run", "m.q4", "x", "--temperature", "0", "-v"]) == 0
    _, err = capsys.readouterr()
    for label in ("load:", "prompt:", "generate:", "stopped:"):
        assert label in err
    assert main(["run", "m.q4", "x", "-q", "-v"]) == 2  # mutually exclusive


# ----------------------------------------------------------------------------- llama-cli habits

def prompt_seen(model) -> str:
    """The text of the first eval call: the prompt as the model received it."""
    return model.tokenizer.decode(model.calls[0])


@pytest.mark.parametrize("typed, meant", [
    (r"a\nb", "a\nb"), (r"a\tb", "a\tb"), (r"a\rb", "a\rb"), (r"a\\nb", "a\\nb"), (r"say \"hi\"", 'say "hi"'),
    (r"it\'s", "it's"), (r"caf\xc3\xa9", "café"), (r"\x41", "A"),
    (r"a\qb", r"a\qb"), (r"end\\", "end\\"), ("end\\", "end\\"), (r"\x4", r"\x4"), (r"\xzz", r"\xzz"),
    ("plain", "plain"), ("é\\n", "é\n"),
])
def test_unescape_like_llama_cli(typed, meant):
    from phi2cpu.cliargs import unescape

    assert unescape(typed) == meant


def test_unescape_bad_utf8_bytes():
    from phi2cpu.cliargs import unescape
    from phi2cpu.errors import Phi2Error

    with pytest.raises(Phi2Error, match=r"PROMPT: its \\x escapes are not valid UTF-8 \(byte 0xe9\).*--no-escape"):
        unescape(r"caf\xe9", "PROMPT")


def test_run_unescapes_prompt_and_stop(fake_load, capsys):
    fake_load.model = scripted_model("Instruct: hi\nOutput:", " 42\nmore")
    assert main(["run", "m", r"Instruct: hi\nOutput:", "--stop", r"\n", "--temp", "0", "-q"]) == 0
    assert capsys.readouterr().out == " 42"
    assert prompt_seen(fake_load.model) == "Instruct: hi\nOutput:"


def test_no_escape_keeps_the_text_as_typed(fake_load, capsys):
    fake_load.model = scripted_model(r"a\nb", r"x\ny")
    assert main(["run", "m", r"a\nb", "--stop", r"\n", "--temp", "0", "-q", "--no-escape"]) == 0
    assert capsys.readouterr().out == "x"  # stopped before the literal backslash-n
    assert prompt_seen(fake_load.model) == r"a\nb"


def test_stdin_prompt_is_never_unescaped(fake_load, capsys, monkeypatch):
    text = "x\\ny\\t\n"
    fake_load.model = scripted_model(text, "ok")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(text.encode())))
    assert main(["run", "m", "-", "--temp", "0", "-q"]) == 0
    assert prompt_seen(fake_load.model) == text


def test_chat_unescapes_system_and_stop(fake_load, capsys, monkeypatch):
    fake_load.model = scripted_model("Be\tbrief.\nAlice: hi\nBob:", " yes!no")
    fake_load.model.path = "m"
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat", "m", "--system", r"Be\tbrief.", "--stop", r"\x21", "--temp", "0", "-q"]) == 0
    assert prompt_seen(fake_load.model) == "Be\tbrief.\nAlice: hi\nBob:"
    out = capsys.readouterr().out
    assert " yes\n" in out and "!" not in out and "no" not in out


@pytest.mark.parametrize("argv, model, prompt", [
    (["run", "P"], "BUNDLED.q8", "P"),
    (["run", "M", "P"], "M", "P"),
    (["run", "-m", "M", "P"], "M", "P"),
    (["run", "P", "-m", "M"], "M", "P"),
    (["run", "-p", "P", "M"], "M", "P"),
    (["run", "-m", "M", "-p", "P"], "M", "P"),
    (["run", "--model", "M", "--prompt", "P"], "M", "P"),
    (["run", "-p", "P"], "BUNDLED.q8", "P"),
    (["run", "-m", "M", "--", "-P"], "M", "-P"),
])
def test_model_and_prompt_positional_or_flags(fake_load, capsys, argv, model, prompt):
    fake_load.model = scripted_model(prompt, "ok")
    assert main([argv[0], "--temp", "0", *argv[1:]]) == 0, capsys.readouterr().err
    assert fake_load.calls[0][0] == model and prompt_seen(fake_load.model) == prompt
    assert capsys.readouterr().out == "ok"


@pytest.mark.parametrize("lone", ["phi-2.q4_0.gguf", "models/Phi-2.Q8_0.GGUF", "phi-2:q4_0", "phi-2"])
def test_run_with_only_a_model_says_the_prompt_is_missing(fake_load, capsys, monkeypatch, lone):
    """`phi2cpu run MODEL` (as `ollama run MODEL`) must not run the demo model on the prompt "MODEL"."""
    monkeypatch.setattr("phi2cpu.store.find", lambda text: object() if text in ("phi-2:q4_0", "phi-2") else None)
    assert main(["run", lone]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"PROMPT is missing: {lone} is a model" in err and "phi2cpu chat" in err
    assert fake_load.calls == []


def test_a_lone_prompt_that_is_no_model_still_runs(fake_load, capsys, monkeypatch):
    monkeypatch.setattr("phi2cpu.store.find", lambda text: None)
    for prompt in ("def f(x):", "a:b", "x.gguf is a file format"):
        fake_load.model = scripted_model(prompt, "ok")
        assert main(["run", prompt, "--temp", "0", "-q"]) == 0
        assert prompt_seen(fake_load.model) == prompt and capsys.readouterr().out == "ok"


@pytest.mark.parametrize("argv, words", [
    (["run", "-p", "P", "M", "X"], "prompt is given twice"),
    (["run", "-m", "M", "-p", "P", "X"], "prompt is given twice"),
    (["run", "-m", "M", "A", "B"], "model is given twice"),
    (["run", "-m", "M"], "PROMPT is missing"),
    (["run"], "PROMPT is missing"),
    (["chat", "-m", "M", "N"], "model is given twice"),
    (["serve", "-m", "M", "N"], "model is given twice"),
    (["info", "-m", "M", "N"], "model is given twice"),
])
def test_model_or_prompt_given_twice_is_a_usage_error(fake_load, capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and words in err and "Traceback" not in err
    assert fake_load.calls == []


def test_short_flags_and_aliases():
    from phi2cpu.cli import build_parser

    _, subs = build_parser()
    a = subs["run"].parse_args(["-m", "M", "-p", "P", "-n", "7", "-c", "99", "-t", "3", "-s", "5", "--temp", "0.25"])
    assert (a.model_opt, a.prompt_opt, a.max_tokens, a.ctx, a.threads, a.seed, a.temperature) == \
        ("M", "P", 7, 99, 3, 5, 0.25)
    a = subs["run"].parse_args(["P", "--n-predict", "8", "--ctx-size", "64", "-q"])
    assert (a.max_tokens, a.ctx, a.quiet, a.escape) == (8, 64, True, True)
    a = subs["chat"].parse_args(["-m", "M", "-n", "7", "-c", "99", "-t", "3", "-s", "5", "--temp", "0", "-v",
                                 "--no-escape"])
    assert (a.model_opt, a.max_tokens, a.ctx, a.threads, a.seed, a.temperature, a.verbose, a.escape) == \
        ("M", 7, 99, 3, 5, 0.0, True, False)
    a = subs["serve"].parse_args(["-m", "M", "-c", "512", "-t", "2"])
    assert (a.model_opt, a.ctx, a.threads) == ("M", 512, 2)
    a = subs["perplexity"].parse_args(["M", "F", "-t", "2", "-q"])
    assert (a.threads, a.quiet) == (2, True)
    a = subs["info"].parse_args(["-m", "M", "-c", "4096"])
    assert (a.model_opt, a.ctx) == ("M", 4096)
    # the existing short flags keep their meaning, and no short flag is defined twice
    for name, parser in subs.items():
        shorts = [s for act in parser._actions for s in act.option_strings if len(s) == 2]
        assert len(shorts) == len(set(shorts)), name
    assert subs["run"].parse_args(["P", "-v"]).verbose and subs["chat"].parse_args(["-q"]).quiet


def test_run_flags_reach_the_engine(fake_load, capsys):
    fake_load.model = scripted_model("P", "abcdef")
    assert main(["run", "-m", "M", "-p", "P", "-n", "3", "-c", "64", "-t", "1", "--temp", "0", "-q"]) == 0
    assert capsys.readouterr().out == "abc"
    assert fake_load.calls == [("M", {"n_ctx": 64, "threads": 1})]


def test_seed_short_flag_reproduces(fake_load, capsys):
    outs = []
    for seed in ("5", "5", "6"):
        fake_load.model, _ = table_model()
        assert main(["run", "m", "hello", "-s", seed, "-n", "12", "-q"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_threads_above_the_cpu_count_warn_and_run(fake_load, capsys, monkeypatch):
    import phi2cpu.cliargs as cliargs

    monkeypatch.setattr(cliargs, "usable_cpus", lambda: 4)
    fake_load.model = scripted_model("x", "ok")
    assert main(["run", "m", "x", "-t", "9", "--temp", "0"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("phi2cpu: warning:")]
    assert out == "ok" and len(warnings) == 1 and "--threads 9" in warnings[0] and "4 logical CPUs" in warnings[0]
    assert fake_load.calls[-1][1]["threads"] == 9
    fake_load.model = scripted_model("x", "ok")
    assert main(["run", "m", "x", "-t", "4", "--temp", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["99999999999", "1025", "0", "-3", "many"])
def test_threads_out_of_range_is_a_usage_error(fake_load, capsys, value):
    for cmd in (["run", "m", "x"], ["chat", "m"], ["serve", "m"], ["perplexity", "m", "f"]):
        assert main([*cmd, "--threads", value]) == 2
        err = capsys.readouterr().err
        assert "usage:" in err and "--threads" in err and "Traceback" not in err
        if value.lstrip("-").isdigit():
            assert "1..1024" in err
    assert fake_load.calls == []


def _all_help_texts():
    from phi2cpu import quantize as quantize_mod
    from phi2cpu.cli import build_parser

    top, subs = build_parser()
    texts = [top.format_help()] + [p.format_help() for p in subs.values()]
    with pytest.raises(SystemExit):
        quantize_mod.main(["--help"], prog="phi2cpu quantize")
    return texts


def test_one_file_name_convention_in_help(capsys):
    texts = _all_help_texts() + [capsys.readouterr().out]
    text = "\n".join(texts)
    assert "phi2cpu quantize" in text and "phi-2.q4_0.gguf" in text
    # no extension-only names like phi-2.q4 or ".q4/.q8/.f16" (a format that does not exist)
    assert not re.findall(r"\.(?:q4|q8|f16)(?![\w.])", text), re.findall(r".{20}\.(?:q4|q8|f16)(?![\w.]).{5}", text)
    names = set(re.findall(r"phi-2\.[\w.]+", text))
    assert names and all(re.fullmatch(r"phi-2\.(?:f32|f16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k)\.gguf", n, re.I)
                         for n in names), names


def test_package_sources_use_the_convention():
    root = __import__("pathlib").Path(phi2cpu.__file__).parent
    files = list(root.rglob("*.py")) + list((root.parent.parent / "tools").glob("*.py"))
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert not re.findall(r"phi-2\.(?:q4|q8|f16)(?![\w.])|\(\.q4/", text), f


@pytest.mark.parametrize("file_type, name", [
    (0, "all F32"), (1, "F16"), (32, "BF16"), (2, "Q4_0"), (7, "Q8_0"), (15, "Q4_K - Medium"),
    (14, "Q4_K - Small"), (17, "Q5_K - Medium"), (18, "Q6_K"), (12, "Q3_K - Medium"), (10, "Q2_K - Medium"),
    (1024 | 15, "Q4_K - Medium (guessed)"), (999, "unknown (general.file_type 999)"),
])
def test_file_type_in_llama_cpp_words(file_type, name):
    from phi2cpu.modelinfo import file_type_name

    assert file_type_name({"general.file_type": file_type}, {}) == name


def test_file_type_guessed_from_tensors_when_not_recorded():
    from phi2cpu.modelinfo import file_type_name

    t = lambda ggml_type, shape: types.SimpleNamespace(ggml_type=ggml_type, shape=shape)  # noqa: E731
    tensors = {"a": t(12, (8, 256)), "b": t(12, (8, 256)), "c": t(14, (8, 256)), "n": t(0, (8,)), "m": t(0, (8,)),
               "o": t(0, (8,))}
    assert file_type_name({}, tensors) == "Q4_K - Medium (guessed)"  # 1-D tensors do not vote
    assert file_type_name({}, {}) == "unknown (no general.file_type)"


def test_memory_for_full_size_phi2():
    from phi2cpu.modelinfo import memory_needed

    mem = memory_needed(PhiConfig(), 1_600_000_000, 2048, "f32")
    assert mem.kv_cache == 2 * 32 * 2048 * 2560 * 4 == 1_342_177_280   # 1.25 GiB of f32 K and V
    acts = 256 * (7 * 2560 + 10240) * 4 + 51200 * 4 + 256 * (40 * 292 + 10240 * 4)
    assert mem.activations == acts and mem.total == 1_600_000_000 + mem.kv_cache + acts
    assert memory_needed(PhiConfig(), 0, 100, "f32").kv_cache == 2 * 32 * 100 * 2560 * 4
    assert memory_needed(PhiConfig(), 0, 2048).kv_cache == 2 * 32 * 2048 * 2560 * 2  # the f16 default: half


def test_info_shows_file_type_bits_and_memory(monkeypatch, capsys):
    tensors = {
        "token_embd.weight": types.SimpleNamespace(name="token_embd.weight", ggml_type=8,
                                                   shape=(256, 51200), offset=0, nbytes=13926400),
        "output_norm.weight": types.SimpleNamespace(name="output_norm.weight", ggml_type=0,
                                                    shape=(256,), offset=0, nbytes=1024),
    }
    mf = types.SimpleNamespace(path="m.q8_0.gguf", config=PhiConfig(n_embd=256, n_layer=2), tensors=tensors,
                               kv={"general.architecture": "phi2", "general.file_type": 7}, tokenizer_json=None,
                               recipe=None, file_size=14_000_000)
    fake = types.ModuleType("phi2cpu.gguf_io")
    fake.read_model_file = lambda path: mf
    monkeypatch.setitem(sys.modules, "phi2cpu.gguf_io", fake)
    assert main(["info", "-m", "m.q8_0.gguf", "-c", "1000"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    bpw = (13926400 + 1024) * 8 / (256 * 51200 + 256)
    assert "file type: Q8_0 " in flat and f"bits/weight: {bpw:.2f} " in flat and "8.50" in f"{bpw:.2f}"
    assert "memory at --ctx 1000:" in flat and "KV cache 1.95 MiB" in flat   # 2*2*1000*256*2 bytes (f16)


def test_serve_parallel_beyond_the_engine_or_the_memory_is_one_line_error(monkeypatch, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    loads = []
    monkeypatch.setattr(phi2cpu, "load", lambda *a, **kw: loads.append(kw), raising=False)
    path = str(phi2cpu.default_model_path())
    assert main(["serve", path, "--parallel", "300"]) == 1
    one_error_line(capsys.readouterr().err, "--parallel must be at most 256, got 300")
    monkeypatch.setattr("phi2cpu.server_limits.available_memory", lambda: 100 << 20)
    assert main(["serve", path, "--parallel", "64", "--ctx-size", "2048"]) == 1
    err = capsys.readouterr().err
    one_error_line(err, "--parallel 64 with --ctx-size 2048 needs", "GiB of KV cache", "0.10 GiB of memory available",
                   "lower --parallel or --ctx-size")
    assert loads == []
