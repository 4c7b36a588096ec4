"""Type stubs for phi2cpu._core, the C++ engine (see csrc/bind/module.cpp)."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from .errors import ContextFullError, ModelFileError, Phi2Error

FileError = ModelFileError
ContextError = ContextFullError
SetupError = Phi2Error

def quantize(x: npt.ArrayLike, type: int, importance: Optional[npt.ArrayLike] = None,
             threads: int = 1) -> npt.NDArray[np.uint8]:
    """Quantize float32 rows (last axis) to GGUF block bytes of the given GGML type id; with importance
    (one non-negative weight per column) by the type's importance-weighted search."""

def dequantize(data: npt.ArrayLike, type: int, n: int) -> npt.NDArray[np.float32]:
    """Dequantize GGUF block bytes to float32 rows of length n."""

def gguf_strings(buf: Any, pos: int, n: int) -> Tuple[Optional[List[str]], int]:
    """n GGUF strings from byte pos of buf: (list of str, end position), or (None, -1) past the end."""

def prune_repack_cache(dir: str) -> None:
    """Delete the repack caches in dir whose model file is gone or changed, and dead writers' temporary files."""

def isa() -> Tuple[str, str]:
    """The kernel path in use and why it was chosen."""

def available_isas() -> str:
    """Kernel paths this build has and this CPU runs, comma-separated."""

def types() -> List[Dict[str, Any]]:
    """The tensor types the engine knows, in id order: id, name, block_size, type_size, weight (matrices may
    have it), activations (the type a matrix's input is quantized to), weighted (it has an importance-weighted quantizer)."""

class Model:
    """A mapped GGUF file, the KV cache of n_seq sequences and a thread pool. The single-sequence
    calls (forward, forward_hidden, run_with_cache, get_state, ...) work on sequence 0."""

    def __init__(self, path: str, config: Dict[str, Any], tensors: List[Tuple[str, int, Sequence[int], int]],
                 n_ctx: int, n_threads: int, repack_cache: str = "", n_seq: int = 1, kv_type: str = "f16") -> None:
        """tensors: (name, ggml_type, numpy_shape, absolute_offset) for every tensor in the file;
        repack_cache: the folder of repack cache files ("" repacks into memory); n_seq sequences get
        n_ctx positions each, keys and values stored as kv_type ("f16" or "f32")."""

    def decode(self, tokens: npt.ArrayLike, positions: npt.ArrayLike, seqs: npt.ArrayLike, logits: npt.ArrayLike
               ) -> npt.NDArray[np.float32]:
        """Run a batch of entries (tokens[i] at positions[i] of sequence seqs[i]; logits[i] asks for
        its row), four 1-D arrays of one length. Each sequence's positions continue it without gaps,
        in batch order. float32 logits (entries asking, n_vocab). ValueError (unknown sequence, bad
        token, position gap) or ContextError (a sequence full) leave the cache unchanged."""

    def forward(self, tokens: npt.ArrayLike, all_logits: bool = False) -> npt.NDArray[np.float32]:
        """Append tokens to the KV cache; float32 logits (n or 1, n_vocab)."""

    def forward_hidden(self, tokens: npt.ArrayLike, layers: Sequence[int], logits: bool = False
                       ) -> Tuple[npt.NDArray[np.float32], Optional[npt.NDArray[np.float32]]]:
        """Append tokens; (residual streams (len(layers), n, n_embd), logits (n, n_vocab) or None).
        Layer 0 is the token embeddings, l the residual stream after layer l."""

    def run_with_cache(self, tokens: npt.ArrayLike, points: Sequence[Tuple[int, int]], logits: bool = True,
                       seq_lens: Optional[Sequence[int]] = None
                       ) -> Tuple[List[npt.NDArray[np.float32]], Optional[npt.NDArray[np.float32]]]:
        """Append tokens (or, with seq_lens, run packed sequences from an empty cache and empty it
        again); (captured arrays in the order of points [(point, layer)], logits (n, n_vocab) or None)."""

    def set_edits(self, edits: List[Tuple[int, int, int, npt.ArrayLike, Sequence[int], Optional[npt.ArrayLike]]]
                  ) -> None:
        """Edits applied in every forward until replaced: [(point, layer, op, rows, positions, cols)]; [] clears them."""

    @property
    def has_edits(self) -> bool: ...
    def unembed(self, x: npt.ArrayLike, norm: bool = True) -> npt.NDArray[np.float32]:
        """Final LayerNorm (when norm) and lm_head on residual rows (n, n_embd) -> logits (n, n_vocab)."""

    def get_state(self, seq: int = 0) -> Tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """A sequence's cached positions: (k, v), each (n_layer, n_past, n_embd), float16 or float32
        as the cache stores them."""

    def set_state(self, k: npt.ArrayLike, v: npt.ArrayLike, seq: int = 0) -> None:
        """Replace a sequence's cache with get_state's arrays (float16 or float32, converted to the cache type)."""

    def reset(self, seq: int = 0) -> None: ...
    def truncate(self, n: int, seq: int = 0) -> None:
        """Keep only the first n cached positions of a sequence."""

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        """Sequence dst gets the first n cached positions of src."""

    def seq_n_past(self, seq: int) -> int: ...
    @property
    def n_seq(self) -> int: ...
    @property
    def kv_type(self) -> str: ...
    @property
    def n_past(self) -> int:
        """Sequence 0's cached positions."""
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def repack_report(self) -> Dict[str, Any]:
        """weights (file | memory | cache | cache-written), cache_path, note, bytes, huge_bytes."""
