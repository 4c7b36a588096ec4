"""phi2cpu: Microsoft's Phi-2 on an ordinary CPU.

    >>> import phi2cpu
    >>> m = phi2cpu.load("phi-2.q4_0.gguf")
    >>> print(m.generate("Instruct: name three primes.\\nOutput:", max_tokens=32, temperature=0))
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .errors import ContextFullError, ModelFileError, Phi2Error, SamplingError
from .model import Model

__version__ = "0.1.0"

DEFAULT_MODEL_NAME = "phi2-mini-code.q8_0.gguf"


def default_model_path() -> Path:
    """The bundled demo model: phi2-mini-code (31M parameters, Phi-2's architecture, trained on
    Python code). It is not Phi-2; quantize microsoft/phi-2 with ``phi2cpu quantize`` for that."""
    path = Path(__file__).with_name("models") / DEFAULT_MODEL_NAME
    if not path.is_file():
        raise ModelFileError(f"the bundled model {path.name} is missing from this installation")
    return path


def load(path: Union[str, os.PathLike, None] = None, threads: Optional[int] = None, n_ctx: int = 2048,
         repack_cache: Union[bool, str, os.PathLike, None] = None, n_seq: int = 1, kv_type: str = "f16") -> Model:
    """Map a phi2 GGUF file (ours or llama.cpp's) and return a :class:`Model`.

    ``path`` None loads the bundled demo model, and a string that is no existing path is looked
    up in the model store (``"phi-2:q4_0"``, as ``phi2cpu pull`` names it); ``threads`` None uses
    the physical cores; ``n_ctx`` is the KV-cache length in tokens. ``repack_cache``: where the
    weights repacked for this CPU are kept between loads (see :mod:`phi2cpu.repack_cache`): None
    the model store (or $PHI2CPU_REPACK_CACHE), a folder, or False to repack on every load.
    ``n_seq``: sequences the KV cache holds (each ``n_ctx`` positions, allocated as they fill), for
    :meth:`Model.forward_batch` and :meth:`Model.generate_batch`. ``kv_type``: "f16" (default: half
    the bytes per position) or "f32" keys and values; attention scores and softmax are float32 either way."""
    if path is None:
        path = default_model_path()
    elif isinstance(path, str):
        from .store import resolve

        path = resolve(path)
    return Model(path, threads=threads, n_ctx=n_ctx, repack_cache=repack_cache, n_seq=n_seq, kv_type=kv_type)


__all__ = [
    "load", "Model", "default_model_path", "Phi2Error", "ModelFileError", "ContextFullError", "SamplingError",
    "__version__",
]
