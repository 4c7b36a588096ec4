"""The user-facing model: a GGUF file mapped by the C++ engine, its tokenizer, and generation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .config import PhiConfig
from .errors import ContextFullError, Phi2Error
from .gguf_io import ModelFile, read_model_file
from .tokenizer import Tokenizer


def default_threads() -> int:
    """Physical cores when they can be told apart from SMT siblings, else logical CPUs."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
            cores.add(siblings.strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


class Model:
    """A loaded Phi-2 model. Create it with :func:`phi2cpu.load`."""

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None, n_ctx: int = 2048):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise Phi2Error(f"threads must be a positive integer, got {threads!r}")
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise Phi2Error(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.file: ModelFile = read_model_file(path)
        self.path = str(self.file.path)
        self.config: PhiConfig = self.file.config
        if n_ctx > self.config.n_ctx_train:
            raise Phi2Error(
                f"n_ctx {n_ctx} exceeds the {self.config.n_ctx_train} positions this model was trained on"
            )
        self.tokenizer: Tokenizer = (
            Tokenizer.from_json(self.file.tokenizer_json)
            if self.file.tokenizer_json
            else Tokenizer.from_gguf_vocab(self.file.tokens, self.file.merges, self.file.token_types)
        )
        tensors = [(t.name, t.ggml_type, list(t.shape), t.offset) for t in self.file.tensors.values()]
        self._engine = _core.Model(self.path, self.config.as_dict(), tensors, n_ctx, threads or default_threads())

    # --- cache-level API -------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_past(self) -> int:
        """Tokens currently held in the KV cache."""
        return self._engine.n_past

    @property
    def threads(self) -> int:
        return self._engine.n_threads

    def reset(self) -> None:
        """Empty the KV cache."""
        self._engine.reset()

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``ids`` to the KV cache. Returns float32 logits of the last token ``(n_vocab,)``,
        or of every token ``(len(ids), n_vocab)`` when ``all_logits``."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise Phi2Error("eval needs a non-empty 1-D sequence of token ids")
        if ids.min() < 0 or ids.max() >= self.config.n_vocab:
            raise Phi2Error(f"token ids must lie in 0..{self.config.n_vocab - 1}")
        if self.n_past + ids.size > self.n_ctx:
            raise ContextFullError(
                f"{ids.size} tokens do not fit: {self.n_past} of the {self.n_ctx}-token context are in use"
            )
        out = self._engine.forward(ids.astype(np.int32), all_logits)
        return out if all_logits else out[0]

    # --- text-level API --------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits ``(len(ids), n_vocab)`` float32 for a fresh sequence (the cache is reset first)."""
        self.reset()
        return self.eval(ids, all_logits=True)

    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """Continue ``prompt``. Greedy when ``temperature`` is 0. Returns the text, or an iterator
        of text pieces when ``stream`` is true."""
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, stop=stop, stream=stream)

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.path!r}, n_layer={c.n_layer}, n_embd={c.n_embd}, n_ctx={self.n_ctx}, "
                f"threads={self.threads})")
