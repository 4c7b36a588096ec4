"""CLI behaviour that needs no engine: argument and usage errors, error formatting, and the run /
perplexity / info / quantize plumbing with a fake model."""
import io
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
    rc = main(["run", "model.q4", "def f", "--temperature", "0", "--threads", "3", "--ctx", "64"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "(): pass"
    assert fake_load.calls == [("model.q4", {"n_ctx": 64, "threads": 3})]
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
