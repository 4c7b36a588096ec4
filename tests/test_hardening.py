"""Hostile model files: every malformed header, layout and value is a ModelFileError naming the
file and the key or tensor, found before anything is sized from it. Each file is generated here
from a valid tiny one with one field changed (tests/hostile_gguf.py)."""
from __future__ import annotations

import io
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import phi2cpu
from hostile_gguf import (ARRAY, BOOL, F32, I32, STRING, U8, U32, U64, Spec, nested_arrays, offset_of,
                          tiny_spec)
from phi2cpu.cli import main
from phi2cpu.errors import ModelFileError, Phi2Error
from phi2cpu.gguf_io import MAX_ARRAY_VALUES, MAX_KV, MAX_TENSORS, read_model_file

BIAS = "blk.0.attn_norm.bias"


def _cases(s: Spec) -> dict[str, tuple[Spec, str]]:
    """id -> (mutated spec, what the error must say)."""
    emb = s.tensors[0]
    big_embd = s.tensor("token_embd.weight", shape=(emb[1][0], 1 << 63))
    return {
        # wrong types and values of general.alignment
        "alignment-zero": (s.set("general.alignment", U32, 0), r"general\.alignment 0 is not a power of two"),
        "alignment-negative": (s.set("general.alignment", I32, -32), "general.alignment -32 is not a power of two"),
        "alignment-not-pow2": (s.set("general.alignment", U32, 48), "general.alignment 48 is not a power of two"),
        "alignment-too-small": (s.set("general.alignment", U32, 1), r"general\.alignment 1 .* in 8\.\.65536"),
        "alignment-too-big": (s.set("general.alignment", U64, 1 << 40), "general.alignment 1099511627776"),
        "alignment-string": (s.set("general.alignment", STRING, "32"), "general.alignment must be an integer"),
        "alignment-array": (s.set("general.alignment", ARRAY, (U32, [32])), "general.alignment must be an integer"),
        "alignment-float": (s.set("general.alignment", F32, 32.0), "general.alignment must be an integer"),
        "alignment-bool": (s.set("general.alignment", BOOL, True), "general.alignment must be an integer"),
        # metadata structure
        "nested-1000-deep": (s.set("x.deep", ARRAY, nested_arrays(1000)), "x.deep: arrays nested deeper than 2"),
        "bool-array-2^40": (s.set("x.flags", ARRAY, struct.pack("<IQ", BOOL, 1 << 40)),
                            "x.flags: more than 1048576 array values"),
        "bool-array-past-end": (s.set("x.flags", ARRAY, struct.pack("<IQ", BOOL, 1 << 19)), "truncated GGUF file"),
        "string-array-2^60": (s.set("x.names", ARRAY, struct.pack("<IQ", STRING, 1 << 60)),
                              "x.names: more than 1048576 array values"),
        "string-array-past-end": (s.set("x.names", ARRAY, struct.pack("<IQ", STRING, 1 << 19)),
                                  "truncated GGUF file"),
        "array-values-over-budget": (s.set("x.junk", ARRAY, (U8, [0] * (MAX_ARRAY_VALUES + 1))),
                                     "x.junk: more than 1048576 array values"),
        "unknown-value-type": (s.set("x.odd", 13, b"\0" * 8), "x.odd: unknown value type 13"),
        "unknown-array-type": (s.set("x.odd", ARRAY, struct.pack("<IQ", 99, 1)), "x.odd: unknown array element type 99"),
        "duplicate-key": (Spec(s.kv, s.tensors, s.data, extra=[("general.name", STRING, "again")]),
                          "metadata key general.name appears twice"),
        "kv-count-2^63": (Spec(s.kv, s.tensors, s.data, n_kv=1 << 63), f"metadata keys declared .the limit is {MAX_KV}"),
        "kv-count-past-end": (Spec(s.kv, s.tensors, s.data, n_kv=MAX_KV), "truncated GGUF file"),
        "tensor-count-2^64-1": (Spec(s.kv, s.tensors, s.data, n_tensors=(1 << 64) - 1),
                                f"tensors declared .the limit is {MAX_TENSORS}"),
        "string-length-2^63": (s.set("general.name", STRING, b"") .set("x.s", ARRAY, struct.pack("<IQQ", STRING, 1, 1 << 63)),
                               "truncated GGUF file"),
        "bad-utf8-key": (s.set("general.name", STRING, b"\xff\xfe"), "corrupt GGUF file"),
        "version-1": (Spec(s.kv, s.tensors, s.data, version=1), "GGUF version 1 is not supported"),
        "architecture-missing": (s.drop("general.architecture"), "general.architecture is missing or not a string"),
        "architecture-int": (s.set("general.architecture", U32, 2), "general.architecture is missing or not a string"),
        # hyper-parameters
        "block-count-3M": (s.set("phi2.block_count", U32, 3_000_000), "n_layer 3000000 exceeds the limit 1024"),
        "block-count-2^32-1": (s.set("phi2.block_count", U32, (1 << 32) - 1), "n_layer 4294967295 exceeds the limit"),
        "block-count-inf": (s.set("phi2.block_count", F32, math.inf), "phi2.block_count must be an integer, not inf"),
        "block-count-nan": (s.set("phi2.block_count", F32, math.nan), "phi2.block_count must be an integer, not nan"),
        "block-count-string": (s.set("phi2.block_count", STRING, "2"), "phi2.block_count must be an integer, not '2'"),
        "block-count-bool": (s.set("phi2.block_count", BOOL, True), "phi2.block_count must be an integer"),
        "embedding-length-2^40": (s.set("phi2.embedding_length", U64, 1 << 40), "n_embd 1099511627776 exceeds"),
        "context-length-zero": (s.set("phi2.context_length", U32, 0), "sizes must be positive"),
        "head-count-kv": (s.set("phi2.attention.head_count_kv", U32, 1), "grouped-query attention"),
        "eps-nan": (s.set("phi2.attention.layer_norm_epsilon", F32, math.nan), "layer_norm_eps nan must be positive"),
        "eps-inf": (s.set("phi2.attention.layer_norm_epsilon", F32, math.inf), "layer_norm_eps inf must be positive"),
        "eps-zero": (s.set("phi2.attention.layer_norm_epsilon", F32, 0.0), "layer_norm_eps 0.0 must be positive"),
        "eps-subnormal": (s.set("phi2.attention.layer_norm_epsilon", F32, 1e-40), "must be positive and finite"),
        "eps-array": (s.set("phi2.attention.layer_norm_epsilon", ARRAY, (F32, [1e-5])),
                      "phi2.attention.layer_norm_epsilon must be a number, not \\[9"),
        "theta-nan": (s.set("phi2.rope.freq_base", F32, math.nan), "rope_theta nan must be positive"),
        "theta-inf": (s.set("phi2.rope.freq_base", F32, math.inf), "rope_theta inf must be positive"),
        "theta-negative": (s.set("phi2.rope.freq_base", F32, -1.0), "rope_theta -1.0 must be positive"),
        "theta-f64-1e300": (s.set("phi2.rope.freq_base", 12, 1e300), "rope_theta 1e.300 must be positive"),
        # tensor entries and layout
        "embedding-no-dims": (s.tensor("token_embd.weight", shape=()), "tensor token_embd.weight has 0 dimensions"),
        "embedding-5-dims": (s.tensor("token_embd.weight", shape=(1, 1, 1, 1, 1)), "token_embd.weight has 5 dimensions"),
        "embedding-zero-dim": (s.tensor("token_embd.weight", shape=(0, 64)), r"token_embd\.weight has dimensions \[64, 0\]"),
        "embedding-dim-2^63": (big_embd, "token_embd.weight has dimensions"),
        "extra-unknown-type-huge-dim": (Spec(s.kv, s.tensors + [("extra", (1 << 63,), 999, 0)], s.data),
                                        "tensor extra has dimensions"),
        "extra-unknown-type": (Spec(s.kv, s.tensors + [("extra", (4,), 999, 0)], s.data),
                               "tensor extra has unknown type id 999"),
        "row-not-whole-blocks": (Spec(s.kv, s.tensors + [("extra", (33,), 8, 0)], s.data),
                                 "tensor extra: row length 33 is not a multiple of the Q8_0 block"),
        "offset-unaligned": (s.tensor(BIAS, offset=offset_of(s, BIAS) + 4),
                             f"tensor {BIAS} starts at byte .* not a multiple of the file's alignment 32"),
        "offset-past-end": (s.tensor(BIAS, offset=1 << 40), f"truncated: tensor {BIAS} ends at byte"),
        "offset-2^64-32": (s.tensor(BIAS, offset=(1 << 64) - 32), f"truncated: tensor {BIAS}"),
        "tensors-overlap": (s.tensor(BIAS, offset=offset_of(s, "blk.0.attn_norm.weight")),
                            "tensors blk.0.attn_norm.(weight|bias) and blk.0.attn_norm.(weight|bias) overlap"),
        "duplicate-tensor": (s.tensor(BIAS, name="blk.0.attn_norm.weight"), "tensor blk.0.attn_norm.weight appears twice"),
        "missing-tensor": (Spec(s.kv, [t for t in s.tensors if t[0] != BIAS], s.data), f"missing tensor {BIAS}"),
        # vocabulary and other typed keys
        "tokens-not-strings": (s.set("tokenizer.ggml.tokens", ARRAY, (U32, list(range(320)))),
                               "tokenizer.ggml.tokens must be an array of strings"),
        "tokens-one-string": (s.set("tokenizer.ggml.tokens", STRING, "a"), "tokenizer.ggml.tokens must be an array"),
        "token-types-floats": (s.set("tokenizer.ggml.token_type", ARRAY, (F32, [1.0] * 320)),
                               "token_type must be an array of integers"),
        "tokens-more-than-rows": (s.set("tokenizer.ggml.tokens", ARRAY, (STRING, [f"t{i}" for i in range(321)])),
                                  "321 tokens; token_embd.weight has only 320 rows"),
        "eos-out-of-vocab": (s.set("tokenizer.ggml.eos_token_id", U32, 320),
                             "tokenizer.ggml.eos_token_id 320 is outside the 320-token vocabulary"),
        "eos-string": (s.set("tokenizer.ggml.eos_token_id", STRING, "x"), "eos_token_id must be an integer"),
        "name-array": (s.set("general.name", ARRAY, (U8, [1])), "general.name must be a string"),
        "recipe-not-json": (s.set("phi2cpu.quant_recipe", STRING, "{oops"), "quant_recipe is not valid JSON"),
        "recipe-list": (s.set("phi2cpu.quant_recipe", STRING, "[1]"), "quant_recipe is not a JSON object"),
        "recipe-nested": (s.set("phi2cpu.quant_recipe", STRING, "[" * 100000), "quant_recipe is not valid JSON"),
    }


SPEC = tiny_spec()
CASES = _cases(SPEC)


def test_the_unchanged_file_loads_and_runs(tmp_path):
    path = SPEC.write(tmp_path / "tiny.gguf")
    assert read_model_file(path).config.n_layer == 2
    model = phi2cpu.load(path, threads=1, n_ctx=16)
    assert model.eval([1, 2, 3]).shape == (320,)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_a_clean_error(case, tmp_path):
    spec, match = CASES[case]
    path = spec.write(tmp_path / f"{case}.gguf")
    t0 = time.process_time()
    with pytest.raises(ModelFileError, match=match) as err:
        read_model_file(path)
    assert str(path) in str(err.value)
    assert time.process_time() - t0 < 5  # generous; the real cost is milliseconds


@pytest.mark.parametrize("case", ["alignment-zero", "nested-1000-deep", "block-count-3M", "embedding-no-dims",
                                  "offset-unaligned", "duplicate-tensor", "eps-nan"])
def test_hostile_file_through_the_cli_is_one_line(case, tmp_path, capsys):
    spec, match = CASES[case]
    path = spec.write(tmp_path / f"{case}.gguf")
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phi2cpu: error: ") and str(path) in err[0], err


def test_declared_sizes_are_refused_before_they_are_read(tmp_path):
    """A header that declares far more than the file holds is refused from the declaration, before
    a value is read: a 2^40 bool array, a million strings, 2^63 keys in a file of half a megabyte."""
    for i, (vtype, n) in enumerate([(BOOL, 1 << 40), (BOOL, 1 << 20), (STRING, 1 << 20), (ARRAY, 1 << 20)]):
        path = SPEC.set("x.many", ARRAY, struct.pack("<IQ", vtype, n)).write(tmp_path / f"many{i}.gguf")
        assert path.stat().st_size < 1_000_000
        t0 = time.process_time()
        with pytest.raises(ModelFileError, match="x.many: more than|truncated GGUF file"):
            read_model_file(path)
        assert time.process_time() - t0 < 1


def test_largest_legal_header_parses_quickly(tmp_path):
    """The most work a header may ask for within the limits (every array value, a key and a tensor
    entry up to each limit) still parses in well under a few seconds of CPU."""
    kv = SPEC.kv + [("x.junk", ARRAY, (STRING, [""] * (MAX_ARRAY_VALUES - 200_000)))]
    kv += [(f"x.k{i}", U8, 0) for i in range(MAX_KV - len(kv))]
    extra = [(f"x.t{i}", (32,), 0, 1 << 30) for i in range(MAX_TENSORS - len(SPEC.tensors))]
    path = Spec(kv, SPEC.tensors + extra, SPEC.data).write(tmp_path / "big.gguf")
    t0 = time.process_time()
    with pytest.raises(ModelFileError, match="truncated: tensor x.t0"):
        read_model_file(path)
    assert time.process_time() - t0 < 5


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_model_must_be_a_regular_file(kind, tmp_path):
    path = tmp_path / "model.gguf"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = "/dev/zero"
    result = []

    def run():
        try:
            phi2cpu.load(path, threads=1)
        except Phi2Error as e:
            result.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening the model blocked"
    assert isinstance(result[0], ModelFileError) and f"{path}: not a regular file" in str(result[0])


@pytest.mark.parametrize("threads", [0, -1, 1025, 10**11, 2.0, "4", True])
def test_load_threads_bounded(threads, tmp_path):
    path = SPEC.write(tmp_path / "tiny.gguf")
    with pytest.raises(Phi2Error, match=r"threads must be an integer in 1\.\.1024"):
        phi2cpu.load(path, threads=threads)


# ----------------------------------------------------------------------------- saved states

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = SPEC.write(tmp_path_factory.mktemp("state") / "tiny.gguf")
    return phi2cpu.load(path, threads=1, n_ctx=16)


def _good_state(model, tmp_path) -> dict:
    model.reset()
    model.eval([1, 2, 3])
    model.save_state(tmp_path / "good.state")
    with np.load(tmp_path / "good.state") as z:
        return {name: z[name] for name in z.files}


def _npz(path, arrays: dict, compression: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, a in arrays.items():
            if isinstance(a, bytes):
                zf.writestr(f"{name}.npy", a)
            else:
                with zf.open(f"{name}.npy", "w") as m:
                    np.lib.format.write_array(m, np.asanyarray(a), allow_pickle=True)


def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _state_cases(good: dict) -> dict[str, tuple[dict, str]]:
    k, v, tokens, meta = good["k"], good["v"], good["tokens"], good["meta"]
    nan_k, inf_v = k.copy(), v.copy()
    nan_k[0, 1, 2], inf_v[1, 0, 0] = np.nan, np.inf
    three = dict(good)
    return {
        "k-extra-layer": ({**good, "k": np.zeros((3, 3, 64), np.float32)}, r"k has shape \[3, 3, 64\], expected \[2, 3, 64\]"),
        "v-shorter": ({**good, "v": v[:, :2]}, r"v has shape \[2, 2, 64\], expected \[2, 3, 64\]"),
        "k-wrong-width": ({**good, "k": np.zeros((2, 3, 32), np.float32)}, r"k has shape \[2, 3, 32\]"),
        "tokens-2d": ({**good, "tokens": tokens.reshape(1, 3)}, r"tokens has shape \[1, 3\], expected one dimension"),
        "meta-list": ({**good, "meta": np.array("[1, 2]")}, "meta is not a JSON object"),
        "meta-not-json": ({**good, "meta": np.array("{oops")}, "meta is not JSON"),
        "meta-deep": ({**good, "meta": np.array("[" * 100_000)}, "meta is not JSON"),
        "meta-number": ({**good, "meta": np.array(3.0)}, "meta has dtype float64"),
        "token-out-of-vocab": ({**good, "tokens": np.array([1, 2, 320])}, r"token ids must lie in 0\.\.319"),
        "token-negative": ({**good, "tokens": np.array([1, -2, 3])}, r"token ids must lie in 0\.\.319"),
        "tokens-float": ({**good, "tokens": tokens.astype(np.float32)}, "tokens has dtype float32, expected an integer"),
        "k-nan": ({**good, "k": nan_k}, "k holds NaN or infinite values"),
        "v-inf": ({**good, "v": inf_v}, "v holds NaN or infinite values"),
        "k-float64": ({**good, "k": k.astype(np.float64)}, "k has dtype float64, expected float16 or float32"),
        "k-object": ({**good, "k": np.array([None, 1], dtype=object)}, "k has dtype object"),
        "no-v": ({key: a for key, a in three.items() if key != "v"}, "no v array"),
        "npy-header-lies": ({**good, "k": _npy_header((2, 10**9, 64)) + b"\0" * 64},
                            r"k declares shape \[2, 1000000000, 64\] \(512000000000 bytes\)"),
        "npy-data-short": ({**good, "k": _npy_header((2, 3, 64)) + b"\0" * 64}, "not a phi2cpu state file"),
        "npy-not-npy": ({**good, "k": b"hello"}, "not a phi2cpu state file"),
        # found by the fuzzer: numpy's header parser raised tokenize.TokenError
        "npy-header-unclosed": ({**good, "k": b"\x93NUMPY\x01\x00\x10\x00{'descr': (\n     \n"},
                                "k: bad .npy header"),
    }


def test_hostile_states_are_clean_errors_and_keep_the_cache(tiny_model, tmp_path):
    good = _good_state(tiny_model, tmp_path)
    tiny_model.eval([7, 8])
    before = tiny_model.tokens
    logits = tiny_model.eval([9])
    tiny_model.truncate(len(before))
    for case, (arrays, match) in _state_cases(good).items():
        path = tmp_path / f"{case}.state"
        _npz(path, arrays)
        with pytest.raises(ModelFileError, match=match) as err:
            tiny_model.load_state(path)
        assert str(path) in str(err.value), case
        assert tiny_model.tokens == before, case
    np.testing.assert_array_equal(tiny_model.eval([9]), logits)
    tiny_model.load_state(tmp_path / "good.state")
    assert tiny_model.tokens == [1, 2, 3]


def test_deflate_bomb_is_refused_before_decompressing(tiny_model, tmp_path):
    """64 MiB of zeros deflate to about 64 kB; the state of this model holds at most 128 KiB of k,
    so the declared size is refused, and loading allocates next to nothing."""
    good = _good_state(tiny_model, tmp_path)
    zeros = _npy_header((2, 256 * 1024, 64)) + bytes(64 << 20)
    path = tmp_path / "bomb.state"
    _npz(path, {**good, "k": zeros}, zipfile.ZIP_DEFLATED)
    del zeros
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"k declares 67108992 bytes; a state of this model holds at most"):
            tiny_model.load_state(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_state_must_be_a_regular_file(tiny_model, tmp_path):
    fifo = tmp_path / "fifo.state"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(ModelFileError, match="not a regular file"):
            tiny_model.load_state(path)
    with pytest.raises(FileNotFoundError, match="missing.state"):
        tiny_model.load_state(tmp_path / "missing.state")


def test_save_state_replaces_the_file_whole(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "s.state"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        tiny_model.save_state(path)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["s.state"]


# ----------------------------------------------------------------------------- threads

_START_UNDER_LIMIT = r"""
import resource, sys
import phi2cpu
from phi2cpu.errors import Phi2Error
path = sys.argv[1]
phi2cpu.load(path, threads=1, n_ctx=16)  # everything imported and mapped once, under no limit
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
try:
    phi2cpu.load(path, threads=1024, n_ctx=16)
except Phi2Error as e:
    print("Phi2Error:", e)
print("done")
"""


def test_thread_start_failure_is_a_clean_error(tmp_path):
    """1024 threads' stacks do not fit 256 MiB of address space: the pool stops the workers it
    started and load raises Phi2Error (it used to hang in the pool's destructor)."""
    path = SPEC.write(tmp_path / "tiny.gguf")
    run = subprocess.run([sys.executable, "-c", _START_UNDER_LIMIT, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert re.search(r"Phi2Error: cannot start worker thread \d+ of 1024: .*fewer --threads", run.stdout), run.stdout
    assert run.stdout.rstrip().endswith("done")


# ----------------------------------------------------------------------------- quantize

def test_quantize_refuses_out_that_is_src_through_links(tmp_path, capsys):
    src = SPEC.write(tmp_path / "tiny.f32.gguf")
    before = src.read_bytes()
    (tmp_path / "link.gguf").symlink_to(src)
    os.link(src, tmp_path / "hard.gguf")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.gguf").symlink_to(os.path.join("..", "link.gguf"))
    for out in ("link.gguf", "hard.gguf", "sub/up.gguf", "sub/../tiny.f32.gguf"):
        assert main(["quantize", str(src), str(tmp_path / out), "--type", "q8_0", "--quiet"]) == 1, out
        assert "OUT is the same file as SRC" in capsys.readouterr().err
    assert src.read_bytes() == before


_SLOW_QUANTIZE = r"""
import sys, time
import phi2cpu.quantize as q
real = q._core.quantize

class Slow:
    dequantize = staticmethod(q._core.dequantize)
    types = staticmethod(q._core.types)
    @staticmethod
    def quantize(x, t, *args, **kwargs):
        time.sleep(0.2)
        return real(x, t, *args, **kwargs)
q._core = Slow
sys.exit(q.main(sys.argv[1:], prog="quantize"))
"""


def test_sigterm_during_quantize_removes_the_temporary_file(tmp_path):
    src = SPEC.write(tmp_path / "tiny.f32.gguf")
    out = tmp_path / "out.gguf"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_QUANTIZE, str(src), str(out), "--type", "q8_0", "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.gguf.*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert list(tmp_path.glob(".out.gguf.*.tmp")), "the temporary file never appeared"
    proc.terminate()
    assert proc.wait(60) == 143, proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.f32.gguf"]


_WRITE_LIMIT = r"""
import resource, signal, sys
from phi2cpu.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
sys.exit(main(["quantize"] + sys.argv[1:]))
"""


def test_a_failed_write_names_out(tmp_path):
    """A write that fails part way (here: past a file-size limit) is one error line naming OUT,
    and leaves no file behind."""
    src = SPEC.write(tmp_path / "tiny.f32.gguf")
    out = tmp_path / "out.gguf"
    run = subprocess.run([sys.executable, "-c", _WRITE_LIMIT, str(src), str(out), "--type", "f32", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"phi2cpu: error: {out}: "), run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.f32.gguf"]
