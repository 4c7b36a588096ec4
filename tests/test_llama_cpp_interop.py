"""Our GGUF files load in llama.cpp (through llama-cpp-python), llama.cpp's files load in phi2cpu,
and both engines compute the same model.

phi2-mini-code (real trained weights) is converted by phi2cpu.quantize to F16, Q8_0, Q4_0, Q4_K_M,
Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K_S/M/L, Q4_K_S and Q5_K_S; each file is run by llama.cpp and by phi2cpu: the tokenizations must be equal, the logits
close, and the greedy continuations the same up to a near-tie. The other way round, an F16 file laid
out as llama.cpp's converter writes it (no phi2cpu.* keys) is quantized by llama.cpp's own
quantizer to Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K_S/M/L, Q4_K_S and
Q5_K_S (mixed types per tensor: Q6_K attn_v/ffn_down in
some layers, Q6_K output even in Q4_0 files), and phi2cpu must run those files with the same
results. Our IQ4_XS bytes equal llama.cpp's quantizer's, and our mixes give every tensor of a
16-layer model llama.cpp's type (with its attn_q/k/v separate, and with our fused attn_qkv). Skipped when llama_cpp is not importable.
"""
from __future__ import annotations

import ctypes

import gguf
import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'phi2cpu[bench]')")

import phi2cpu  # noqa: E402
from phi2cpu import _core, reference  # noqa: E402
from phi2cpu.bench.quality import judge  # noqa: E402
from phi2cpu.gguf_io import read_model_file  # noqa: E402
from phi2cpu.quantize import quantize  # noqa: E402
from tolerances import TOLERANCES  # noqa: E402

N_VALID = 50295
TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Héllo wörld — ünïcode 你好 🙂 and emoji",
    "  leading spaces\n\n\ttabs\r\n   trailing   ",
    "numbers 1234567 3.14159 0x1F, CamelCaseWords and snake_case_words",
]
PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n"
N_GREEDY = 16


# llama.cpp's file types (enum llama_ftype) for its quantizer
LLAMA_FTYPES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q8_0": 7, "q4_0": 2, "q5_0": 8, "q4_1": 3, "q5_1": 9, "iq4_nl": 25,
                "iq4_xs": 30, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q5_k_s": 16}
LOW_K = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q5_k_s"]


@pytest.fixture(scope="module")
def converter_f16(tmp_path_factory, mini_dir):
    from converter_style import write_converter_style_f16

    return write_converter_style_f16(mini_dir, tmp_path_factory.mktemp("conv") / "mini.f16.gguf")


def _llama_quantize(src, out, qtype: str):
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = LLAMA_FTYPES[qtype]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama.cpp could not quantize to {qtype}"
    return out


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory, converter_f16):
    d = tmp_path_factory.mktemp("llama_q")
    files = {"f16": converter_f16}
    for qtype in LLAMA_FTYPES:
        files[qtype] = _llama_quantize(converter_f16, d / f"mini.{qtype}.gguf", qtype)
    return files


@pytest.fixture(scope="module", params=["ours-f16", "ours-q8_0", "ours-q4_0", "ours-q4_k_m", "ours-q5_0", "ours-q4_1",
                                        "ours-q5_1", "ours-iq4_nl", "ours-iq4_xs", "llama-f16", "llama-q4_k_m", "llama-q5_k_m", "llama-q6_k",
                                        "llama-q4_0", "llama-q5_0", "llama-q4_1", "llama-q5_1", "llama-iq4_nl",
                                        "llama-iq4_xs", *[f"{m}-{q}" for q in LOW_K for m in ("ours", "llama")]])
def pair(request, tmp_path_factory, mini_dir, llama_files):
    """(qtype, phi2cpu model, llama.cpp model) on the same file: written by phi2cpu.quantize
    ("ours-"), or the converter-style F16 file and llama.cpp's quantizations of it ("llama-")."""
    maker, qtype = request.param.split("-")
    if maker == "ours":
        path = tmp_path_factory.mktemp("interop") / f"mini.{qtype}.gguf"
        quantize(mini_dir, path, qtype, progress=False)
    else:
        path = llama_files[qtype]
    ours = phi2cpu.load(path, threads=2, n_ctx=256)
    theirs = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, logits_all=True,
                             verbose=False)
    yield qtype, ours, theirs
    theirs.close()


def test_llama_cpp_reads_our_metadata(pair):
    qtype, ours, theirs = pair
    assert theirs.n_vocab() == ours.config.n_vocab
    assert theirs.n_ctx() == 256
    assert theirs.metadata.get("general.architecture") == "phi2"


def test_same_tokenization(pair):
    _, ours, theirs = pair
    for text in TEXTS:
        assert theirs.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ours.tokenize(text), text


def _llama_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def test_same_logits(pair, eval_text):
    qtype, ours, theirs = pair
    # llama.cpp's F16 path rounds activations to fp16; that error is far below Q8_0's, so the F16 file
    # is held to the Q8_0 bound.
    tol = TOLERANCES["q8_0" if qtype == "f16" else qtype]
    ids = ours.tokenize(TEXTS[0] + TEXTS[3] + eval_text[:4000])[:200]  # enough positions for a top-1 share
    got, want = _llama_logits(theirs, ids), ours.logits(ids)
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= tol["max_rel"], f"{qtype}: llama.cpp logits differ from phi2cpu's by {rel:.2e} of their range"
    agree = (got[:, :N_VALID].argmax(1) == want[:, :N_VALID].argmax(1)).mean()
    assert agree >= tol["top1"], f"{qtype}: top-1 agreement {agree:.3f}"
    # The leaders agree; lower places may swap where logits are within the quantization error.
    ours_top3 = np.argsort(-want[-1, :N_VALID])[:3]
    assert set(ours_top3) <= set(np.argsort(-got[-1, :N_VALID])[:5])


def _greedy(step, ids, n) -> dict:
    logits = step(ids)
    tokens, margins, ranges = [], [], []
    for _ in range(n):
        two = np.partition(logits[:N_VALID], -2)[-2:]
        margins.append(float(two[1] - two[0]))
        ranges.append(float(np.abs(logits).max()))
        tokens.append(int(np.argmax(logits[:N_VALID])))
        logits = step([tokens[-1]])
    return {"tokens": tokens, "margins": margins, "ranges": ranges}


def test_same_greedy_tokens(pair):
    qtype, ours, theirs = pair
    ids = ours.tokenize(PROMPT)
    ours.reset()
    theirs.reset()

    def llama_step(x):
        theirs.eval(x)
        return np.array(theirs.scores[theirs.n_tokens - 1])

    a = _greedy(lambda x: ours.eval(x), ids, N_GREEDY)
    b = _greedy(llama_step, ids, N_GREEDY)
    verdict, n_agree, margin = judge(a, b, N_GREEDY)
    if verdict == "MISMATCH":
        # Up to the split both engines saw the same tokens, so their logits there may differ by the
        # type's max_rel of the logit range: a top-2 margin under twice that may flip. (K-quant
        # mixes round activations per 256 values; llama.cpp's do so in its own order.)
        bound = 2 * TOLERANCES[qtype]["max_rel"] * a["ranges"][n_agree]
        assert margin < bound, (f"{qtype}: greedy tokens part at step {n_agree} with a top-2 margin of "
                                f"{margin:.3f} (noise bound {bound:.3f}): {a['tokens']} vs {b['tokens']}")


# ----------------------------------------------------------------------------- llama.cpp's own files

def test_llama_files_are_mixed_and_plain(llama_files):
    """What llama.cpp writes: only its own keys, a vocabulary instead of tokenizer.json, and
    several weight types in one file."""
    mixes = {}
    for qtype, path in llama_files.items():
        mf = read_model_file(path)
        assert not [k for k in mf.kv if k.startswith("phi2cpu.")] and mf.tokenizer_json is None
        mixes[qtype] = {t.type_name for t in mf.tensors.values() if len(t.shape) == 2}
    assert {"Q4_K", "Q6_K"} <= mixes["q4_k_m"] and {"Q5_K", "Q6_K"} <= mixes["q5_k_m"]
    assert mixes["q6_k"] == {"Q6_K"} and mixes["q4_0"] >= {"Q4_0", "Q6_K"}
    for legacy in ("q5_0", "q4_1", "q5_1", "iq4_nl", "iq4_xs"):
        assert mixes[legacy] == {legacy.upper(), "Q6_K"}, mixes[legacy]
    # separate attn_q/k/v here, so llama.cpp's attn_v rules apply (not its attn_qkv ones): Q2_K bumps attn_v,
    # ffn_down and attn_output to Q3_K; Q3_K_M's first two attn_v are Q5_K, the rest Q4_K; Q3_K_L's Q5_K
    assert mixes["q2_k"] == {"Q2_K", "Q3_K", "Q6_K"} and mixes["q3_k_s"] == {"Q3_K", "Q6_K"}
    assert mixes["q3_k_m"] == {"Q3_K", "Q4_K", "Q5_K", "Q6_K"} and mixes["q3_k_l"] == {"Q3_K", "Q5_K", "Q6_K"}
    assert mixes["q4_k_s"] == {"Q4_K", "Q5_K", "Q6_K"} and mixes["q5_k_s"] == {"Q5_K", "Q6_K"}


def test_llama_files_dequantize_like_gguf_quants(llama_files):
    """Every tensor llama.cpp wrote decodes in phi2cpu to exactly gguf.quants' values."""
    for qtype, path in llama_files.items():
        mf = read_model_file(path)
        for name, t in mf.tensors.items():
            raw = np.asarray(mf.raw(name))
            ours = _core.dequantize(raw.reshape(-1, raw.shape[-1]), t.ggml_type, t.shape[-1])
            want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t.ggml_type))
            assert np.array_equal(ours.reshape(-1), np.asarray(want, np.float32).reshape(-1)), (qtype, name)


@pytest.mark.parametrize("qtype", ["q4_k_m", "q5_k_m", "q6_k", "q4_0", "q5_0", "q4_1", "q5_1", "iq4_nl", "iq4_xs", *LOW_K])
def test_llama_files_match_reference(llama_files, eval_text, qtype):
    """phi2cpu on llama.cpp's file against the NumPy reference on the same (dequantized) weights."""
    m = phi2cpu.load(llama_files[qtype], threads=2)
    ids = m.tokenize(eval_text[:6000])[:200]
    got = m.logits(ids)
    cfg, weights = reference.load_reference_weights(llama_files[qtype])
    want = reference.reference_logits(cfg, weights, ids, kv_type=m.kv_type)
    tol = TOLERANCES[qtype]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= tol["max_rel"], f"{qtype}: logits drift {rel:.2e}"
    assert (got[:, :N_VALID].argmax(1) == want[:, :N_VALID].argmax(1)).mean() >= tol["top1"]


def test_iq4_xs_quantizer_bytes_equal_llama_cpp(llama_files):
    """Our IQ4_XS encoder is llama.cpp's algorithm: on every IQ4_XS tensor llama.cpp wrote from the
    F16 file (no importance matrix), our bytes are its bytes."""
    src, out = read_model_file(llama_files["f16"]), read_model_file(llama_files["iq4_xs"])
    n = 0
    for name, t in out.tensors.items():
        if t.type_name != "IQ4_XS":
            continue
        f = src.tensors[name]
        x = _core.dequantize(np.asarray(src.raw(name)).reshape(f.shape[0], -1), f.ggml_type, f.shape[-1])
        assert np.array_equal(_core.quantize(x, t.ggml_type), np.asarray(out.raw(name)).reshape(x.shape[0], -1)), name
        n += 1
    assert n >= 6 * 6, n  # every block matrix and token_embd


@pytest.fixture(scope="module")
def deep_f16(tmp_path_factory, mini_dir):
    """The mini model with 16 layers (copies of its 6), converter-style F16: deep enough that
    llama.cpp's rules for the first n_layer/8 layers pick some tensors."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("deep")
    cfg = json.loads((mini_dir / "config.json").read_text())
    n_mini, cfg["num_hidden_layers"] = cfg["num_hidden_layers"], 16
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(mini_dir / "tokenizer.json", d / "tokenizer.json")
    tensors = {}
    for f in mini_dir.glob("*.safetensors"):
        tensors.update(load_file(f))
    deep = {}
    for k, v in tensors.items():
        if ".layers." not in k:
            deep[k] = v
            continue
        i = int(k.split(".layers.")[1].split(".")[0])
        for j in range(i, 16, n_mini):
            deep[k.replace(f".layers.{i}.", f".layers.{j}.")] = v
    save_file(deep, str(d / "model.safetensors"))
    from converter_style import write_converter_style_f16

    return write_converter_style_f16(d, d / "deep.f16.gguf")


@pytest.mark.parametrize("qtype", ["iq4_xs", "iq4_nl"])
def test_mix_types_equal_llama_cpp(deep_f16, tmp_path, qtype):
    """Our mix gives every tensor llama.cpp's type (its separate attn_q/k/v are our attn_qkv)."""
    from phi2cpu.quantize import tensor_type

    theirs = read_model_file(_llama_quantize(deep_f16, tmp_path / f"deep.{qtype}.gguf", qtype))
    n_layer = theirs.config.n_layer
    got, want = {}, {}
    for name, t in theirs.tensors.items():
        ours = name.replace(".attn_q.", ".attn_qkv.").replace(".attn_k.", ".attn_qkv.").replace(".attn_v.", ".attn_qkv.")
        got.setdefault(ours, set()).add(t.type_name)
        want[ours] = {tensor_type(ours, tuple(t.shape), qtype, n_layer).name}  # the row length decides
    assert got == want
    assert got["blk.1.ffn_down.weight"] == {"Q5_K"} and got["blk.2.ffn_down.weight"] == {qtype.upper()}


@pytest.mark.parametrize("qtype", LOW_K)
def test_fused_mix_types_equal_llama_cpp(deep_f16, tmp_path, qtype):
    """On a phi2 file with a fused attn_qkv (ours, as in the phi-2 GGUFs people download), llama.cpp's
    quantizer gives attn_qkv the rules of attn_v; each of our K-quant mixes gives every tensor of the
    16-layer model the type llama.cpp picks."""
    fused = tmp_path / "deep.fused.f16.gguf"
    quantize(deep_f16, fused, "f16", progress=False)
    theirs = read_model_file(_llama_quantize(fused, tmp_path / f"llama.{qtype}.gguf", qtype))
    ours = read_model_file(quantize(fused, tmp_path / f"ours.{qtype}.gguf", qtype, progress=False)["out"])
    got = {n: t.type_name for n, t in ours.tensors.items() if len(t.shape) == 2}
    want = {n: t.type_name for n, t in theirs.tensors.items() if len(t.shape) == 2}
    assert got == want


def test_llama_files_perplexity(llama_files, eval_text):
    from phi2cpu.perplexity import perplexity

    kinds = ("f16", "q4_k_m", "q5_k_m", "q6_k")
    ppl = {q: perplexity(phi2cpu.load(llama_files[q], threads=2), eval_text, max_windows=4).ppl for q in kinds}
    assert 2.0 < ppl["f16"] < 30.0, ppl
    for qtype in kinds[1:]:
        assert ppl[qtype] <= ppl["f16"] * (1 + TOLERANCES[qtype]["ppl_rel"]), ppl


def test_llama_cpp_runs_an_awq_file_with_overridden_types(tmp_path, mini_dir, eval_text):
    """A file made with --awq and per-tensor overrides is a standard GGUF: llama.cpp computes the
    same logits from it as phi2cpu."""
    from phi2cpu import imatrix as imx
    from phi2cpu.checkpoint import HFCheckpoint, expected_gguf_shapes

    shapes = expected_gguf_shapes(HFCheckpoint(mini_dir).config)
    rng = np.random.default_rng(0)
    im = imx.IMatrix(datasets=["synthetic"], chunk_count=1, chunk_size=64)
    for point, names in imx.matrix_inputs(HFCheckpoint(mini_dir).config.n_layer).items():
        m = rng.lognormal(0.0, 1.0, shapes[names[0]][1])
        for name in names:
            im.sums[name], im.counts[name] = m * 64, 64
    path = tmp_path / "mini.awq.gguf"
    s = quantize(mini_dir, path, "q4_k_m", progress=False, imatrix=imx.save(im, tmp_path / "im.gguf"), awq=True,
                 tensor_types=[(r"^output\.weight$", "Q5_K"), ("ffn_down", "Q8_0")])
    assert any(g.get("alpha_norm", 0) > 0 for g in s["awq"].values())
    types = {n: t.ggml_type for n, t in read_model_file(path).tensors.items()}
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q5_K
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    ours = phi2cpu.load(path, threads=2, n_ctx=256)
    theirs = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, logits_all=True, verbose=False)
    try:
        ids = ours.tokenize(TEXTS[0] + eval_text[:4000])[:200]
        got, want = _llama_logits(theirs, ids), ours.logits(ids)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel <= TOLERANCES["q4_k_m"]["max_rel"], rel
        assert (got[:, :N_VALID].argmax(1) == want[:, :N_VALID].argmax(1)).mean() >= TOLERANCES["q4_k_m"]["top1"]
    finally:
        theirs.close()
