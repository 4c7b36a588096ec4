"""Batch invariance: a token's logits are the same bytes however its sequence is fed (one token at a
time, in chunks that take the small-batch GEMV or the GEMM, or all at once), with 1 or 2 threads,
for every weight type and on every kernel path this CPU runs (PHI2CPU_ISA)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fakes import TINY_MODEL_VOCAB, write_tiny_tokenizer_json

from phi2cpu import _core
from phi2cpu.checkpoint import write_random_checkpoint
from phi2cpu.quantize import QTYPES, quantize

# Every matrix width a multiple of 256, so the K-quant mixes quantize every matrix as they say.
SMALL = {
    "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "vocab_size": TINY_MODEL_VOCAB,
    "hidden_act": "gelu_new", "tie_word_embeddings": False,
}
CHUNKS = (1, 2, 3, 5, 9)  # 1..8 tokens run through the small-batch GEMV, 9 and more through the GEMM

# In a fresh process per path: each way of feeding the sequence against all of it at once with 2 threads.
CHILD = """
import json, sys
import numpy as np, phi2cpu
path, ids, chunks = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
models = {t: phi2cpu.load(path, threads=t, repack_cache=False) for t in (1, 2)}
def fed(threads, chunk):
    m = models[threads]
    m.reset()
    parts = [m.eval(ids[i:i + chunk], all_logits=True) for i in range(0, len(ids), chunk)]
    return np.concatenate(parts).tobytes()
whole = fed(2, len(ids))
ways = [(2, c) for c in chunks] + [(1, 1), (1, len(ids))]
bad = [f"{t} threads, chunks of {c}" for t, c in ways if fed(t, c) != whole]
print(json.dumps(bad))
"""


@pytest.fixture(scope="module")
def typed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("invariance")
    ck = write_random_checkpoint(d / "ck", SMALL, seed=5, shards=1, std=0.05)
    write_tiny_tokenizer_json(ck)
    files = {}
    for qtype in QTYPES:
        files[qtype] = d / f"small.{qtype}.gguf"
        quantize(ck, files[qtype], qtype, progress=False)
    return files


@pytest.mark.parametrize("isa", _core.available_isas().split(", "))
def test_logits_do_not_depend_on_how_the_sequence_is_fed(typed_files, isa):
    ids = [(i * 7919) % TINY_MODEL_VOCAB for i in range(13)]
    for qtype, path in typed_files.items():
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(ids), json.dumps(list(CHUNKS))],
                             env=dict(os.environ, PHI2CPU_ISA=isa), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [], f"{isa} {qtype}: logits differ from the whole batch's"
