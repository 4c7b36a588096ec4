"""imatrix files against llama.cpp's own tools, both ways: llama-quantize reads our imatrix, and
our quantize reads llama-imatrix's, whose statistics match ours on the same text and chunks.
Needs LLAMA_CPP_BIN, a directory holding llama.cpp's llama-quantize and llama-imatrix."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import phi2cpu
from phi2cpu import imatrix as imx
from phi2cpu.quantize import quantize


def _tool(name: str) -> Path:
    d = os.environ.get("LLAMA_CPP_BIN")
    if not d:
        pytest.skip("LLAMA_CPP_BIN is not set (a directory with llama.cpp's llama-quantize and llama-imatrix)")
    p = Path(d) / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.skip(f"LLAMA_CPP_BIN has no executable {name}")
    return p


@pytest.fixture(scope="module")
def mini(tmp_path_factory, mini_dir, eval_text):
    d = tmp_path_factory.mktemp("llama_imx")
    f16 = d / "mini.f16.gguf"
    quantize(mini_dir, f16, "f16", progress=False)
    text = d / "calib.txt"
    text.write_text(imx.stdlib_calibration(["textwrap.py", "shlex.py"], eval_text), encoding="utf-8")
    return {"dir": d, "f16": f16, "text": text}


def test_llama_quantize_reads_our_imatrix(mini):
    lq = _tool("llama-quantize")
    model = phi2cpu.load(mini["f16"], threads=2, n_ctx=256)
    im = imx.collect(model, mini["text"].read_text(encoding="utf-8"), chunk_size=256, max_chunks=4,
                     dataset="calib.txt")
    ours = imx.save(im, mini["dir"] / "ours.imatrix.gguf")
    out = mini["dir"] / "llama.q4_k_m.gguf"
    r = subprocess.run([str(lq), "--imatrix", str(ours), str(mini["f16"]), str(out), "Q4_K_M"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"loaded {len(im.sums)} importance matrix entries" in r.stdout + r.stderr
    plain = mini["dir"] / "llama.q4_k_m.plain.gguf"
    subprocess.run([str(lq), str(mini["f16"]), str(plain), "Q4_K_M"], capture_output=True, check=True)
    assert out.read_bytes() != plain.read_bytes()  # the importance changed the rounding
    phi2cpu.load(out, threads=2, n_ctx=64).eval([1, 2, 3])


def test_our_quantize_reads_llama_imatrix_and_the_statistics_agree(mini):
    li = _tool("llama-imatrix")
    theirs = mini["dir"] / "llama.imatrix.gguf"
    r = subprocess.run([str(li), "-m", str(mini["f16"]), "-f", str(mini["text"]), "-o", str(theirs), "-c", "256",
                        "--chunks", "4", "-t", "2", "--no-ppl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    im = imx.load(theirs)
    assert im.chunk_count == 4 and im.chunk_size == 256
    model = phi2cpu.load(mini["f16"], threads=2, n_ctx=256)
    ours = imx.collect(model, mini["text"].read_text(encoding="utf-8"), chunk_size=256, max_chunks=4)
    for name, s in im.sums.items():
        assert im.counts[name] == ours.counts[name] == 4 * 256
        np.testing.assert_allclose(im.importance(name), ours.importance(name), rtol=0.02, atol=1e-6 * s.max())
    out = mini["dir"] / "ours.q4_k_m.gguf"
    s = quantize(mini["f16"], out, "q4_k_m", progress=False, imatrix=theirs)
    assert s["recipe"]["imatrix"]["entries"] == len(im.sums)
    phi2cpu.load(out, threads=2, n_ctx=64).eval([1, 2, 3])
