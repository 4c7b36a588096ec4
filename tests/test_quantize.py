"""Quantizer and GGUF container: bytes equal gguf.quants, files read back with gguf's own reader
and ours, the recipe holds, and bad GGUF files are refused with a clear message."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from phi2cpu import _core
from phi2cpu.checkpoint import HFCheckpoint, write_random_checkpoint
from phi2cpu.errors import ModelFileError
from phi2cpu.gguf_io import read_model_file, write_gguf
from phi2cpu.quantize import main, quantize

TINY = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 320, "vocab_size": 51200, "partial_rotary_factor": 0.4}
MATRICES = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, phi2_dir):
    return write_random_checkpoint(tmp_path_factory.mktemp("ck"), TINY, seed=1, tokenizer_dir=phi2_dir)


@pytest.fixture(scope="module")
def quantized(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    files = {}
    for q in ("f32", "f16", "q8_0", "q4_0"):
        files[q] = out / f"tiny.{q}.gguf"
        summary = quantize(ckpt, files[q], q, progress=False)
        assert summary["file_bytes"] == files[q].stat().st_size
    return files


def _bytes(mf, name):
    return np.asarray(mf.raw(name)).reshape(-1)


@pytest.mark.parametrize("qtype,qt", [("q8_0", T.Q8_0), ("q4_0", T.Q4_0)])
def test_bytes_equal_gguf_quants(ckpt, quantized, qtype, qt):
    mf = read_model_file(quantized[qtype])
    ck = HFCheckpoint(ckpt)
    for name in ck.tensor_names():
        t = mf.tensors[name]
        if len(t.shape) == 1:
            want_type = T.F32
        else:
            want_type = T.Q8_0 if name == "output.weight" else qt
        assert t.ggml_type == want_type, name
        want = gguf.quants.quantize(ck.load(name), want_type)
        assert np.array_equal(_bytes(mf, name), want.reshape(-1).view(np.uint8)), name


def test_recipe_and_metadata(quantized, phi2_dir):
    types = {"f32": ("F32", "F32", 0), "f16": ("F16", "F16", 1),     # blocks, lm_head, general.file_type
             "q8_0": ("Q8_0", "Q8_0", 7), "q4_0": ("Q4_0", "Q8_0", 2)}
    tok_json = (phi2_dir / "tokenizer.json").read_text(encoding="utf-8")
    vocab = json.loads(tok_json)["model"]["vocab"]
    for q, path in quantized.items():
        mf = read_model_file(path)
        blocks, lm_head, file_type = types[q]
        assert mf.recipe["qtype"] == q and mf.recipe["output.weight"] == lm_head
        assert mf.kv["general.file_type"] == file_type and mf.kv["general.quantization_version"] == 2
        for name, t in mf.tensors.items():
            if len(t.shape) == 1:
                assert t.type_name == "F32", name
            elif name == "output.weight":
                assert t.type_name == lm_head
            else:
                assert t.type_name == blocks, name
        assert mf.config.n_embd == 160 and mf.config.n_rot == 32 and mf.config.n_vocab == 51200
        assert mf.kv["tokenizer.ggml.model"] == "gpt2" and mf.kv["tokenizer.ggml.pre"] == "phi-2"
        assert mf.kv["tokenizer.ggml.eos_token_id"] == 50256 and mf.kv["tokenizer.ggml.add_bos_token"] is False
        assert mf.tokenizer_json == tok_json
        assert len(mf.tokens) == len(mf.token_types) == 51200 and len(mf.merges) == 50000
        assert all(mf.tokens[i] == t for t, i in list(vocab.items())[::97])
        assert mf.tokens[50256] == "<|endoftext|>" and mf.token_types[50256] == 3
        assert mf.token_types[50257] == 4 and mf.token_types[100] == 1
        assert mf.tokens[50295] == "[PAD50295]" and mf.token_types[51199] == 4


def test_gguf_package_reads_our_file(quantized):
    path = quantized["q4_0"]
    r = gguf.GGUFReader(path)
    mf = read_model_file(path)
    assert r.fields["general.architecture"].contents() == "phi2"
    assert r.fields["tokenizer.ggml.tokens"].contents()[50256] == "<|endoftext|>"
    assert r.fields["phi2.rope.dimension_count"].contents() == 32
    assert len(r.tensors) == len(mf.tensors) == 1 + 2 * 10 + 4
    for t in r.tensors:
        info = mf.tensors[t.name]
        assert (info.offset, info.nbytes, info.ggml_type) == (t.data_offset, t.n_bytes, int(t.tensor_type))
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), _bytes(mf, t.name))


def test_float_files_hold_source_values(ckpt, quantized):
    ck = HFCheckpoint(ckpt)
    f32, f16 = read_model_file(quantized["f32"]), read_model_file(quantized["f16"])
    for name in ("token_embd.weight", "blk.1.attn_qkv.weight", "output.bias"):
        x = ck.load(name)
        assert np.array_equal(_bytes(f32, name).view(np.float32), x.reshape(-1))
        f16_type = f16.tensors[name].ggml_type
        want = x.reshape(-1).astype(np.float16 if f16_type == T.F16 else np.float32)
        assert np.array_equal(_bytes(f16, name).view(want.dtype), want)


def test_requantize_from_gguf(quantized, tmp_path):
    out = tmp_path / "re.gguf"
    quantize(quantized["q8_0"], out, "f32", progress=False, allow_requantize=True)
    src, re = read_model_file(quantized["q8_0"]), read_model_file(out)
    w = gguf.quants.dequantize(np.asarray(src.raw("blk.0.ffn_up.weight")), T.Q8_0)
    assert np.array_equal(_bytes(re, "blk.0.ffn_up.weight").view(np.float32), w.reshape(-1))
    assert re.tokens == src.tokens and re.merges == src.merges and re.tokenizer_json == src.tokenizer_json


def _tiny_tensors(mf_path, split_qkv=False, drop=(), retype=None):
    """(name, data, type, shape) of an f32 file, optionally edited."""
    mf = read_model_file(mf_path)
    out = []
    for name, t in mf.tensors.items():
        x = np.asarray(mf.raw(name)).view(np.float32).reshape(t.shape)
        if name in drop:
            continue
        if split_qkv and ".attn_qkv." in name:
            for part, y in zip("qkv", np.split(x, 3)):
                out.append((name.replace("attn_qkv", f"attn_{part}"), y, int(T.F32), y.shape))
        elif retype and name in retype:
            qt = retype[name]
            out.append((name, gguf.quants.quantize(x, qt), int(qt), x.shape))
        else:
            out.append((name, x, int(T.F32), x.shape))
    return mf, out


def test_separate_qkv_accepted_and_fused(quantized, tmp_path):
    mf, tensors = _tiny_tensors(quantized["f32"], split_qkv=True)
    path = write_gguf(tmp_path / "split.gguf", mf.config, tensors, None, 0, {})
    split = read_model_file(path)
    assert not split.fused_qkv and split.tensors["blk.1.attn_k.weight"].shape == (160, 160)
    quantize(path, tmp_path / "fused.gguf", "f32", progress=False)
    fused = read_model_file(tmp_path / "fused.gguf")
    assert fused.fused_qkv
    assert np.array_equal(_bytes(fused, "blk.1.attn_qkv.bias"), _bytes(mf, "blk.1.attn_qkv.bias"))


def test_failed_write_leaves_no_file(quantized, tmp_path):
    mf, tensors = _tiny_tensors(quantized["f32"])

    def boom():
        raise RuntimeError("interrupted")
    tensors[5] = (tensors[5][0], boom, tensors[5][2], tensors[5][3])
    with pytest.raises(RuntimeError):
        write_gguf(tmp_path / "x.gguf", mf.config, tensors, None, 0, {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad GGUF files

def test_truncated_gguf(quantized, tmp_path):
    data = quantized["q4_0"].read_bytes()
    for cut, msg in ((len(data) - 1000, r"truncated: tensor output\.bias"), (50_000, "truncated GGUF file")):
        (tmp_path / "t.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=msg):
            read_model_file(tmp_path / "t.gguf")


def test_not_gguf(tmp_path, ckpt):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_file(tmp_path / "x.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_file(tmp_path / "empty.gguf")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_file(ckpt / "model-00001-of-00002.safetensors")


def test_other_architecture(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match=r"llama\.gguf is a 'llama' model; phi2cpu runs only phi2"):
        read_model_file(tmp_path / "llama.gguf")


def test_missing_tensor_gguf(quantized, tmp_path):
    mf, tensors = _tiny_tensors(quantized["f32"], drop=("blk.1.ffn_down.bias",))
    write_gguf(tmp_path / "m.gguf", mf.config, tensors, None, 0, {})
    with pytest.raises(ModelFileError, match=r"missing tensor blk\.1\.ffn_down\.bias"):
        read_model_file(tmp_path / "m.gguf")


def test_wrong_shape_gguf(quantized, tmp_path):
    mf, tensors = _tiny_tensors(quantized["f32"])
    i = next(k for k, t in enumerate(tensors) if t[0] == "blk.0.ffn_up.weight")
    tensors[i] = ("blk.0.ffn_up.weight", tensors[i][1][:, :128].copy(), 0, (320, 128))
    write_gguf(tmp_path / "s.gguf", mf.config, tensors, None, 0, {})
    with pytest.raises(ModelFileError, match=r"blk\.0\.ffn_up\.weight has shape \[320, 128\], expected \[320, 160\]"):
        read_model_file(tmp_path / "s.gguf")


def test_unsupported_types(quantized, tmp_path):
    mf, tensors = _tiny_tensors(quantized["f32"], retype={"blk.0.ffn_up.weight": T.BF16})
    # write_gguf only sizes supported types, so write this one with the gguf package directly
    w = gguf.GGUFWriter(tmp_path / "bf16.gguf", "phi2")
    for k, v in mf.config.to_gguf_kv().items():
        (w.add_float32 if isinstance(v, float) else w.add_uint32)(k, v)
    for name, data, qt, shape in tensors:
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=T(qt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    supported = "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS"
    with pytest.raises(ModelFileError, match=rf"ffn_up\.weight has type BF16; phi2cpu supports {supported}$"):
        read_model_file(tmp_path / "bf16.gguf")
    mf, tensors = _tiny_tensors(quantized["f32"], retype={"blk.0.attn_norm.weight": T.Q8_0})
    write_gguf(tmp_path / "nb.gguf", mf.config, tensors, None, 0, {})
    with pytest.raises(ModelFileError, match="attn_norm.weight has type Q8_0; norms and biases must be F32 or F16"):
        read_model_file(tmp_path / "nb.gguf")


def test_cli(ckpt, tmp_path, capsys):
    assert main([str(ckpt), str(tmp_path / "m.gguf"), "--type", "q4_0", "--quiet"]) == 0
    assert "q4_0" in capsys.readouterr().out
    assert main([str(tmp_path / "nope"), str(tmp_path / "n.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "n.gguf").exists()


# ----------------------------------------------------------------------------- llama-quantize habits

def test_upper_case_type_names(ckpt, tmp_path, capsys):
    assert main([str(ckpt), str(tmp_path / "m.gguf"), "--type", "Q4_0", "--quiet"]) == 0
    assert read_model_file(tmp_path / "m.gguf").recipe["qtype"] == "q4_0"
    assert "q4_0" in capsys.readouterr().out
    assert quantize(ckpt, tmp_path / "k.gguf", "Q4_K_M", progress=False)["qtype"] == "q4_k_m"
    assert read_model_file(tmp_path / "k.gguf").kv["general.file_type"] == 15
    with pytest.raises(SystemExit):
        main([str(ckpt), str(tmp_path / "x.gguf"), "--type", "Q3_K"])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


def test_type_as_the_third_positional_like_llama_quantize(ckpt, tmp_path, capsys):
    """`llama-quantize IN OUT Q4_K_M`: TYPE may follow OUT; with --type too, the two must agree."""
    assert main([str(ckpt), str(tmp_path / "m.gguf"), "Q4_K_M", "--quiet"]) == 0
    assert read_model_file(tmp_path / "m.gguf").kv["general.file_type"] == 15
    assert main([str(ckpt), str(tmp_path / "same.gguf"), "q4_0", "--type", "Q4_0", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main([str(ckpt), str(tmp_path / "x.gguf"), "q4_0", "--type", "q8_0"])
    assert "TYPE q4_0 and --type q8_0 differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(ckpt), str(tmp_path / "x.gguf"), "Q3_K"])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


def test_out_that_is_a_directory_is_refused_before_any_work(quantized, tmp_path, capsys, monkeypatch):
    """The error names OUT (not a temporary file), and comes before the conversion runs."""
    import phi2cpu.quantize as q

    monkeypatch.setattr(q, "write_gguf", lambda *a, **k: pytest.fail("converted into a directory"))
    (tmp_path / "models").mkdir()
    assert main([str(quantized["f16"]), str(tmp_path / "models"), "--type", "q8_0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'models'}: is a directory" in err and err.count("\n") == 1 and ".tmp" not in err
    assert list((tmp_path / "models").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_requantize_needs_allow_requantize(quantized, tmp_path, capsys):
    for q in ("q8_0", "q4_0"):
        out = tmp_path / f"re-{q}.gguf"
        assert main([str(quantized[q]), str(out), "--type", "q4_0", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ": error: " in err
        assert "already quantized" in err and q.upper() in err and "--allow-requantize" in err
        assert not out.exists() and list(tmp_path.iterdir()) == []
    out = tmp_path / "re.gguf"
    assert main([str(quantized["q8_0"]), str(out), "--type", "q4_0", "--quiet", "--allow-requantize"]) == 0
    assert read_model_file(out).recipe["qtype"] == "q4_0"
    # float GGUFs are sources, not re-quantizations
    for q in ("f32", "f16"):
        assert main([str(quantized[q]), str(tmp_path / f"from-{q}.gguf"), "--type", "q8_0", "--quiet"]) == 0


def test_out_must_not_be_src(quantized, tmp_path, capsys):
    src = tmp_path / "src.gguf"
    src.write_bytes(quantized["f16"].read_bytes())
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.gguf").symlink_to(src)
    import os
    os.link(src, tmp_path / "hard.gguf")
    for out in (src, tmp_path / "sub" / ".." / "src.gguf", tmp_path / "link.gguf", tmp_path / "hard.gguf"):
        assert main([str(src), str(out), "--type", "q8_0", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "OUT is the same file as SRC" in err and err.count("\n") == 1
        assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.gguf", "link.gguf", "src.gguf", "sub"]
    with pytest.raises(Exception, match="same file"):
        quantize(src, src, "q8_0", progress=False)


@pytest.mark.parametrize("qtype, name", [
    ("f32", "all F32"), ("f16", "F16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q4_k_m", "Q4_K - Medium"),
    ("q5_k_m", "Q5_K - Medium"), ("q6_k", "Q6_K"), ("q5_0", "Q5_0"), ("q4_1", "Q4_1"), ("q5_1", "Q5_1"),
    ("iq4_nl", "IQ4_NL - 4.5 bpw"), ("iq4_xs", "IQ4_XS - 4.25 bpw"),
])
def test_info_file_type_bits_and_memory(ckpt, tmp_path, capsys, qtype, name):
    from phi2cpu.cli import main as cli_main

    path = tmp_path / f"tiny.{qtype}.gguf"
    quantize(ckpt, path, qtype, progress=False)
    assert cli_main(["info", str(path), "--ctx", "100"]) == 0
    out = capsys.readouterr().out
    assert f"\nfile type:     {name}\n" in out
    r = gguf.GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in r.tensors)
    n_params = sum(int(np.prod(t.shape)) for t in r.tensors)
    assert f"bits/weight:   {n_bytes * 8 / n_params:.2f} " in out
    kv = 2 * 2 * 100 * 160 * 2   # K and V, f16 (the default): 2 layers, 100 positions, n_embd 160
    flat = " ".join(out.split())
    assert f"KV cache {kv / 1024:.2f} KiB (f16 K and V: 2 x 2 layers x 100 positions x 160 x 2 bytes)" in flat
    line = next(x for x in out.splitlines() if x.startswith("memory at --ctx 100: "))
    acts = 100 * (7 * 160 + 320) * 4 + 51200 * 4 + 100 * (2 * 292 + 320 * 4)
    total = (n_bytes + kv + acts) / 2**20
    assert line.startswith(f"memory at --ctx 100: {total:.2f} MiB"), (line, total)


def test_threads_do_not_change_a_byte(ckpt, tmp_path, capsys):
    """Rows are shared among threads; every type's bytes, and the whole file's, are the same."""
    x = np.random.default_rng(5).standard_normal((37, 512)).astype(np.float32)
    for t in _core.types():
        if t["weight"] and t["block_size"] > 1:
            one = _core.quantize(x, t["id"], threads=1)
            assert np.array_equal(_core.quantize(x, t["id"], threads=3), one), t["name"]
            assert np.array_equal(_core.quantize(x, t["id"], threads=64), one), t["name"]  # more threads than rows
    with pytest.raises(ValueError, match="threads must be at least 1"):
        _core.quantize(x, int(T.Q8_0), threads=0)
    paths = [tmp_path / f"t{n}.gguf" for n in (1, 2)]
    for n, path in zip((1, 2), paths):
        quantize(ckpt, path, "q5_0", progress=False, threads=n)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert main([str(ckpt), str(tmp_path / "t0.gguf"), "--type", "q8_0", "--threads", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "threads must be a whole number of at least 1, not 0" in err and err.count("\n") == 1
    assert not (tmp_path / "t0.gguf").exists()


def test_tensor_type_overrides_like_llama_quantize(ckpt, tmp_path, capsys):
    """--token-embedding-type, --output-tensor-type and --tensor-type PATTERN=TYPE (first match wins)
    replace the mix's per-tensor types; K types fall back where the rows are not a multiple of 256."""
    out = tmp_path / "o.gguf"
    assert main([str(ckpt), str(out), "q4_0", "--token-embedding-type", "q6_k", "--output-tensor-type", "Q4_0",
                 "--tensor-type", r"blk\.0\.ffn_down=q8_0", "--tensor-type", "ffn_down=q5_0",
                 "--tensor-type", "attn_qkv=q4_k", "--quiet"]) == 0
    mf = read_model_file(out)
    types = {n: t.ggml_type for n, t in mf.tensors.items()}
    # TINY's rows are 160 (320 for ffn_down) values: Q6_K and Q4_K take 256, so they fall back to Q8_0
    assert types["token_embd.weight"] == T.Q8_0 and types["output.weight"] == T.Q4_0
    assert types["blk.0.ffn_down.weight"] == T.Q8_0 and types["blk.1.ffn_down.weight"] == T.Q5_0
    assert types["blk.0.attn_qkv.weight"] == T.Q8_0 and types["blk.1.ffn_up.weight"] == T.Q4_0
    assert types["blk.0.attn_norm.weight"] == T.F32 and types["output.bias"] == T.F32
    assert mf.kv["general.file_type"] == 2  # still a q4_0 file
    assert mf.recipe["tensor_types"][0] == [r"^token_embd\.weight$", "Q6_K"]
    assert mf.recipe["overridden"]["blk.1.ffn_down.weight"] == "Q5_0"
    w = HFCheckpoint(ckpt).load("blk.1.ffn_down.weight")
    assert np.array_equal(_bytes(mf, "blk.1.ffn_down.weight"), gguf.quants.quantize(w, T.Q5_0).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("args,message", [
    (["--output-tensor-type", "q9_9"], "tensor type 'q9_9' for --output-tensor-type is not one of"),
    (["--token-embedding-type", "q9"], "tensor type 'q9' for --token-embedding-type is not one of"),
    (["--tensor-type", "blk.(=q4_0"], "is not a regular expression"),
    (["--tensor-type", "ffn_down=q4"], "tensor type 'q4' for 'ffn_down' is not one of"),
])
def test_bad_tensor_type_overrides_are_one_line_errors(ckpt, tmp_path, capsys, args, message):
    out = tmp_path / "o.gguf"
    assert main([str(ckpt), str(out), "q4_0", "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_tensor_type_needs_pattern_and_type(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(ckpt), str(tmp_path / "o.gguf"), "q4_0", "--tensor-type", "ffn_down"])
    assert "expected PATTERN=TYPE" in capsys.readouterr().err
