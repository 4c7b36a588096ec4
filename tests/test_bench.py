"""The benchmark harness: a --quick-style run on a tiny model, the bandwidth probe, the verdicts and
the report (missing peers are skipped, a validation mismatch is flagged)."""
from __future__ import annotations

import json
import time
from pathlib import Path

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


# ----------------------------------------------------------------------------- the matrix and the peers

def _resolved(*argv, cores=2):
    from phi2cpu.bench.run import build_parser, resolve

    return resolve(build_parser().parse_args(list(argv)), cores)


def test_default_matrix_is_the_decided_one():
    a = _resolved()
    assert a.formats == ["Q4_0", "Q8_0", "Q4_K_M"] and a.threads == [1, 2] and a.runs == 3
    assert "hf-fp32" not in a.engines and "hf-bf16" not in a.engines and "kl" not in a.sections
    assert {"openvino", "ort-genai", "torch-int8"} <= set(a.engines) and a.budget_min == 30
    assert _resolved(cores=16).threads == [1, 16] and _resolved(cores=1).threads == [1]
    full = _resolved("--full")
    assert "F16" in full.formats and {"hf-fp32", "hf-bf16"} <= set(full.engines) and "kl" in full.sections
    quick = _resolved("--quick")
    assert quick.formats == ["Q4_0"] and quick.threads == [2] and quick.budget_min == 5
    assert "torch-int8" not in quick.engines and "openvino" in quick.engines
    assert quick.sections == ["validate", "ppl", "bandwidth", "speed"]
    # explicit choices win over the defaults
    assert _resolved("--engines", "hf-fp32", "--formats", "F16").engines == ["phi2cpu", "hf-fp32"]


def test_speed_groups_put_each_peer_beside_its_class_at_all_cores_only():
    from phi2cpu.bench.run import speed_groups

    engs = list(_resolved().engines)
    groups = speed_groups(["Q4_0", "Q8_0", "Q4_K_M"], [1, 2], engs)
    assert [(t, f) for t, f, _ in groups] == [(2, "Q4_0"), (2, "Q4_K_M"), (2, "Q8_0"),
                                              (1, "Q4_0"), (1, "Q4_K_M"), (1, "Q8_0")]
    cells = {(t, f): members for t, f, members in groups}
    assert cells[(2, "Q4_0")] == [("phi2cpu", "Q4_0"), ("llama.cpp", "Q4_0"), ("openvino", "int4"),
                                  ("ort-genai", "int4")]
    assert cells[(2, "Q8_0")][2:] == [("openvino", "int8"), ("ort-genai", "int8"), ("torch-int8", "int8")]
    assert cells[(2, "Q4_K_M")] == [("phi2cpu", "Q4_K_M"), ("llama.cpp", "Q4_K_M")]
    assert all(len(m) == 2 for t, _, m in groups if t == 1)  # only phi2cpu and llama.cpp at 1 thread
    # without Q4_0 the int4 exports join the first 4-bit format there is; the HF engines join F16
    alt = {f: m for t, f, m in speed_groups(["Q4_K_M", "F16"], [2], engs + ["hf-fp32"])}
    assert ("openvino", "int4") in alt["Q4_K_M"] and ("hf-fp32", "F16") in alt["F16"]


def test_missing_new_peers_are_named_skips(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    gone = {"openvino_genai", "onnxruntime_genai"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    assert "openvino_genai" in engines.missing_reason(engines.OPENVINO)
    assert "onnxruntime_genai" in engines.missing_reason(engines.ORT_GENAI)


def test_builder_is_fed_the_rotary_factor_and_a_wrong_cos_cache_is_refused(tmp_path, mini_dir):
    from phi2cpu.bench import exports

    stage = tmp_path / "stage"
    cfg = json.loads((mini_dir / "config.json").read_text())
    cfg.pop("partial_rotary_factor")
    cfg["rope_parameters"] = {"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").write_bytes(b"x")
    exports.stage_for_builder(src, stage)
    staged = json.loads((stage / "config.json").read_text())
    assert staged["partial_rotary_factor"] == 0.5 == staged["rope_parameters"]["partial_rotary_factor"]
    assert (stage / "model.safetensors").is_symlink()

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def model_with_cos(width):
        out = tmp_path / f"m{width}"
        out.mkdir()
        cos = helper.make_tensor("cos_cache", TensorProto.FLOAT, [4, width], [0.0] * 4 * width)
        graph = helper.make_graph([], "g", [], [], initializer=[cos])
        onnx.save(helper.make_model(graph), str(out / "model.onnx"))
        return out

    exports.check_rotary(model_with_cos(16), mini_dir)  # mini: head 64, rotary 32
    with pytest.raises(exports.AssetError, match="20-wide cos_cache for rotary dims 32"):
        exports.check_rotary(model_with_cos(20), mini_dir)


def test_export_commands():
    from phi2cpu.bench import exports

    ort4 = exports.command("ort-genai", "int4", Path("S"), Path("O"))
    assert ort4[-2:] == ["--extra_options", "int4_accuracy_level=4"] and ort4[ort4.index("-p") + 1] == "int4"
    assert "--extra_options" not in exports.command("ort-genai", "int8", Path("S"), Path("O"))
    ov = exports.command("openvino", "int8", Path("S"), Path("O"))
    assert ov[ov.index("--weight-format") + 1] == "int8" and "openvino" in ov
    assert exports.display_command("openvino", "int4").startswith("python -m optimum.commands.optimum_cli export")
    with pytest.raises(ValueError):
        exports.command("openvino", "Q4_0", Path("S"), Path("O"))


def test_export_is_made_once_and_never_left_half_made(tmp_path, monkeypatch, mini_dir):
    import sys

    from phi2cpu.bench import assets, exports

    monkeypatch.setattr(exports, "exporter_missing", lambda engine: None)
    runs = tmp_path / "runs"
    runs.write_text("")

    def fake(engine, fmt, src, out, fail=False):
        code = (f"import pathlib, sys; open({str(runs)!r}, 'a').write('x'); o = pathlib.Path({str(out)!r}); "
                f"o.mkdir(parents=True); (o / 'openvino_model.xml').write_text('m'); "
                f"{'sys.exit(3)' if fail else '(o / ' + repr('openvino_model.bin') + ').write_text(1 * chr(0))'}")
        return [sys.executable, "-c", code]

    cache = assets.Cache(tmp_path / "cache", log=lambda m: None)
    monkeypatch.setattr(exports, "command", lambda *a: fake(*a, fail=True))
    with pytest.raises(exports.AssetError, match="export failed \\(exit status 3"):
        exports.export(cache, "openvino", "int8", mini_dir)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing under a final name, no temp left

    monkeypatch.setattr(exports, "command", fake)
    out = exports.export(cache, "openvino", "int8", mini_dir)
    assert (out / "openvino_model.bin").is_file() and out.name.startswith("phi2-mini-code-")
    assert out.name.endswith(".openvino-int8") and exports.export(cache, "openvino", "int8", mini_dir) == out
    assert runs.read_text() == "xx"  # the failed try and the one that made it; the cache served the third
    monkeypatch.setattr(exports, "exporter_missing", lambda engine: "no tool")
    assert exports.export(cache, "openvino", "int8", mini_dir) == out  # a cached export needs no tool
    with pytest.raises(exports.AssetError, match="no tool"):
        exports.export(cache, "openvino", "int4", mini_dir)


def test_peer_check_refuses_a_build_that_computes_another_model():
    c = quality.PeerCheck("ort-genai", "int4")
    ref = list(range(32))
    quality.judge_peer(c, ref, ref[:28] + [0, 0, 0, 0])
    assert c.status == "ok" and c.top1_agree == pytest.approx(28 / 32)
    bad = quality.PeerCheck("ort-genai", "int4")
    quality.judge_peer(bad, ref, ref[:10] + [0] * 22)
    assert bad.status == "refused" and "31% of 32 positions" in bad.reason
    assert quality.check_ends(256) == sorted(set(quality.check_ends(256))) and quality.check_ends(256)[-1] == 256


def test_worker_lets_a_generate_only_engine_time_itself():
    from phi2cpu.bench.worker import Server

    class GenerateOnly:
        def reset(self):
            raise AssertionError("a generate-only engine is never stepped")

        def prefill_s(self, ids):
            return 0.5

        def decode(self, prompt, n):
            return 2.0, list(range(n))

        def greedy(self, ids, n):
            return {"tokens": [len(ids)] * n, "margins": None, "top": None}

    server = Server.__new__(Server)
    server.engine = GenerateOnly()
    assert server.handle({"cmd": "pp", "ids": [1, 2]}) == {"ok": True, "s": 0.5}
    assert server.handle({"cmd": "tg", "prompt": [1], "n": 3}) == {"ok": True, "s": 2.0, "tokens": [0, 1, 2]}
    assert server.handle({"cmd": "next", "ids": list(range(10)), "ends": [3, 7]}) == {"ok": True, "tokens": [3, 7]}
    # a judge without the other engine's margins uses the reference's
    ref = {"tokens": [1, 2, 3], "margins": [1.0, 0.01, 1.0]}
    assert quality.judge(ref, {"tokens": [1, 9, 9], "margins": None}, 3)[:2] == ("near-tie", 1)


def test_report_ranks_phi2cpu_against_the_best_peer_of_each_class_and_names_every_skip():
    res = synthetic_results()
    cell = dict(model="m", load_s=1.0, peak_rss=1 << 30, alternated_with=[], reason="", status="ok")
    res["speed"] += [
        {**cell, "engine": "openvino", "format": "int4", "threads": 2, "pp": _summary([40, 42, 41]),
         "tg": _summary([5, 5, 5])},
        {**cell, "engine": "ort-genai", "format": "int4", "threads": 2, "pp": _summary([15, 15, 15]),
         "tg": _summary([6.5, 5.0, 5.0])},
        {**cell, "engine": "ort-genai", "format": "int8", "threads": 2, "status": "skipped",
         "reason": "failed its check on phi2-mini-code: 10% of 32", "pp": None, "tg": None},
    ]
    rows = {(r["class"], r["which"]): r for r in report.best_by_class(res)}
    pp, tg = rows[("4-bit", "pp")], rows[("4-bit", "tg")]
    assert pp["peer"] == "openvino int4" and pp["ratio"] == pytest.approx(21 / 41)
    assert tg["peer"] == "llama.cpp Q4_0" and tg["ratio"] == pytest.approx(1.0)  # ort's median is 5.0
    res["peer_checks"] = [{"engine": "ort-genai", "format": "int8", "status": "refused", "top1_agree": 0.1,
                           "n_positions": 32, "reason": "failed its check"}]
    res["export_commands"] = {"openvino int4": "python -m optimum.commands.optimum_cli export openvino"}
    md = report.render_markdown(res)
    assert "| 2 | 4-bit | prompt 512 | 21.00 (Q4_0) | openvino int4 | 41.00 | **0.51×** |" in md
    assert "ort-genai int8 threads=2: skipped: failed its check on phi2-mini-code" in md
    assert "| ort-genai | int8 | 10% of 32 | refused: failed its check |" in md
    assert "`python -m optimum.commands.optimum_cli export openvino`" in md
    assert report.compared_format("openvino", "int4") == "Q4_0" and report.compared_format("hf-bf16", "F16") == "F16"
