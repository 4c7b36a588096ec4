"""HF checkpoint reading: namings, dtypes, sharding, the real Phi-2 index, and bad inputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from phi2cpu.checkpoint import (NAMINGS, HFCheckpoint, SafetensorsFile, expected_gguf_shapes, gguf_tensor_names,
                                hf_to_gguf_name, main, source_names, write_random_checkpoint)
from phi2cpu.config import PhiConfig
from phi2cpu.errors import ModelFileError

TINY = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 320, "vocab_size": 512, "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048}
TINY_OLD = {"model_type": "phi-msft", "n_embd": 160, "n_head": 2, "n_layer": 2, "n_inner": 320, "vocab_size": 512,
            "rotary_dim": 32, "layer_norm_epsilon": 1e-5, "n_positions": 2048}
DTYPE_TOL = {"float32": (0.0, 0.0), "float16": (1e-3, 1e-7), "bfloat16": (4e-3, 0.0)}  # rounding (rtol, atol)


def test_phi2_index_maps_to_expected_tensors(phi2_dir):
    cfg = PhiConfig.from_hf(json.loads((phi2_dir / "config.json").read_text()))
    index = json.loads((phi2_dir / "model.safetensors.index.json").read_text())
    mapped = {name: hf_to_gguf_name(name, cfg.n_layer) for name in index["weight_map"]}
    assert [n for n, g in mapped.items() if g is None] == []
    shapes = expected_gguf_shapes(cfg)
    assert set(mapped.values()) == set(shapes) == set(gguf_tensor_names(cfg.n_layer))
    assert sum(math.prod(s) for s in shapes.values()) * 2 == index["metadata"]["total_size"] == 5559367680


def test_phi2_config_both_key_sets(phi2_dir):
    cfg = PhiConfig.from_hf(json.loads((phi2_dir / "config.json").read_text()))
    assert (cfg.n_vocab, cfg.n_embd, cfg.n_ff, cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_rot) == \
        (51200, 2560, 10240, 32, 32, 80, 32)
    assert (cfg.rope_theta, cfg.norm_eps, cfg.n_ctx_train) == (10000.0, 1e-5, 2048)
    old = {"model_type": "phi-msft", "n_embd": 2560, "n_layer": 32, "n_head": 32, "rotary_dim": 32,
           "layer_norm_epsilon": 1e-5, "n_positions": 2048, "vocab_size": 51200}
    assert PhiConfig.from_hf(old) == cfg


def test_old_namings_map():
    assert hf_to_gguf_name("transformer.h.3.mixer.Wqkv.bias", 4) == "blk.3.attn_qkv.bias"
    assert hf_to_gguf_name("lm_head.ln.weight", 4) == "output_norm.weight"
    assert hf_to_gguf_name("layers.0.wte.weight", 4) == "token_embd.weight"
    assert hf_to_gguf_name("layers.1.mlp.fc2.weight", 4) == "blk.0.ffn_down.weight"
    assert hf_to_gguf_name("layers.5.linear.bias", 4) == "output.bias"
    assert hf_to_gguf_name("model.layers.0.self_attn.k_proj.weight", 4) == "blk.0.attn_qkv.weight"
    assert hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq", 4) is None
    for naming in NAMINGS:
        srcs = [s for g in gguf_tensor_names(4) for s in source_names(naming, g, 4)]
        assert len(srcs) == len(set(srcs)) == 4 * 10 + 5 + (4 * 4 if naming == "current" else 0)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = write_random_checkpoint(tmp_path_factory.mktemp("base"), TINY, seed=3, shards=1, dtype="float32")
    ck = HFCheckpoint(d)
    return ck.config, dict(ck)


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shards", [1, 2])
def test_namings_dtypes_shards_load_identically(tmp_path, baseline, naming, dtype, shards):
    cfg_json = TINY if naming == "current" else dict(TINY_OLD, model_type=naming)
    d = write_random_checkpoint(tmp_path, cfg_json, seed=3, shards=shards, dtype=dtype, naming=naming)
    assert (d / "model.safetensors.index.json").exists() == (shards > 1)
    ck = HFCheckpoint(d)
    base_cfg, base = baseline
    assert ck.naming == naming and ck.config == base_cfg
    assert ck.tensor_names() == list(base)
    for name in ck.tensor_names():
        got = ck.load(name)
        assert got.dtype == np.float32 and got.shape == ck.expected_shapes()[name]
        rtol, atol = DTYPE_TOL[dtype]
        np.testing.assert_allclose(got, base[name], rtol=rtol, atol=atol)


def test_reader_agrees_with_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float16), "b": rng.standard_normal(7).astype(np.float32),
              "e": np.zeros((0, 4), np.float32)}
    save_file(arrays, tmp_path / "x.safetensors")
    f = SafetensorsFile(tmp_path / "x.safetensors")
    for name, arr in arrays.items():
        out = np.empty(arr.shape, np.float32)
        f.read_into(name, out)
        np.testing.assert_array_equal(out, arr.astype(np.float32))
    pytest.importorskip("torch", reason="bf16 cross-check decodes with torch")
    d = write_random_checkpoint(tmp_path / "ck", TINY, shards=2, dtype="bfloat16")
    with safe_open(d / "model-00002-of-00002.safetensors", "pt") as lib:
        want = lib.get_tensor("lm_head.weight").float().numpy()
    np.testing.assert_array_equal(HFCheckpoint(d).load("output.weight"), want)


def test_mini_checkpoint_fuses_qkv(mini_dir):
    ck = HFCheckpoint(mini_dir)
    assert ck.naming == "current" and ck.config.n_embd == 256 and ck.config.n_rot == 32
    index = json.loads((mini_dir / "model.safetensors.index.json").read_text())["weight_map"]
    parts = []
    for x in "qkv":
        src = f"model.layers.1.self_attn.{x}_proj.weight"
        with safe_open(mini_dir / index[src], "np") as f:
            parts.append(f.get_tensor(src).astype(np.float32))
    np.testing.assert_array_equal(ck.load("blk.1.attn_qkv.weight"), np.concatenate(parts))


# ----------------------------------------------------------------------------- bad inputs

@pytest.fixture
def single(tmp_path):
    return write_random_checkpoint(tmp_path / "ck", TINY, shards=1, dtype="float16")


def test_truncated_safetensors(single):
    path = single / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: truncated: tensor .* needs data"):
        HFCheckpoint(single)


def test_garbage_header(single):
    path = single / "model.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all....." + b"\0" * 64)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        HFCheckpoint(single)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        HFCheckpoint(single)


def _rewrite(path, edit):
    """Re-save a safetensors file after `edit(dict of arrays)`."""
    with safe_open(path, "np") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    edit(arrays)
    save_file(arrays, path)


def test_missing_tensor(single):
    _rewrite(single / "model.safetensors", lambda a: a.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ModelFileError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj\.bias "
                                             r"\(needed for blk\.1\.attn_qkv\.bias\)"):
        HFCheckpoint(single)


def test_misshaped_tensor(single):
    def edit(a):
        a["model.layers.0.mlp.fc1.weight"] = a["model.layers.0.mlp.fc1.weight"][:, :96].copy()
    _rewrite(single / "model.safetensors", edit)
    with pytest.raises(ModelFileError, match=r"model\.layers\.0\.mlp\.fc1\.weight has shape \[320, 96\], "
                                             r"expected \[320, 160\]"):
        HFCheckpoint(single)


def test_unsupported_dtype(single):
    _rewrite(single / "model.safetensors",
             lambda a: a.update({"lm_head.bias": a["lm_head.bias"].astype(np.float64)}))
    with pytest.raises(ModelFileError, match=r"lm_head\.bias: dtype F64 is not supported"):
        HFCheckpoint(single)


def test_non_phi_config(single):
    (single / "config.json").write_text(json.dumps(dict(TINY, model_type="llama", architectures=["LlamaForCausalLM"])))
    with pytest.raises(ModelFileError, match="not a Phi-2 config"):
        HFCheckpoint(single)
    (single / "config.json").write_text(json.dumps(dict(TINY, qk_layernorm=True)))
    with pytest.raises(ModelFileError, match="qk_layernorm"):
        HFCheckpoint(single)


def test_missing_shard(tmp_path):
    d = write_random_checkpoint(tmp_path / "ck", TINY, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFileError, match="shard model-00002-of-00002.safetensors .* is missing"):
        HFCheckpoint(d)


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        HFCheckpoint(tmp_path)


def test_cli_random_copies_tokenizer(tmp_path, phi2_dir):
    (tmp_path / "c.json").write_text(json.dumps(TINY))
    out = tmp_path / "ck"
    assert main(["random", str(out), "--config", str(tmp_path / "c.json"), "--tokenizer-dir", str(phi2_dir),
                 "--dtype", "bfloat16", "--naming", "phi-msft", "--seed", "3"]) == 0
    assert (out / "tokenizer.json").read_bytes() == (phi2_dir / "tokenizer.json").read_bytes()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "transformer.h.1.mixer.Wqkv.weight" in index["weight_map"]
    sizes = sum((out / f).stat().st_size for f in set(index["weight_map"].values()))
    assert index["metadata"]["total_size"] < sizes < index["metadata"]["total_size"] + 8192
