"""AWQ-style scales (phi2cpu.awq): folding leaves the float model's logits unchanged, the searched
scales lower the weighted output error of the quantized matrices, and `quantize --awq` is checked."""
from __future__ import annotations

import numpy as np
import pytest
from fakes import TINY_MODEL_VOCAB, write_tiny_tokenizer_json
from gguf import GGMLQuantizationType as T

from phi2cpu import _core, awq
from phi2cpu import imatrix as imx
from phi2cpu.checkpoint import HFCheckpoint, write_random_checkpoint
from phi2cpu.errors import Phi2Error
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import main, quantize
from phi2cpu.reference import load_reference_weights, reference_logits

CFG = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
       "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": TINY_MODEL_VOCAB, "partial_rotary_factor": 0.5}
IDS = [11, 260, 42, 7, 310, 9, 64, 12, 3, 256, 77, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("awq")
    ck = write_random_checkpoint(d / "ck", CFG, seed=7, std=0.05)
    write_tiny_tokenizer_json(ck)
    config, weights = load_reference_weights(ck)
    # skewed input statistics, as real activations have: a few channels far larger than most
    rng = np.random.default_rng(3)
    im = imx.IMatrix(datasets=["synthetic"], chunk_count=1, chunk_size=64)
    for point, names in imx.matrix_inputs(config.n_layer).items():
        n = weights[names[0]].shape[1]
        m = rng.lognormal(0.0, 1.5, n)
        for name in names:
            im.sums[name], im.counts[name] = m * 64, 64
    path = imx.save(im, d / "imatrix.gguf")
    return {"dir": d, "ck": ck, "config": config, "weights": weights, "imatrix": path, "im": im}


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_folding_leaves_the_float_logits_unchanged(tiny):
    c, w = tiny["config"], tiny["weights"]
    want = reference_logits(c, w, IDS)
    folded = {k: v.copy() for k, v in w.items()}
    rng = np.random.default_rng(0)
    for i in range(c.n_layer):
        awq.fold_layer(folded, i, c.n_embd, rng.lognormal(0, 1, c.n_embd), rng.lognormal(0, 1, c.n_embd))
    awq.fold_output(folded, rng.lognormal(0, 1, c.n_embd))
    assert _rel(folded["blk.0.ffn_up.weight"], w["blk.0.ffn_up.weight"]) > 0.5  # the tensors did change
    assert _rel(reference_logits(c, folded, IDS), want) < 1e-5


def test_the_folder_serves_a_model_with_the_same_logits(tiny):
    """Scales forced (alpha 0.8 only) through the Folder the quantizer uses: its float tensors are the
    same function, and its bytes are the quantization of those tensors."""
    c, w, im = tiny["config"], tiny["weights"], tiny["im"]
    types = {n: int(T.Q4_0) if v.ndim == 2 else int(T.F32) for n, v in w.items()}
    f = awq.Folder(lambda n: w[n], types, im.importance, c.n_embd, alphas=(0.8,))
    served = {n: f.tensor(n) for n in w}
    assert f.report["blk.0"]["alpha_norm"] == 0.8 and f.report["output"]["alpha"] == 0.8
    assert _rel(served["blk.1.attn_norm.weight"], w["blk.1.attn_norm.weight"]) > 0.5
    assert _rel(reference_logits(c, served, IDS), reference_logits(c, w, IDS)) < 1e-5
    for n in ("blk.0.attn_qkv.weight", "blk.1.ffn_up.weight", "blk.1.attn_output.weight", "output.weight"):
        s = awq.scales(im.importance(n), 0.8)
        want = _core.quantize(served[n], int(T.Q4_0), (im.importance(n) / s**2).astype(np.float32))
        assert np.array_equal(f.quantized(n), want), n
    assert f.quantized("blk.0.ffn_down.weight") is None and f.quantized("token_embd.weight") is None


def _group_error(weights, deq, norm_w, qkv_bias, im, i, n):
    """The weighted error of layer i's attn_qkv + ffn_up in the original model's coordinates, with the
    scales recovered from the F32 norm weight (s_ln) and V bias (s_v) of the file."""
    p = f"blk.{i}."
    s_ln = weights[p + "attn_norm.weight"] / norm_w
    s_v = weights[p + "attn_qkv.bias"][2 * n:] / qkv_bias[2 * n:]
    m = im.importance(p + "attn_qkv.weight")
    qkv = deq[p + "attn_qkv.weight"] / s_ln
    qkv[2 * n:] *= s_v[:, None]
    up = deq[p + "ffn_up.weight"] / s_ln
    return (((qkv - weights[p + "attn_qkv.weight"]) ** 2) @ m).sum() + (((up - weights[p + "ffn_up.weight"]) ** 2) @ m).sum()


def _file(path):
    mf = read_model_file(path)
    out = {}
    for name, t in mf.tensors.items():
        raw = np.asarray(mf.raw(name))
        out[name] = (raw.view(np.float32).reshape(t.shape) if t.ggml_type == T.F32 else
                     _core.dequantize(raw.reshape(t.shape[0], -1), t.ggml_type, t.shape[-1]).reshape(t.shape))
    return mf, out


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k_m"])
def test_awq_lowers_the_weighted_error_of_the_file(tiny, tmp_path, qtype):
    c, w, im = tiny["config"], tiny["weights"], tiny["im"]
    plain, folded = tmp_path / "plain.gguf", tmp_path / "awq.gguf"
    quantize(tiny["ck"], plain, qtype, progress=False, imatrix=tiny["imatrix"])
    s = quantize(tiny["ck"], folded, qtype, progress=False, imatrix=tiny["imatrix"], awq=True)
    assert set(s["awq"]) == {"blk.0", "blk.1", "output"}
    mf, deq = _file(folded)
    assert mf.recipe["awq"]["alphas"] == list(awq.ALPHAS)
    _, deq_plain = _file(plain)
    gains = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        e_awq = _group_error(w, deq, deq[p + "attn_norm.weight"], deq[p + "attn_qkv.bias"], im, i, c.n_embd)
        e_plain = _group_error(w, deq_plain, w[p + "attn_norm.weight"], w[p + "attn_qkv.bias"], im, i, c.n_embd)
        assert e_awq <= e_plain * 1.001, (i, e_awq, e_plain)
        gains.append(e_awq / e_plain)
    assert min(gains) < 0.95, gains  # on skewed statistics the scaling wins somewhere
    # the untouched tensors are the plain file's
    assert np.array_equal(deq["blk.0.ffn_down.weight"], deq_plain["blk.0.ffn_down.weight"])


def test_awq_needs_a_quantized_mix(tiny, tmp_path):
    with pytest.raises(Phi2Error, match="f16 quantizes none of them"):
        quantize(tiny["ck"], tmp_path / "x.gguf", "f16", progress=False, imatrix=tiny["imatrix"], awq=True)
    assert not list(tmp_path.iterdir())


def test_awq_needs_an_imatrix(tiny, tmp_path, capsys):
    with pytest.raises(Phi2Error, match="pass --imatrix"):
        quantize(tiny["ck"], tmp_path / "x.gguf", "q4_0", progress=False, awq=True)
    assert main([str(tiny["ck"]), str(tmp_path / "x.gguf"), "q4_0", "--awq", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "pass --imatrix FILE too" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_scales_have_geometric_mean_one_and_alpha_zero_is_none():
    m = np.array([1e-12, 0.0, 1.0, 100.0])
    assert np.allclose(awq.scales(m, 0.0), 1.0)
    s = awq.scales(m, 1.0)
    assert np.isclose(np.exp(np.log(s).mean()), 1.0) and np.all(np.isfinite(s)) and np.all(s > 0)
    assert s[3] / s[2] == pytest.approx(10.0)
