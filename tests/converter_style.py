"""A Hugging Face Phi-2 checkpoint written as llama.cpp's own converter writes it: F16 matrices
(token_embd and output included), F32 norms and biases, separate attn_q/attn_k/attn_v (the current
HF layout has no fused Wqkv), only llama.cpp's metadata keys (no phi2cpu.* keys, so no
tokenizer.json text: readers must rebuild the tokenizer from tokens/merges), and the vocabulary's
padding ids typed UNUSED."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType

from phi2cpu.checkpoint import HFCheckpoint
from phi2cpu.gguf_io import vocab_from_tokenizer_json, write_gguf
from phi2cpu.tokenizer import TOKEN_UNUSED


def _loader(ck: HFCheckpoint, name: str, rows: tuple[int, int] | None, f16: bool) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        x = ck.load(name)
        if rows is not None:
            x = x[rows[0]:rows[1]]
        return x.astype(np.float16) if f16 else x
    return load


def write_converter_style_f16(hf_dir: Path, out: Path) -> Path:
    ck = HFCheckpoint(hf_dir)
    cfg, n = ck.config, ck.config.n_embd
    vocab = vocab_from_tokenizer_json((hf_dir / "tokenizer.json").read_text(encoding="utf-8"), cfg.n_vocab)
    vocab.tokenizer_json = None
    vocab.token_types = [TOKEN_UNUSED if tok == f"[PAD{i}]" else typ
                         for i, (tok, typ) in enumerate(zip(vocab.tokens, vocab.token_types))]
    plan = []
    shapes = ck.expected_shapes()
    for name in ck.tensor_names():
        shape = shapes[name]
        matrix = len(shape) == 2
        ttype = T.F16 if matrix else T.F32
        if ".attn_qkv." in name:
            for i, x in enumerate("qkv"):
                plan.append((name.replace("attn_qkv", f"attn_{x}"), _loader(ck, name, (i * n, (i + 1) * n), matrix),
                             ttype, (n, *shape[1:])))
        else:
            plan.append((name, _loader(ck, name, None, matrix), ttype, shape))
    return write_gguf(out, cfg, plan, vocab, int(LlamaFileType.MOSTLY_F16), {}, name=hf_dir.name,
                      phi2cpu_keys=False)
