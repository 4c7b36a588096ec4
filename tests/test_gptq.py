"""GPTQ error-feedback rounding: the block layouts it rewrites, lower output error than round-to-nearest
on correlated inputs, `quantize --gptq` files, and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import phi2cpu
from phi2cpu import _core, gptq
from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.cli import main as cli_main
from phi2cpu.errors import Phi2Error
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import quantize

CODECS = list(gptq.CODECS)
NAME = {t["id"]: t["name"] for t in _core.types()}
CFG = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
       "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 51200, "partial_rotary_factor": 0.5}
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 12
Q4_0 = 2


def correlated(n: int = 512, rows: int = 24, seed: int = 0):
    """W (rows, n) and H = X^T X of inputs whose columns are correlated and of unequal size."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((n, n)) * 0.3 + np.eye(n)
    x = rng.standard_normal((2048, n)) @ mix * rng.uniform(0.2, 3.0, n)
    return rng.standard_normal((rows, n)).astype(np.float32), x.T @ x


@pytest.mark.parametrize("t", CODECS, ids=lambda t: NAME[t])
def test_layout_codes_and_grid_match_the_engine(t):
    c = gptq.CODECS[t]
    w, _ = correlated(rows=8)
    raw = _core.quantize(w, t)
    blocks = raw.reshape(8, -1, c.type_size)
    codes = gptq.codes_of(c, blocks)
    a, b = c.params(blocks)
    assert np.array_equal(a * c.grid[codes] + b, _core.dequantize(raw, t, w.shape[1]).reshape(w.shape))
    assert np.array_equal(gptq.with_codes(c, blocks, codes), blocks)
    flipped = (len(c.grid) - 1) - codes
    assert np.array_equal(gptq.codes_of(c, gptq.with_codes(c, blocks, flipped)), flipped)


@pytest.mark.parametrize("t", CODECS, ids=lambda t: NAME[t])
def test_feedback_lowers_the_output_error_against_round_to_nearest(t):
    c = gptq.CODECS[t]
    w, h = correlated()
    raw, q = gptq.quantize_matrix(w, h, t)
    assert np.array_equal(_core.dequantize(raw, t, w.shape[1]).reshape(w.shape), q)
    # round-to-nearest on exactly the scales the feedback pass chose
    blocks = raw.reshape(w.shape[0], -1, c.type_size)
    a, b = c.params(blocks)
    rtn = np.stack([gptq.nearest(c, w[:, j].astype(np.float64), a[:, j], b[:, j])[1] for j in range(w.shape[1])], 1)
    plain = _core.dequantize(_core.quantize(w, t), t, w.shape[1]).reshape(w.shape)
    e = gptq.output_error(w, q, h)
    assert e < 0.75 * gptq.output_error(w, rtn, h)
    assert e < 0.75 * gptq.output_error(w, plain, h)


def test_uncorrelated_inputs_give_the_type_quantizers_rounding():
    w, h = correlated()
    h = np.diag(np.diag(h))  # no off-diagonal terms: no error passes between columns
    raw, q = gptq.quantize_matrix(w, h, Q4_0)
    ref = _core.quantize(w, Q4_0)
    blocks = raw.reshape(w.shape[0], -1, 18)
    assert np.array_equal(blocks[..., :2], ref.reshape(blocks.shape)[..., :2])  # same scales
    assert np.mean(raw == ref) > 0.995  # same codes but where x / d sits on a rounding boundary
    # the weighted search sees one span at a time (its sigma^2 term is the span's, not the row's)
    imp = (np.diag(h) / 2048).astype(np.float32)
    raw, q = gptq.quantize_matrix(w, h, Q4_0, imp)
    ref = np.concatenate([_core.quantize(np.ascontiguousarray(w[:, s:s + 32]), Q4_0, np.ascontiguousarray(imp[s:s + 32]))
                          for s in range(0, w.shape[1], 32)], axis=1)
    assert np.mean(raw == ref) > 0.995


def test_dead_columns_and_dampening():
    w, h = correlated(n=64, rows=4)
    h[5, :], h[:, 5] = 0, 0
    u = gptq.upper_inverse_factor(h)
    assert np.allclose(np.triu(u), u) and u[5, 5] > 0 and np.all(u[5, 6:] == 0)
    hd = h.copy()
    hd[5, 5] = 1
    hd += gptq.DAMP * np.mean(np.diag(hd)) * np.eye(64)
    assert np.allclose(u.T @ u @ hd, np.eye(64), atol=1e-8)


def test_matrix_errors():
    w, h = correlated(n=64, rows=4)
    with pytest.raises(Phi2Error, match="not Q2_K"):
        gptq.quantize_matrix(w, h, 10)
    with pytest.raises(Phi2Error, match="256-column spans"):
        gptq.quantize_matrix(w, h, 12)
    with pytest.raises(Phi2Error, match="64x64 covariance"):
        gptq.quantize_matrix(w, h[:32, :32], Q4_0)


# ----------------------------------------------------------------------------- quantize --gptq

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, phi2_dir):
    d = tmp_path_factory.mktemp("gptq")
    ck = write_random_checkpoint(d / "ck", CFG, seed=5, tokenizer_dir=phi2_dir, std=0.05)
    f32 = d / "tiny.f32.gguf"
    quantize(ck, f32, "f32", progress=False)
    text = d / "calib.txt"
    text.write_text(TEXT)
    return {"dir": d, "ck": ck, "f32": f32, "text": text}


@pytest.fixture(scope="module")
def gq(tiny):
    out = tiny["dir"] / "g.gguf"
    s = quantize(tiny["f32"], out, "q4_0", progress=False, gptq=tiny["text"], gptq_chunk_size=64, gptq_chunks=2,
                 threads=2)
    return out, s


def test_gptq_file_is_a_standard_q4_0_gguf_of_the_gptq_rounding(tiny, gq):
    out, s = gq
    r = s["recipe"]["gptq"]
    # 2 layers x 4 matrices in Q4_0, and lm_head in Q8_0
    assert r["calibration"] == "calib.txt" and r["tensors"] == 9 and r["chunk_size"] == 64 and r["chunks"] == 2
    mf = read_model_file(out)
    assert mf.recipe["gptq"] == r
    assert {mf.tensors[n].type_name for n in mf.tensors if len(mf.tensors[n].shape) == 2} == {"Q4_0", "Q8_0"}
    # the same covariances by hand, from the float model over the same chunks
    m = phi2cpu.load(tiny["f32"], threads=2, n_ctx=64, repack_cache=False)
    ids = m.tokenize(TEXT)
    src = read_model_file(tiny["f32"])
    for name, point in (("blk.1.ffn_down.weight", "mlp_post.1"), ("blk.0.attn_qkv.weight", "ln.0")):
        xs = [np.asarray(m.run_with_cache(ids[c * 64:(c + 1) * 64], [point], logits=False)[point], np.float64)
              for c in range(2)]
        h = sum(x.T @ x for x in xs)
        w = np.asarray(src.raw(name)).view(np.float32).reshape(src.tensors[name].shape)
        raw, q = gptq.quantize_matrix(w, h, Q4_0)
        assert np.array_equal(mf.raw(name).reshape(raw.shape), raw)
        t = mf.tensors[name]
        assert np.array_equal(_core.dequantize(mf.raw(name).reshape(t.shape[0], -1), t.ggml_type, t.shape[-1]),
                              q.astype(np.float32))
    plain = _core.quantize(np.asarray(src.raw("token_embd.weight")).view(np.float32).reshape(51200, 256), Q4_0)
    assert np.array_equal(plain, mf.raw("token_embd.weight").reshape(plain.shape))  # a lookup: no inputs
    logits = phi2cpu.load(out, threads=1, n_ctx=64, repack_cache=False).eval(ids[:16], all_logits=True)
    assert np.all(np.isfinite(logits))


def test_gptq_with_imatrix_uses_its_weighted_scales(tiny, gq, tmp_path):
    from phi2cpu import imatrix as imx

    rng = np.random.default_rng(3)
    im = imx.IMatrix(datasets=["calib.txt"], chunk_count=1, chunk_size=64)
    for i in range(2):
        for part, n in (("attn_qkv", 256), ("ffn_up", 256), ("attn_output", 256), ("ffn_down", 512)):
            im.add(f"blk.{i}.{part}.weight", rng.standard_normal((4, n)) * rng.gamma(0.5, 1.0, n))
    imf = imx.save(im, tmp_path / "im.gguf")
    b = tmp_path / "b.gguf"
    s = quantize(tiny["f32"], b, "q4_0", progress=False, gptq=tiny["text"], gptq_chunk_size=64, gptq_chunks=2,
                 imatrix=imf, tensor_types=[("ffn_up", "q4_k")], threads=2)
    assert s["recipe"]["gptq"]["scales"] == "imatrix-weighted search" and s["recipe"]["gptq"]["tensors"] == 9
    fa, fb = read_model_file(gq[0]), read_model_file(b)
    assert fb.tensors["blk.0.ffn_up.weight"].type_name == "Q4_K"
    assert not np.array_equal(fa.raw("blk.0.attn_output.weight"), fb.raw("blk.0.attn_output.weight"))


def test_gptq_errors(tiny, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    cases = [
        (dict(gptq=tiny["text"], awq=True, imatrix=tiny["text"]), "cannot be combined"),
        (dict(gptq_chunks=2), "pass --gptq TEXT too"),
        (dict(gptq=tmp_path / "missing.txt"), "cannot read the calibration text"),
        (dict(gptq=tiny["text"], gptq_chunks=0), "at least 1"),
    ]
    for kw, msg in cases:
        with pytest.raises(Phi2Error, match=msg):
            quantize(tiny["f32"], out, "q4_0", progress=False, **kw)
    with pytest.raises(Phi2Error, match="SRC must be a GGUF"):
        quantize(tiny["ck"], out, "q4_0", progress=False, gptq=tiny["text"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"def f():\xff\n")
    with pytest.raises(Phi2Error, match="not valid UTF-8"):
        quantize(tiny["f32"], out, "q4_0", progress=False, gptq=bad)
    with pytest.raises(Phi2Error, match="no matrix of this file"):
        quantize(tiny["f32"], out, "f16", progress=False, gptq=tiny["text"], gptq_chunk_size=64)
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    assert cli_main(["quantize", str(tiny["f32"]), str(out), "q4_0", "--gptq", str(short), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("phi2cpu: error:") and "at least one chunk of 512" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))
