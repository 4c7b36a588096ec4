"""The `phi2cpu` command end to end, as a user runs it: the real engine in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import phi2cpu


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi2cpu", *args], capture_output=True, text=True, input=stdin,
                          timeout=300)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi2cpu: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def bundled() -> Path:
    return phi2cpu.default_model_path()


def test_run_bundled_model_streams_text_and_timing():
    r = cli("run", "def fibonacci(n):", "--max-tokens", "24", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "not Phi-2" in r.stderr and "phi2cpu quantize" in r.stderr
    timing = r.stderr.strip().splitlines()[-1]
    assert timing.startswith("prompt: ") and "generated: " in timing and "tok/s" in timing


def test_run_greedy_is_deterministic(bundled):
    a = cli("run", str(bundled), "import numpy as np\n", "--max-tokens", "16", "--temperature", "0")
    b = cli("run", str(bundled), "import numpy as np\n", "--max-tokens", "16", "--temperature", "0")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout


def test_run_matches_python_api(bundled):
    r = cli("run", str(bundled), "class Config:", "--max-tokens", "20", "--temperature", "0")
    m = phi2cpu.load(bundled)
    assert r.stdout == m.generate("class Config:", max_tokens=20, temperature=0)


def test_prompt_longer_than_context(bundled):
    one_line_error(cli("run", str(bundled), "x = 1\n" * 40, "--ctx", "16"), "16")


def test_invalid_sampling_value(bundled):
    one_line_error(cli("run", str(bundled), "x", "--top-p", "1.5"), "top_p")


def test_truncated_file(bundled, tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(bundled.read_bytes()[: bundled.stat().st_size // 2])
    one_line_error(cli("run", str(bad), "x"), str(bad))


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    one_line_error(cli("info", str(bad)), str(bad))


def test_missing_file(tmp_path):
    one_line_error(cli("run", str(tmp_path / "absent.gguf"), "x"), "absent.gguf")


def test_other_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    one_line_error(cli("run", str(path), "x"), "llama")


def test_quantize_non_phi_config(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    one_line_error(cli("quantize", str(src), str(tmp_path / "out.gguf"), "--type", "q4_0"), "not a Phi-2")
    assert not (tmp_path / "out.gguf").exists()


def test_info_and_system(bundled):
    r = cli("info", str(bundled), "--system")
    assert r.returncode == 0, r.stderr
    for words in ("architecture:  phi2", "Q8_0", "kernel path:", "embedded tokenizer.json"):
        assert words in r.stdout


def test_perplexity_last_line(bundled, eval_text, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text(eval_text[:20000])
    r = cli("perplexity", str(bundled), str(text), "--max-windows", "2")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("ppl = ") and 1.0 < float(last[6:]) < 100.0


def test_run_n_minus_one_runs_to_end_of_text_or_full_context(bundled):
    # llama-cli's -n -1: no token limit. A 48-token context with a 4-token prompt fills up unless
    # the model ends its text first; either way it is more than the default 128 would allow here.
    r = cli("run", str(bundled), "def f(x):", "-n", "-1", "-c", "48", "--temperature", "0", "--verbose")
    assert r.returncode == 0, r.stderr
    stopped = [line for line in r.stderr.splitlines() if line.startswith("stopped:")]
    assert stopped and stopped[0].split()[-1] in ("context_full", "eos"), r.stderr
    one_line_error(cli("run", str(bundled), "x", "-n", "-2"), "max_tokens", "-1")


def test_info_defaults_to_the_bundled_model_and_checks_ctx(bundled, mini_dir):
    r = cli("info")
    assert r.returncode == 0 and "phi2-mini-code" in r.stdout and "not Phi-2" in r.stderr, r.stderr
    r = cli("info", str(bundled), "-c", "4096")
    one_line_error(r, "--ctx 4096", "2048 positions")
    one_line_error(cli("info", str(mini_dir)), "is a folder", "phi2cpu quantize")
