"""A tiny byte-level tokenizer and a fake Model that follows the engine's contract, so generation,
perplexity and CLI code can be tested without the C++ engine or any model file."""
from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np

from phi2cpu.config import PhiConfig
from phi2cpu.errors import ContextFullError
from phi2cpu.tokenizer import Tokenizer, _byte_level_table

TINY_EOS = 256
TINY_MERGES = ["h e", "l l", "ll o", "Ġ w", "o r"]
TINY_N_VOCAB = 263           # 256 bytes, <|endoftext|>, 5 merged tokens, one whitespace token
TINY_MODEL_VOCAB = 320       # embedding rows, like Phi-2's 51200 > 50295


def tiny_gguf_vocab(pad_type: int = 4):
    byte_char = {b: c for c, b in _byte_level_table().items()}
    tokens = [byte_char[b] for b in range(256)] + ["<|endoftext|>"]
    tokens += ["".join(m.split(" ")) for m in TINY_MERGES] + ["    "]
    types = [1] * 256 + [3] + [1] * len(TINY_MERGES) + [4]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), TINY_MODEL_VOCAB)]
    types += [pad_type] * (TINY_MODEL_VOCAB - len(types))
    return tokens, list(TINY_MERGES), types


def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_vocab(*tiny_gguf_vocab())


def write_tiny_tokenizer_json(model_dir) -> None:
    """The tiny tokenizer as model_dir/tokenizer.json, for checkpoints with TINY_MODEL_VOCAB
    embedding rows (a quantizer then handles 320 vocabulary rows, not Phi-2's 51200)."""
    tiny_tokenizer()._hf.save(f"{model_dir}/tokenizer.json")


def onehot(token: int, n_vocab: int = TINY_MODEL_VOCAB, n_valid: int = TINY_N_VOCAB) -> np.ndarray:
    """Logits that make `token` the only sensible choice; padding rows get a huge decoy value."""
    row = np.zeros(n_vocab, dtype=np.float32)
    row[n_valid:] = 1000.0
    row[token] = 50.0
    return row


class FakeModel:
    """logits_fn(history) gives the logits after the tokens in the cache, last one included."""

    def __init__(self, logits_fn: Callable[[tuple], np.ndarray], tokenizer: Tokenizer = None,
                 n_ctx: int = 64, n_vocab: int = TINY_MODEL_VOCAB):
        self.tokenizer = tokenizer or tiny_tokenizer()
        self.config = PhiConfig(n_vocab=n_vocab)
        self.n_ctx = n_ctx
        self.logits_fn = logits_fn
        self.history: List[int] = []
        self.calls: List[List[int]] = []
        self.resets = 0

    @property
    def n_past(self) -> int:
        return len(self.history)

    @property
    def tokens(self) -> List[int]:
        return list(self.history)

    def tokenize(self, text: str) -> List[int]:
        return self.tokenizer.encode(text)

    def reset(self) -> None:
        self.history = []
        self.resets += 1

    def truncate(self, n: int) -> None:
        assert 0 <= n <= len(self.history)
        del self.history[n:]

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        ids = [int(i) for i in ids]
        if self.n_past + len(ids) > self.n_ctx:
            raise ContextFullError(f"{self.n_past} + {len(ids)} tokens overflow {self.n_ctx}")
        self.calls.append(ids)
        rows = []
        for t in ids:
            self.history.append(t)
            rows.append(self.logits_fn(tuple(self.history)))
        out = np.stack(rows).astype(np.float32)
        return out if all_logits else out[-1]


def scripted(prompt_len: int, output: Sequence[int], eos: int = TINY_EOS):
    """logits_fn that continues any prompt of prompt_len tokens with `output`, then eos."""
    def fn(history: tuple) -> np.ndarray:
        k = len(history) - prompt_len
        return onehot(output[k] if 0 <= k < len(output) else eos)
    return fn


def scripted_model(prompt: str, output_text: str, **kw) -> FakeModel:
    tok = tiny_tokenizer()
    n_prompt = len(tok.encode(prompt)) or 1
    return FakeModel(scripted(n_prompt, tok.encode(output_text)), tokenizer=tok, **kw)


def table_model(n_ctx: int = 64):
    """A model whose logits depend only on the last token, via a random table; returns both."""
    table = np.random.default_rng(1).normal(size=(TINY_MODEL_VOCAB, TINY_MODEL_VOCAB)) * 2
    table = table.astype(np.float32)
    return FakeModel(lambda h: table[h[-1]], n_ctx=n_ctx), table


def awkward_rows(n: int = 1024, seed: int = 0) -> np.ndarray:
    """24 Gaussian rows of n values, with the awkward ones quantizers trip on: all zero, constant,
    all positive, all negative, tiny, huge, and a single outlier."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((24, n)).astype(np.float32)
    x[1] = 0
    x[2] = 0.37
    x[3] = np.abs(x[3]) + 0.5
    x[4] = -np.abs(x[4])
    x[5] *= 1e-6
    x[6] *= 1e3
    x[7, 300] = 50.0
    return x
