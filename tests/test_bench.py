"""The benchmark harness: a --quick-style run on a tiny model, the bandwidth probe, the verdicts and
the report (missing peers are skipped, a validation mismatch is flagged)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from phi2cpu import _core
from phi2cpu.bench import engines, quality, report, speed
from phi2cpu.bench.bandwidth import decode_ceiling, read_bandwidth
from phi2cpu.bench.run import _threads, main

TINY_PHI = {
    "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 64, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "vocab_size": 51200,
    "hidden_act": "gelu_new", "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, phi2_dir):
    """A tiny config.json with Phi-2's tokenizer files beside it (what the harness's --config takes)."""
    d = tmp_path_factory.mktemp("tiny-config")
    (d / "config.json").write_text(json.dumps(TINY_PHI))
    for f in phi2_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "added_tokens", "special_tokens")):
            (d / f.name).write_bytes(f.read_bytes())
    return d / "config.json"


def test_quick_run_on_a_tiny_model(tmp_path, tiny_config, phi2_dir, capsys):
    out = tmp_path / "out"
    argv = ["--quick", "--shared", str(phi2_dir.parent), "--config", str(tiny_config),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--sections", "bandwidth,load,speed", "--formats", "Q8_0,Q4_0", "--engines", "phi2cpu,llama.cpp",
            "--pp", "16", "--tg", "4", "--threads", "1", "--bandwidth-mib", "16",
            "--results-md", str(tmp_path / "RESULTS.md")]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    ours = [c for c in res["speed"] if c["engine"] == "phi2cpu"]
    assert {c["format"] for c in ours} == {"Q8_0", "Q4_0"}
    for c in ours:
        assert c["status"] == "ok", c["reason"]
        assert len(c["pp_tps"]) == len(c["tg_tps"]) == 3 and min(c["pp_tps"] + c["tg_tps"]) > 0
        assert c["pp"]["min"] <= c["pp"]["median"] <= c["pp"]["max"]
        assert c["peak_rss"] > 0 and c["load_s"] > 0
    peers = [c for c in res["speed"] if c["engine"] == "llama.cpp"]
    assert all(c["status"] in ("ok", "skipped") for c in peers)
    assert float(res["bandwidth"]["gbs"]["1"]) > 0
    # probed before the speed section and after each of its two groups; the best probe is the ceiling
    samples = res["bandwidth"]["samples"]["1"]
    assert len(samples) == 3 and res["bandwidth"]["gbs"]["1"] == max(samples)
    assert {r["format"] for r in res["ceiling"]} == {"Q8_0", "Q4_0"}
    loads = {(c["engine"], c["format"]): c for c in res["load"]}
    for f in ("Q8_0", "Q4_0"):
        c = loads[("phi2cpu", f)]
        assert c["status"] == "ok", c["reason"]
        assert len(c["load_s"]) == len(c["ready_s"]) == 2 and c["first_load_s"] > 0 and c["peak_rss"] > 0
        assert all(r >= x > 0 for r, x in zip(c["ready_s"], c["load_s"]))
        # the first load writes the repack cache (in the test session's store); the counted ones map it
        if _core.isa()[0] != "scalar":
            assert c["first_weights"] == "cache-written" and c["weights"] == "cache"
        assert loads[("llama.cpp", f)]["status"] in ("ok", "skipped")
    md = (out / "results.md").read_text()
    assert md == (tmp_path / "RESULTS.md").read_text()
    assert "## Speed" in md and "## Load" in md and "## Decode ceiling" in md and res["environment"]["cpu"] in md
    if res["plots"]:
        assert all((out / p.split("/")[-1]).stat().st_size > 0 for p in res["plots"])
    assert "## Speed" in capsys.readouterr().out

    # A second run finds its files in the cache instead of making them again.
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["timing"]["setup_s"] == 0


def test_bandwidth_probe_is_positive():
    gbs = read_bandwidth(1, 8 << 20, passes=1)
    assert 0 < gbs < 10_000
    assert decode_ceiling(20.0, 10**9) == pytest.approx(20.0)


def test_missing_peer_is_reported_as_skipped(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert "llama_cpp" in engines.missing_reason(engines.LLAMA_CPP)
    assert engines.missing_reason(engines.PHI2CPU) is None


def test_greedy_verdicts():
    ref = {"tokens": [1, 2, 3, 4], "margins": [2.0, 1.5, 3.0, 1.0]}
    assert quality.judge(ref, dict(ref), 4) == ("OK", 4, None)
    tie = {"tokens": [1, 2, 9, 9], "margins": [2.0, 1.5, 0.01, 1.0]}
    assert quality.judge(ref, tie, 4)[:2] == ("near-tie", 2)
    bad = {"tokens": [1, 7, 7, 7], "margins": [2.0, 1.5, 3.0, 1.0]}
    assert quality.judge(ref, bad, 4) == ("MISMATCH", 1, 1.5)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 100)).astype(np.float32)
    assert np.allclose(quality.kl_rows(a, a), 0, atol=1e-12)
    b = a + rng.standard_normal(a.shape).astype(np.float32)
    kl = quality.kl_rows(a, b)
    p, q = np.exp(quality.log_softmax(a)), np.exp(quality.log_softmax(b))
    assert np.allclose(kl, (p * np.log(p / q)).sum(-1)) and (kl > 0).all()


def test_thread_lists():
    assert _threads("1-3") == [1, 2, 3] and _threads("4,1,2,2") == [1, 2, 4]
    with pytest.raises(Exception):
        _threads("0")


def test_memory_split_keeps_torch_engines_apart_when_they_do_not_fit():
    need = {"phi2cpu": 6, "llama.cpp": 6, "hf-fp32": 11, "hf-bf16": 6}.__getitem__
    groups = speed.split_by_memory(["phi2cpu", "llama.cpp", "hf-fp32", "hf-bf16"], need, 20)
    assert groups == [["phi2cpu", "llama.cpp", "hf-fp32"], ["hf-bf16"]]
    assert speed.split_by_memory(["phi2cpu", "llama.cpp"], need, 7) == [["phi2cpu", "llama.cpp"]]


def test_time_budget_drops_the_lowest_priority_peer_first():
    runner = speed.GroupRunner(speed.Workload(pp=100, tg=10, tg_prompt=2, runs=3), log=lambda m: None)
    cells = [speed.Cell("phi2cpu", "F16", 2), speed.Cell("hf-fp32", "F16", 2)]
    rates = {"phi2cpu": (100.0, 10.0), "hf-fp32": (1.0, 0.1)}
    kept = runner._fit_budget(cells, rates, deadline=time.monotonic() + 60)
    assert [c.engine for c in kept] == ["phi2cpu"]
    assert cells[1].status == "skipped" and cells[1].reason.startswith("time budget")

    # Rates seen at another thread count rule a cell out before it is even loaded.
    runner.known[("hf-fp32", "F16")] = rates["hf-fp32"]
    later = speed.Cell("hf-fp32", "F16", 1)
    assert runner._hopeless(later, deadline=time.monotonic() + 60) and later.status == "skipped"
    assert not runner._hopeless(speed.Cell("phi2cpu", "Q4_0", 1), deadline=time.monotonic() + 60)
    assert runner._hopeless(speed.Cell("phi2cpu", "Q4_0", 1), deadline=time.monotonic() - 1)


def _summary(xs):
    return speed.summarize(xs)


def synthetic_results() -> dict:
    cell = dict(model="m.gguf", load_s=1.0, peak_rss=2 << 30, alternated_with=[], reason="", status="ok")
    return {
        "environment": {"date": "2024-01-01 00:00 UTC", "cpu": "Test CPU", "cpu_flags": ["avx2"], "logical_cpus": 2,
                        "cores": 2, "mem_total": 8 << 30, "os": "Linux", "python": "3.11", "phi2cpu_isa": "avx2",
                        "phi2cpu_isa_reason": "test", "git_commit": "abc123", "numpy": "2", "versions": {}},
        "config": {"quick": False, "validate_tokens": 32, "load_trials": 5, "load_ctx": 2048,
                   "workload": {"pp": 512, "tg": 128, "tg_prompt": 16, "runs": 3}},
        "skipped_engines": {"hf-bf16": "python package 'torch' is not installed"},
        "models": {"hf_checkpoint": "phi2-random-x", "speed_params": 2_779_683_840},
        "timing": {"total_s": 600, "setup_s": 60},
        "validation": [
            {"reference": "phi2cpu Q8_0", "other": "llama.cpp Q8_0", "status": "MISMATCH", "reason": "", "n_tokens": 32,
             "n_agree": 3, "tokenization_equal": True, "top5_equal": False, "top5_max_abs_diff": 0.5,
             "margin_at_split": 2.0},
            {"reference": "phi2cpu F16", "other": "hf-fp32 HF fp32", "status": "skipped", "reason": "not installed"},
        ],
        "speed": [
            {**cell, "engine": "phi2cpu", "format": "Q4_0", "threads": 2, "pp": _summary([20, 22, 21]),
             "tg": _summary([6, 6.5, 7])},
            {**cell, "engine": "llama.cpp", "format": "Q4_0", "threads": 2, "pp": _summary([10, 11, 12]),
             "tg": _summary([6.5, 6.5, 6.5])},
            {**cell, "engine": "hf-bf16", "format": "F16", "threads": 2, "status": "skipped",
             "reason": "python package 'torch' is not installed", "pp": None, "tg": None, "load_s": None,
             "peak_rss": None},
        ],
        "load": [
            {"engine": "phi2cpu", "format": "Q4_0", "threads": 2, "status": "ok", "reason": "", "first_load_s": 6.5,
             "first_weights": "cache-written", "weights": "cache", "load_s": [0.4, 0.5, 0.6],
             "ready_s": [0.5, 0.6, 0.9], "peak_rss": 3 << 29, "load": _summary([0.4, 0.5, 0.6]),
             "ready": _summary([0.5, 0.6, 0.9])},
            {"engine": "llama.cpp", "format": "Q4_0", "threads": 2, "status": "ok", "reason": "", "first_load_s": 2.0,
             "first_weights": "", "weights": "", "load_s": [1.0, 1.5, 2.0], "ready_s": [1.2, 1.8, 4.0],
             "peak_rss": 7 << 29, "load": _summary([1.0, 1.5, 2.0]), "ready": _summary([1.2, 1.8, 4.0])},
            {"engine": "llama.cpp", "format": "Q8_0", "threads": 2, "status": "skipped", "reason": "not installed",
             "first_load_s": None, "first_weights": "", "weights": "", "load_s": [], "ready_s": [],
             "peak_rss": None, "load": None, "ready": None},
        ],
        "bandwidth": {"gbs": {"1": 10.0, "2": 20.0}, "buffer_bytes": 1 << 30, "passes": 5},
        "ceiling": [{"format": "Q4_0", "bytes_per_token": 1_600_000_000, "bandwidth_gbs": 20.0, "threads": 2,
                     "ceiling_tps": 12.5, "phi2cpu_tg": 6.5, "llama_cpp_tg": 6.5}],
        "perplexity": {"text": "eval.txt", "window": 512, "max_windows": 16, "rows": [
            {"engine": "phi2cpu", "format": "Q8_0", "status": "ok", "reason": "", "ppl": 8.7, "n_windows": 16,
             "n_scored": 8176}]},
        "kl": {"reference": "phi2cpu F32", "positions": 256, "text": "t", "rows": [
            {"engine": "phi2cpu", "format": "Q4_0", "status": "ok", "reason": "", "mean_kl": 1e-3, "max_kl": 1e-2,
             "top1_agree": 0.9, "n_positions": 256}]},
    }


def test_report_rendering():
    md = report.render_markdown(synthetic_results())
    assert "**MISMATCH**" in md and "3/32" in md
    assert "| phi2cpu | Q4_0 | 2 | 21.00 (20.00–22.00) | 6.50 (6.00–7.00) |" in md
    assert "1.91× / 1.00×" in md  # phi2cpu / llama.cpp medians: 21/11 and 6.5/6.5
    assert "skipped (python package 'torch' is not installed)" in md
    assert "hf-bf16: python package 'torch' is not installed" in md
    assert "12.50 | 6.50 (52%)" in md
    assert "8.7000" in md and "1.000e-03" in md and "90.0%" in md
    assert "`abc123`" in md and "Test CPU" in md
    # the load table: phi2cpu and llama.cpp side by side, with llama.cpp ÷ phi2cpu medians
    assert "## Load" in md and "counted trials: cache (cache:" in md
    assert "| phi2cpu | Q4_0 | 2 | 0.50 (0.40–0.60) | 0.60 (0.50–0.90) |  | 6.50 (cache-written) | 1.50 GiB |" in md
    assert "| llama.cpp | Q4_0 | 2 | 1.50 (1.00–2.00) | 1.80 (1.20–4.00) | 3.00× / 3.00× | 2.00 | 3.50 GiB |" in md
    assert "| llama.cpp | Q8_0 | 2 | skipped (not installed) |" in md


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    files = report.plot(synthetic_results(), tmp_path)
    assert len(files) == 2
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
