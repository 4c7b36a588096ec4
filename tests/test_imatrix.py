"""Importance matrices: collection through the hooks, llama.cpp's GGUF and legacy .dat formats, the
importance-weighted quantizers of every type, `quantize --imatrix`, and KL divergence in perplexity."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

import phi2cpu
from phi2cpu import _core, imatrix as imx
from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.cli import main as cli_main
from phi2cpu.errors import ModelFileError, Phi2Error
from phi2cpu.gguf_io import read_model_file
from phi2cpu.perplexity import perplexity, window_kl
from phi2cpu.quantize import quantize
from fakes import awkward_rows

CFG = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
       "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 51200, "partial_rotary_factor": 0.5}
WEIGHTED = [t for t in _core.types() if t.get("weighted")]
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 12


def weighted_err(x, y, imp):
    return float((((x - y) ** 2) * imp).sum())


# ----------------------------------------------------------------------------- C++ quantizers

@pytest.mark.parametrize("t", WEIGHTED, ids=lambda t: t["name"])
def test_weighted_quantizer_lowers_the_weighted_error(t):
    n = 1024
    rng = np.random.default_rng(1)
    x = awkward_rows(n)
    imp = (rng.gamma(0.5, 1.0, n) ** 2).astype(np.float32)  # a few columns matter far more than most
    plain = _core.dequantize(_core.quantize(x, t["id"]), t["id"], n)
    weighted = _core.dequantize(_core.quantize(x, t["id"], imp), t["id"], n)
    assert np.all(np.isfinite(weighted))
    assert weighted_err(x, weighted, imp) < 0.9 * weighted_err(x, plain, imp)
    # every row on its own is no worse than the unweighted encoding, but for fp16 rounding of its scales
    for r in range(x.shape[0]):
        energy = float((x[r].astype(np.float64) ** 2 * imp).sum())
        assert weighted_err(x[r], weighted[r], imp) <= 1.02 * weighted_err(x[r], plain[r], imp) + 1e-5 * energy


@pytest.mark.parametrize("t", WEIGHTED, ids=lambda t: t["name"])
def test_importance_moves_the_error_to_unimportant_columns(t):
    n, rng = 512, np.random.default_rng(2)
    x = rng.standard_normal((16, n)).astype(np.float32)
    imp = np.ones(n, np.float32)
    imp[::4] = 100.0  # every 4th column matters
    y = _core.dequantize(_core.quantize(x, t["id"], imp), t["id"], n)
    u = _core.dequantize(_core.quantize(x, t["id"], np.ones(n, np.float32)), t["id"], n)
    assert ((x - y)[:, ::4] ** 2).sum() < ((x - u)[:, ::4] ** 2).sum()


@pytest.mark.parametrize("t", WEIGHTED, ids=lambda t: t["name"])
def test_zero_importance_falls_back_to_uniform(t):
    n = 256 if t["block_size"] == 256 else 64
    x = np.random.default_rng(3).standard_normal((4, n)).astype(np.float32)
    zero = _core.quantize(x, t["id"], np.zeros(n, np.float32))
    ones = _core.quantize(x, t["id"], np.ones(n, np.float32))
    assert np.array_equal(zero, ones)


def test_importance_is_checked():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="one weight per column"):
        _core.quantize(x, int(gguf.GGMLQuantizationType.Q4_0), np.ones(32, np.float32))
    with pytest.raises(ValueError, match="no importance-weighted quantizer"):
        _core.quantize(x, int(gguf.GGMLQuantizationType.F16), np.ones(64, np.float32))


# ----------------------------------------------------------------------------- collection

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, phi2_dir):
    d = tmp_path_factory.mktemp("imx")
    ck = write_random_checkpoint(d / "ck", CFG, seed=4, tokenizer_dir=phi2_dir, std=0.05)
    f32 = d / "tiny.f32.gguf"
    quantize(ck, f32, "f32", progress=False)
    return {"dir": d, "ck": ck, "f32": f32}


@pytest.fixture(scope="module")
def model(tiny):
    return phi2cpu.load(tiny["f32"], threads=2, n_ctx=256, repack_cache=False)


def _layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_collect_sums_the_inputs_of_each_matrix(model, tiny):
    ids = model.tokenize(TEXT)
    im = imx.collect(model, TEXT, chunk_size=64, dataset="t.txt")
    n_chunks = len(ids) // 64
    assert im.chunk_count == n_chunks and im.chunk_size == 64 and im.datasets == ["t.txt"]
    assert set(im.sums) == {f"blk.{i}.{m}.weight" for i in range(2) for m in
                            ("attn_qkv", "attn_output", "ffn_up", "ffn_down")} | {"output.weight"}
    assert all(c == n_chunks * 64 for c in im.counts.values())
    # layer 0's LayerNorm input is the embedding rows: recompute its two readers' statistics in NumPy
    mf = read_model_file(tiny["f32"])
    t = lambda name: np.asarray(mf.raw(name)).view(np.float32).reshape(mf.tensors[name].shape)
    h = _layernorm(t("token_embd.weight")[ids[: n_chunks * 64]], t("blk.0.attn_norm.weight"),
                   t("blk.0.attn_norm.bias")).astype(np.float64)
    want = (h ** 2).sum(0)
    for name in ("blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"):
        np.testing.assert_allclose(im.sums[name], want, rtol=2e-4)
    g = _gelu_new(h @ t("blk.0.ffn_up.weight").T.astype(np.float64) + t("blk.0.ffn_up.bias"))
    np.testing.assert_allclose(im.sums["blk.0.ffn_down.weight"], (g ** 2).sum(0), rtol=2e-3)
    assert im.sums["blk.0.attn_output.weight"].shape == (256,) and im.sums["blk.0.ffn_down.weight"].shape == (512,)


def test_collect_refuses_a_text_shorter_than_a_chunk(model):
    with pytest.raises(Phi2Error, match="one chunk needs 256"):
        imx.collect(model, "x = 1", chunk_size=256)


# ----------------------------------------------------------------------------- files

def _sample(n_cols=(256, 512)) -> imx.IMatrix:
    rng = np.random.default_rng(5)
    im = imx.IMatrix(datasets=["calib.txt"], chunk_count=3, chunk_size=64)
    im.sums = {"blk.0.ffn_up.weight": rng.random(n_cols[0]) * 10, "blk.0.ffn_down.weight": rng.random(n_cols[1])}
    im.counts = {"blk.0.ffn_up.weight": 192, "blk.0.ffn_down.weight": 192}
    return im


def test_gguf_round_trip_in_llama_cpp_layout(tmp_path):
    im = _sample()
    p = imx.save(im, tmp_path / "im.gguf")
    r = gguf.GGUFReader(p)
    assert r.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in r.fields
    assert r.fields["imatrix.datasets"].contents() == ["calib.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 3 and r.fields["imatrix.chunk_size"].contents() == 64
    shapes = {t.name: (t.shape.tolist(), t.tensor_type) for t in r.tensors}
    assert shapes["blk.0.ffn_up.weight.in_sum2"] == ([256, 1], gguf.GGMLQuantizationType.F32)  # ggml ne order
    assert shapes["blk.0.ffn_up.weight.counts"] == ([1, 1], gguf.GGMLQuantizationType.F32)
    back = imx.load(p)
    assert back.counts == im.counts and back.datasets == im.datasets and back.chunk_count == 3
    for k in im.sums:
        np.testing.assert_allclose(back.sums[k], im.sums[k].astype(np.float32))
        np.testing.assert_allclose(back.importance(k), im.sums[k] / 192, rtol=1e-6)
    assert not list(tmp_path.glob(".*tmp"))


def _write_dat(path, entries, tail=True, chunks=3, dataset=b"calib.txt"):
    b = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        b += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, len(values))
        b += np.asarray(values, "<f4").tobytes()
    if tail:
        b += struct.pack("<i", chunks) + struct.pack("<i", len(dataset)) + dataset
    path.write_bytes(b)
    return path


def test_legacy_dat_gives_the_same_importance(tmp_path):
    mean = np.linspace(0.5, 2.0, 256)
    p = _write_dat(tmp_path / "im.dat", [(b"blk.0.ffn_up.weight", 3, mean * 3)])
    im = imx.load(p)
    np.testing.assert_allclose(im.importance("blk.0.ffn_up.weight"), mean, rtol=1e-6)
    assert im.chunk_count == 3 and im.datasets == ["calib.txt"]
    assert imx.load(_write_dat(tmp_path / "bare.dat", [(b"a.weight", 2, [4.0])], tail=False)).importance("a.weight") == 2


@pytest.mark.parametrize("corrupt, message", [
    (lambda g: g[: len(g) // 2], "not a readable GGUF"),
    (lambda g: b"\x00\x00\x00\x00garbage", "entry count 0"),
    (lambda g: b"\xff" * 40, "entry count -1"),
    (lambda g: b"", "cut short"),
])
def test_corrupt_files_are_clear_errors(tmp_path, corrupt, message):
    good = imx.save(_sample(), tmp_path / "im.gguf").read_bytes()
    p = tmp_path / "bad.gguf"
    p.write_bytes(corrupt(good))
    with pytest.raises(ModelFileError, match=message):
        imx.load(p)


def test_truncated_dat_and_bad_entries_are_clear_errors(tmp_path):
    p = _write_dat(tmp_path / "im.dat", [(b"blk.0.ffn_up.weight", 3, np.ones(256))])
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="cut short"):
        imx.load(p)
    with pytest.raises(ModelFileError, match="non-negative"):
        imx.load(_write_dat(tmp_path / "neg.dat", [(b"a.weight", 1, [-1.0])]))


def test_an_imatrix_of_no_named_dataset_round_trips(tmp_path):
    im = _sample()
    im.datasets = []
    back = imx.load(imx.save(im, tmp_path / "anon.gguf"))
    assert back.datasets == [] and back.chunk_count == im.chunk_count and set(back.sums) == set(im.sums)


def test_gguf_without_metadata_or_counts_is_refused(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "nometa.gguf", "phi2")
    w.add_tensor("a.weight.in_sum2", np.ones((1, 32), np.float32))
    w.add_tensor("a.weight.counts", np.ones((1, 1), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ModelFileError, match="not an imatrix file"):
        imx.load(tmp_path / "nometa.gguf")
    im = _sample()
    p = imx.save(im, tmp_path / "ok.gguf")
    r = gguf.GGUFReader(p)
    w = gguf.GGUFWriter(tmp_path / "nocounts.gguf", "x")
    w.kv_data[0].pop("general.architecture")
    for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"):
        f = r.fields[k]
        (w.add_array if k.endswith("datasets") else w.add_uint32)(k, f.contents())
    w.add_tensor("a.weight.in_sum2", np.ones((1, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ModelFileError, match="a.weight has sums but no counts"):
        imx.load(tmp_path / "nocounts.gguf")


def test_an_imatrix_for_another_model_does_not_fit(tiny, tmp_path, capsys):
    out = tmp_path / "q.gguf"
    wide = imx.save(_sample((128, 512)), tmp_path / "wide.gguf")
    assert cli_main(["quantize", str(tiny["f32"]), str(out), "q4_0", "--imatrix", str(wide), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("phi2cpu: error:") and "does not fit" in err and "128 columns" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    im = _sample()
    im.sums["blk.7.ffn_up.weight"], im.counts["blk.7.ffn_up.weight"] = np.ones(256), 1
    with pytest.raises(Phi2Error, match="blk.7.ffn_up.weight, which is not one of the model's matrices"):
        quantize(tiny["f32"], out, "q4_0", progress=False, imatrix=imx.save(im, tmp_path / "deep.gguf"))


# ----------------------------------------------------------------------------- quantize and CLI

def test_cli_imatrix_then_quantize_with_it(tiny, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    imf = tmp_path / "im.gguf"
    assert cli_main(["imatrix", str(tiny["f32"]), str(text), "-o", str(imf), "--chunk-size", "64", "-q"]) == 0
    assert "matrices" in capsys.readouterr().out
    im = imx.load(imf)
    del im.sums["output.weight"], im.counts["output.weight"]  # keep the test fast: block matrices only
    imx.save(im, imf)
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(tiny["f32"], plain, "q4_k_m", progress=False)
    s = quantize(tiny["f32"], weighted, "q4_k_m", progress=False, imatrix=imf)
    assert s["recipe"]["imatrix"]["entries"] == 8 and s["recipe"]["imatrix"]["datasets"] == ["calib.txt"]
    src, a, b = (read_model_file(p) for p in (tiny["f32"], plain, weighted))
    for name in ("blk.0.attn_qkv.weight", "blk.1.ffn_down.weight"):
        x = np.asarray(src.raw(name)).view(np.float32).reshape(src.tensors[name].shape)
        t = a.tensors[name]
        ya = _core.dequantize(a.raw(name).reshape(t.shape[0], -1), t.ggml_type, t.shape[-1])
        yb = _core.dequantize(b.raw(name).reshape(t.shape[0], -1), t.ggml_type, t.shape[-1])
        imp = im.importance(name)
        assert weighted_err(x, yb, imp) < weighted_err(x, ya, imp)
    assert np.array_equal(a.raw("token_embd.weight"), b.raw("token_embd.weight"))  # no statistics: unweighted
    phi2cpu.load(weighted, threads=1, n_ctx=64).eval([1, 2, 3])


def test_cli_imatrix_errors(tiny, tmp_path, capsys):
    text = tmp_path / "c.txt"
    text.write_text("x = 1\n")
    assert cli_main(["imatrix", str(tiny["f32"]), str(text), "-o", str(tmp_path / "no" / "im.gguf")]) == 1
    assert "output directory does not exist" in capsys.readouterr().err
    assert cli_main(["imatrix", str(tiny["f32"]), str(text), "-o", str(tmp_path / "im.gguf"), "-q"]) == 1
    assert "one chunk needs 512" in capsys.readouterr().err
    assert not (tmp_path / "im.gguf").exists()


# ----------------------------------------------------------------------------- KL divergence

def test_kl_divergence_from_a_base_model(tiny, model, tmp_path):
    q = tmp_path / "q4_0.gguf"
    quantize(tiny["f32"], q, "q4_0", progress=False)
    qm = phi2cpu.load(q, threads=2, n_ctx=256, repack_cache=False)
    assert perplexity(model, TEXT, window=64, base=model).kl_mean == pytest.approx(0.0, abs=1e-9)
    res = perplexity(qm, TEXT, window=64, max_windows=2, base=model)
    ids = model.tokenize(TEXT)
    want = []
    for w in range(2):
        chunk = ids[w * 64: (w + 1) * 64]
        model.reset(), qm.reset()
        lb = model.eval(chunk, all_logits=True).astype(np.float64)
        lq = qm.eval(chunk, all_logits=True).astype(np.float64)
        pb = np.exp(lb - lb.max(1, keepdims=True))
        pb /= pb.sum(1, keepdims=True)
        pq = np.exp(lq - lq.max(1, keepdims=True))
        pq /= pq.sum(1, keepdims=True)
        want += list((pb * (np.log(pb) - np.log(pq))).sum(1)[:63])
    assert res.kl_mean > 0 and res.kl_mean == pytest.approx(np.mean(want), rel=1e-6)
    assert window_kl(np.zeros((3, 5)), np.zeros((3, 5)), 3).tolist() == [0.0, 0.0, 0.0]


def test_perplexity_cli_prints_the_kl_line(tiny, tmp_path, capsys):
    text = tmp_path / "e.txt"
    text.write_text(TEXT)
    assert cli_main(["perplexity", str(tiny["f32"]), str(text), "--window", "64", "--max-windows", "1", "-q",
                     "--kl-base", str(tiny["f32"])]) == 0
    assert "mean KL divergence from" in capsys.readouterr().out
