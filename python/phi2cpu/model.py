"""The user-facing model: a GGUF file mapped by the C++ engine, its tokenizer, and generation."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core, interp
from .cliargs import MAX_THREADS
from .config import PhiConfig
from .errors import ContextFullError, ModelFileError, Phi2Error
from .atomic import replace_durably, temp_path
from .gguf_io import ModelFile, read_model_file
from .repack_cache import CacheArg, cache_dir
from .state_file import read_state_arrays
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


STATE_FORMAT = "phi2cpu-state-1"
KV_TYPES = ("f16", "f32")
MAX_SEQ = 256  # sequences one model may hold (each gets its own n_ctx-position cache region)


@dataclass
class Completion:
    """The result of :meth:`Model.complete`."""

    text: str
    token_ids: List[int]          # the sampled ids (a stop string's tokens included, end-of-text not)
    token_logprobs: List[float]   # log p of each sampled id under the model's logits
    finish_reason: str            # "stop" (end-of-text or a stop string) or "length"
    stats: Any                    # the GenerationStats of the run


class Model:
    """A loaded Phi-2 model. Create it with :func:`phi2cpu.load`."""

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None, n_ctx: int = 2048,
                 repack_cache: CacheArg = None, n_seq: int = 1, kv_type: str = "f16"):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= MAX_THREADS):
            raise Phi2Error(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r}")
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise Phi2Error(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if isinstance(n_seq, bool) or not isinstance(n_seq, int) or not 1 <= n_seq <= MAX_SEQ:
            raise Phi2Error(f"n_seq must be an integer in 1..{MAX_SEQ}, got {n_seq!r}")
        if kv_type not in KV_TYPES:
            raise Phi2Error(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
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
        folder = cache_dir(repack_cache)
        self._engine = _core.Model(self.path, self.config.as_dict(), tensors, n_ctx, threads or default_threads(),
                                   str(folder) if folder else "", n_seq, kv_type)
        # per sequence, the ids whose keys and values are in the cache, in order
        self._seq_tokens: List[List[int]] = [[] for _ in range(n_seq)]
        self._interventions: tuple = ()
        self._weights: Optional[interp.FileWeights] = None

    @property
    def repack_report(self) -> dict:
        """How the load placed the matrices the kernels repack: ``weights`` is "file" (none to repack),
        "memory" (repacked on this load), "cache" (mapped from the repack cache) or "cache-written"
        (repacked into a new cache file); also ``cache_path``, ``note`` (why no cache was used),
        ``bytes`` and ``huge_bytes`` (of those on huge pages, -1 when the OS does not say)."""
        return self._engine.repack_report

    def check_files(self) -> None:
        """Raise ModelFileError if the model file (or its repack cache) was truncated or rewritten in
        place since the load; every forward call checks this itself. A file replaced by a rename
        does not count: the loaded model keeps the old file's bytes."""
        self._engine.check_files()

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

    @property
    def n_seq(self) -> int:
        """Sequences the KV cache holds (``n_seq`` at load); the single-sequence API uses sequence 0."""
        return self._engine.n_seq

    @property
    def kv_type(self) -> str:
        """How the KV cache stores keys and values: "f16" (the default) or "f32"."""
        return self._engine.kv_type

    @property
    def _tokens(self) -> List[int]:  # sequence 0's ids
        return self._seq_tokens[0]

    @_tokens.setter
    def _tokens(self, ids: List[int]) -> None:
        self._seq_tokens[0] = ids

    @property
    def tokens(self) -> List[int]:
        """The token ids in sequence 0's KV cache, oldest first (a copy)."""
        return list(self._tokens)

    def _seq(self, seq: object) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq < self.n_seq:
            raise Phi2Error(f"sequence id must be an integer in 0..{self.n_seq - 1}, got {seq!r}")
        return int(seq)

    def seq_tokens(self, seq: int) -> List[int]:
        """The token ids in sequence ``seq``'s KV cache, oldest first (a copy)."""
        return list(self._seq_tokens[self._seq(seq)])

    def seq_n_past(self, seq: int) -> int:
        """Positions cached for sequence ``seq``."""
        return self._engine.seq_n_past(self._seq(seq))

    def reset(self, seq: Optional[int] = 0) -> None:
        """Empty the KV cache of sequence ``seq`` (by default 0, the single-sequence API's), or of
        every sequence when None."""
        for s in range(self.n_seq) if seq is None else [self._seq(seq)]:
            self._engine.reset(s)
            self._seq_tokens[s] = []

    def truncate(self, n: int, seq: int = 0) -> None:
        """Keep only the first ``n`` cached positions of sequence ``seq`` (0 <= n <= its n_past)."""
        seq = self._seq(seq)
        have = self._engine.seq_n_past(seq)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= have:
            raise Phi2Error(f"truncate needs an integer in 0..{have}, got {n!r}")
        self._engine.truncate(n, seq)
        del self._seq_tokens[seq][n:]

    def copy_seq(self, src: int, dst: int, n: Optional[int] = None) -> None:
        """Sequence ``dst`` gets the first ``n`` (default: all) cached positions of ``src``: one
        prompt evaluated once, then continued several ways."""
        src, dst = self._seq(src), self._seq(dst)
        have = self._engine.seq_n_past(src)
        n = have if n is None else n
        if src == dst:
            raise Phi2Error(f"copy_seq needs two different sequences, got {src} twice")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= have:
            raise Phi2Error(f"copy_seq needs n in 0..{have}, got {n!r}")
        self._engine.copy_seq(src, dst, n)
        self._seq_tokens[dst] = self._seq_tokens[src][:n]

    def forward_batch(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
                      logits: Union[bool, Sequence[bool]] = True) -> np.ndarray:
        """One engine call over a batch of entries ``(tokens[i], positions[i], seqs[i], logits[i])``:
        decode tokens of several sequences and prompt chunks of others, together. Each sequence's
        entries continue it: positions ``seq_n_past(s), seq_n_past(s) + 1, ...`` in batch order.
        ``logits`` (one flag, or one per entry) says which entries get a row of the float32 result
        ``(entries asking, n_vocab)``, in entry order. An entry's attention reads only its own
        sequence, and its result does not depend on the rest of the batch. Errors (Phi2Error for
        an unknown sequence, a bad token or a position gap; ContextFullError for a full sequence)
        leave every cache as it was."""
        n = len(tokens)
        flags = [bool(logits)] * n if isinstance(logits, (bool, np.bool_)) else [bool(f) for f in logits]
        if not n or not len(positions) == len(seqs) == len(flags) == n:
            raise Phi2Error("forward_batch needs tokens, positions, seqs (and logits flags) of one non-zero length")
        try:
            t, p, s = (np.asarray(a, dtype=np.int64) for a in (tokens, positions, seqs))
        except (TypeError, ValueError, OverflowError):
            raise Phi2Error("forward_batch: tokens, positions and seqs must be integers") from None
        if t.ndim != 1 or p.ndim != 1 or s.ndim != 1:
            raise Phi2Error("forward_batch: tokens, positions and seqs must be flat sequences of integers")
        if s.min() < 0 or s.max() >= self.n_seq:
            raise Phi2Error(f"sequence ids must lie in 0..{self.n_seq - 1}")
        if t.min() < 0 or t.max() >= self.config.n_vocab:
            raise Phi2Error(f"token ids must lie in 0..{self.config.n_vocab - 1}")
        if p.min() < 0 or p.max() > np.iinfo(np.int32).max:
            raise Phi2Error("positions must be integers >= 0")
        try:
            out = self._engine.decode(t.astype(np.int32), p.astype(np.int32), s.astype(np.int32),
                                      np.asarray(flags, dtype=bool))
        except ValueError as e:
            raise Phi2Error(str(e)) from None
        for tok, seq in zip(t.tolist(), s.tolist()):
            self._seq_tokens[seq].append(tok)
        return out

    def _checked_ids(self, ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise Phi2Error("needs a non-empty 1-D sequence of token ids")
        if ids.min() < 0 or ids.max() >= self.config.n_vocab:
            raise Phi2Error(f"token ids must lie in 0..{self.config.n_vocab - 1}")
        if self.n_past + ids.size > self.n_ctx:
            raise ContextFullError(
                f"{ids.size} tokens do not fit: {self.n_past} of the {self.n_ctx}-token context are in use"
            )
        return ids

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``ids`` to the KV cache. Returns float32 logits of the last token ``(n_vocab,)``,
        or of every token ``(len(ids), n_vocab)`` when ``all_logits``."""
        ids = self._checked_ids(ids)
        out = self._engine.forward(ids.astype(np.int32), all_logits)
        self._tokens.extend(int(i) for i in ids)
        return out if all_logits else out[0]

    def hidden_states(self, ids: Union[str, Sequence[int]], layers: Optional[Sequence[int]] = None
                      ) -> np.ndarray:
        """The residual stream of a fresh sequence (the cache is reset first), float32
        ``(len(layers), len(ids), n_embd)``. Index 0 is the token embeddings and ``l`` the stream
        after layer ``l`` (1..n_layer; negative indices count from the end, -1 = the last layer),
        before the final LayerNorm. ``layers`` defaults to all n_layer + 1. Text is tokenized first."""
        n = self.config.n_layer + 1
        picked = list(range(n)) if layers is None else list(layers)
        if not picked:
            raise Phi2Error("layers must name at least one layer")
        for layer in picked:
            if not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
                raise Phi2Error(f"layer indices must be integers in {-n}..{n - 1}, got {layer!r}")
        token_ids = self.tokenize(ids) if isinstance(ids, str) else ids
        self.reset(0)
        checked = self._checked_ids(token_ids)
        hidden, _ = self._engine.forward_hidden(checked.astype(np.int32), [int(x) % n for x in picked])
        self._tokens.extend(int(i) for i in checked)
        return hidden

    def token_logprobs(self, ids: Union[str, Sequence[int], Sequence[Union[str, Sequence[int]]]]
                       ) -> Union[np.ndarray, List[np.ndarray]]:
        """log p(ids[t] | ids[:t]) for t = 1..len(ids)-1 (float64), for a fresh sequence, under a
        log-softmax of all the logits. Text is tokenized first. A list of texts or id lists gives
        a list of arrays, computed as :meth:`logits` computes a list (sequence 0 empty afterwards)."""
        from .perplexity import window_nll

        batch = _is_batch(ids)
        seqs = [self.tokenize(x) if isinstance(x, str) else [int(t) for t in x] for x in (ids if batch else [ids])]
        if any(len(s) < 2 for s in seqs):
            raise Phi2Error("log-probs need at least two tokens")
        if not batch:
            return -window_nll(self.logits(seqs[0]), seqs[0])
        return [-window_nll(lg, s) for lg, s in zip(self.logits(seqs), seqs)]

    def perplexity(self, text: str, window: int = 512, max_windows: Optional[int] = None,
                   progress: bool = False):
        """Perplexity of ``text`` by the `phi2cpu perplexity` protocol; a PerplexityResult."""
        from .perplexity import perplexity

        return perplexity(self, text, window=window, max_windows=max_windows, progress=progress)

    # --- interpretability (names, shapes and costs: docs/interpretability.md) --------------------
    @property
    def interventions(self) -> tuple:
        """The interventions applied in every forward pass (see :meth:`intervene`)."""
        return self._interventions

    def set_interventions(self, interventions: Sequence[Any]) -> None:
        """Apply these :class:`phi2cpu.interp.Intervention` objects (or lists of them) in every
        forward pass, generation included, until replaced; ``[]`` removes them. The KV cache is
        emptied when the set changes, since its keys and values were computed under the old set."""
        flat: List[interp.Intervention] = []
        for item in interventions:
            for iv in (item if isinstance(item, (list, tuple)) else [item]):
                if not isinstance(iv, interp.Intervention):
                    raise Phi2Error(f"not an Intervention: {iv!r} (build them with phi2cpu.interp)")
                flat.append(interp.expand_scalar(iv, self.config))
        edits = [iv.engine_tuple(self.config) for iv in flat]
        try:
            self._engine.set_edits(edits)
        except ValueError as e:
            raise Phi2Error(str(e)) from None
        if tuple(flat) != self._interventions:
            self.reset(None)
        self._interventions = tuple(flat)

    @contextmanager
    def intervene(self, *interventions: Any) -> Iterator["Model"]:
        """``with m.intervene(steer(v, layers=[3]), scale_heads(...)): m.generate(...)`` applies
        the interventions, on top of those already active, inside the block only."""
        before = self._interventions
        self.set_interventions(list(before) + list(interventions))
        try:
            yield self
        finally:
            self.set_interventions(list(before))

    def run_with_cache(self, ids: Union[str, Sequence[int], Sequence[Union[str, Sequence[int]]]],
                       names: Optional[Sequence[str]] = None, *, logits: bool = True,
                       interventions: Sequence[Any] = ()) -> Union[interp.ActivationCache,
                                                                   List[interp.ActivationCache]]:
        """Run a fresh sequence and return the activations named in ``names`` (every hook point when
        None; see :mod:`phi2cpu.interp` for the scheme) as an :class:`~phi2cpu.interp.ActivationCache`
        of float32 NumPy arrays, with ``logits`` (n, n_vocab) unless ``logits=False``. Only what is
        named is computed or copied. A list of prompts (str or id lists) gives a list of caches,
        run packed together (several prompts per engine call, each attending only to itself) and
        the KV cache empty afterwards. ``interventions`` apply during this call only."""
        c = self.config
        points: List[tuple] = []
        for name in (interp.all_names(c.n_layer) if names is None else list(names)):
            for pair in interp.parse_name(name, c.n_layer):
                if pair not in points:
                    points.append(pair)
        engine_points = [(interp.POINT_ID[p], layer) for p, layer in points]
        keys = [interp.canonical(p, layer) for p, layer in points]
        batch = _is_batch(ids)
        prompts = list(ids) if batch else [ids]
        self.reset(0)
        seqs = [[int(t) for t in self._checked_ids(self.tokenize(x) if isinstance(x, str) else x)] for x in prompts]
        with self.intervene(*interventions):
            if not batch:
                arrays, lg = self._engine.run_with_cache(np.asarray(seqs[0], np.int32), engine_points, logits)
                self._tokens = [int(t) for t in seqs[0]]
                return interp.ActivationCache(self._shaped(keys, arrays), self._tokens[:], lg)
            caches: List[interp.ActivationCache] = []
            for group in _packs(seqs, self.n_ctx):
                flat = np.asarray([t for s in group for t in s], np.int32)
                arrays, lg = self._engine.run_with_cache(flat, engine_points, logits, [len(s) for s in group])
                caches += interp.unpack(self._shaped(keys, arrays), lg, group)
            self._tokens = []
            return caches

    def _shaped(self, keys: List[str], arrays: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        c = self.config
        return {k: a.reshape(a.shape[0], c.n_head, c.head_dim) if k.startswith("head_out.") else a
                for k, a in zip(keys, arrays)}

    def unembed(self, x: np.ndarray, norm: bool = True) -> np.ndarray:
        """lm_head (after the final LayerNorm when ``norm``) on residual-stream rows (..., n_embd)
        -> logits (..., n_vocab), with the engine's kernels for this file's weight types."""
        x = np.asarray(x, np.float32)
        if x.ndim < 1 or x.shape[-1] != self.config.n_embd:
            raise Phi2Error(f"unembed needs rows of width n_embd={self.config.n_embd}, got shape {list(x.shape)}")
        out = self._engine.unembed(x.reshape(-1, x.shape[-1]), norm)
        return out.reshape(*x.shape[:-1], self.config.n_vocab)

    @property
    def weights(self) -> interp.FileWeights:
        """The file's tensors by GGUF name, dequantized to float on demand (for attribution)."""
        if self._weights is None:
            self._weights = interp.FileWeights(self.file)
        return self._weights

    def logit_lens(self, cache: interp.ActivationCache, positions=None) -> np.ndarray:
        """See :func:`phi2cpu.interp.logit_lens`."""
        return interp.logit_lens(self, cache, positions)

    def direct_logit_attribution(self, cache: interp.ActivationCache, tokens: Sequence[int], position: int = -1,
                                 heads: bool = False) -> Dict[str, np.ndarray]:
        """See :func:`phi2cpu.interp.direct_logit_attribution`."""
        return interp.direct_logit_attribution(self, cache, tokens, position, heads)

    # --- saved prompt caches ---------------------------------------------------------------
    def _identity(self) -> dict:
        return {"config": self.config.as_dict(), "file_bytes": os.path.getsize(self.path),
                "tensors": sorted((t.name, t.ggml_type) for t in self.file.tensors.values())}

    def save_state(self, path: Union[str, os.PathLike], seq: int = 0) -> None:
        """Write sequence ``seq``'s KV cache and its token ids to ``path`` (a NumPy .npz), to skip
        re-reading a long prompt in a later run with :meth:`load_state`. Keys and values are kept
        as the cache stores them (float16 or float32). The file appears whole or not at all."""
        seq = self._seq(seq)
        k, v = self._engine.get_state(seq)
        meta = json.dumps({"format": STATE_FORMAT, "model": self._identity()})
        final = Path(path)
        tmp = temp_path(final)
        try:
            with open(tmp, "wb") as f:  # an open file: np.savez would otherwise append ".npz"
                np.savez(f, meta=np.array(meta), tokens=np.asarray(self._seq_tokens[seq], dtype=np.int64), k=k, v=v)
            replace_durably(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _state_limits(self) -> dict[str, tuple[Any, int]]:
        """Each state array's dtype kind and the most bytes it may hold for this model (at its trained
        context length: a longer state than this context holds is a ContextFullError, not a bad file)."""
        c = self.config
        kv_bytes = c.n_layer * c.n_ctx_train * c.n_embd * 4
        return {"meta": (np.str_, 4 << 20), "tokens": (np.integer, c.n_ctx_train * 8), "k": ((np.float16, np.float32), kv_bytes),
                "v": ((np.float16, np.float32), kv_bytes)}

    def load_state(self, path: Union[str, os.PathLike], seq: int = 0) -> None:
        """Replace sequence ``seq``'s KV cache with one written by :meth:`save_state` for this same
        model file (either cache type: a float32 state goes into an f16 cache rounded as the cache
        would have stored it; a float16 one widens exactly). On any error the cache is left as it was."""
        seq = self._seq(seq)
        arrays = read_state_arrays(path, self._state_limits())
        try:
            meta = json.loads(str(arrays["meta"]))
        except (json.JSONDecodeError, RecursionError) as e:
            raise ModelFileError(f"{path}: not a phi2cpu state file (meta is not JSON: {e})") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{path}: not a phi2cpu state file (meta is not a JSON object)")
        if meta.get("format") != STATE_FORMAT:
            raise ModelFileError(f"{path}: unknown state format {meta.get('format')!r}")
        if json.loads(json.dumps(self._identity())) != meta.get("model"):
            raise ModelFileError(f"{path}: the state was saved from a different model file")
        tokens, k, v = arrays["tokens"], arrays["k"], arrays["v"]
        c = self.config
        if tokens.ndim != 1:
            raise ModelFileError(f"{path}: tokens has shape {list(tokens.shape)}, expected one dimension")
        want = [c.n_layer, tokens.size, c.n_embd]
        for name, a in (("k", k), ("v", v)):
            if list(a.shape) != want:
                raise ModelFileError(f"{path}: {name} has shape {list(a.shape)}, expected {want} "
                                     "(n_layer, tokens, n_embd)")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= c.n_vocab):
            raise ModelFileError(f"{path}: token ids must lie in 0..{c.n_vocab - 1}")
        for name, a in (("k", k), ("v", v)):
            if not np.isfinite(a).all():
                raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
        if tokens.size > self.n_ctx:
            raise ContextFullError(f"{path}: the state holds {tokens.size} tokens; the context holds {self.n_ctx}")
        if k.dtype != v.dtype:
            raise ModelFileError(f"{path}: k is {k.dtype} but v is {v.dtype}")
        self._engine.set_state(k, v, seq)
        self._seq_tokens[seq] = [int(t) for t in tokens]

    # --- text-level API --------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: Union[Sequence[int], Sequence[Sequence[int]]]) -> Union[np.ndarray, List[np.ndarray]]:
        """Logits ``(len(ids), n_vocab)`` float32 for a fresh sequence (sequence 0 is reset first
        and holds ``ids`` afterwards). A list of id lists gives a list of such arrays, the lists
        packed several to an engine call (each attending only to itself), sequence 0 empty
        afterwards. Each array equals that list run alone up to the matmul kernels' dependence on
        the batch size (the attention of a row reads only its own list)."""
        if not _is_batch(ids):
            self.reset(0)
            return self.eval(ids, all_logits=True)
        self.reset(0)
        seqs = [[int(t) for t in self._checked_ids(x)] for x in ids]
        out: List[np.ndarray] = []
        for group in _packs(seqs, self.n_ctx):
            flat = np.asarray([t for s in group for t in s], np.int32)
            _, lg = self._engine.run_with_cache(flat, [], True, [len(s) for s in group])
            starts = np.cumsum([0] + [len(s) for s in group])
            out += [lg[a:b] for a, b in zip(starts[:-1], starts[1:])]
        return out

    def generate(self, prompt: str, max_tokens: int = 128, *, stop: Optional[Sequence[str]] = None,
                 stream: bool = False, reuse_prefix: bool = False, json_schema: Any = None,
                 grammar: Optional[str] = None, **sampling: Any) -> Union[str, Iterator[str]]:
        """Continue ``prompt``: the text, or an iterator of text pieces when ``stream`` is true.
        ``sampling`` takes the SamplingParams fields (temperature, top_k, top_p, min_p, seed,
        repeat_penalty, presence_penalty, frequency_penalty, penalty_last_n, logit_bias);
        temperature=0 is greedy. ``json_schema`` (a dict or JSON text) or ``grammar`` (GBNF text)
        constrains the output to match it. ``lookup=True`` (or k, or a dict of
        :class:`phi2cpu.lookup.LookupParams` fields) decodes speculatively by prompt lookup: the
        same output distribution, fewer model calls. See :func:`phi2cpu.generate.generate`."""
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, stop=list(stop) if stop else None,
                        stream=stream, reuse_prefix=reuse_prefix, json_schema=json_schema, grammar=grammar,
                        **sampling)

    def complete(self, prompt: str, max_tokens: int = 128, *, stop: Optional[Sequence[str]] = None,
                 reuse_prefix: bool = False, json_schema: Any = None, grammar: Optional[str] = None,
                 **sampling: Any) -> Completion:
        """Like :meth:`generate`, returning the text with the sampled token ids, their log-probs
        and why generation ended."""
        pieces = self.generate(prompt, max_tokens, stop=stop, stream=True, reuse_prefix=reuse_prefix,
                               json_schema=json_schema, grammar=grammar, **sampling)
        text = "".join(pieces)
        st = pieces.stats
        return Completion(text, list(st.token_ids), list(st.token_logprobs), st.finish_reason, st)

    def generate_batch(self, prompts: Sequence[str], max_tokens: int = 128, *, stop: Optional[Sequence[str]] = None,
                       **sampling: Any) -> List[str]:
        """Continue every prompt of ``prompts``, ``n_seq`` of them decoded together in each engine
        call (load with ``n_seq`` > 1 to batch); returns the texts in order. ``max_tokens``,
        ``stop`` and ``sampling`` mean what they mean for :meth:`generate`, and each text equals
        what :meth:`generate` gives for that prompt alone (a ``seed`` seeds each prompt alike).
        Every sequence's cache is overwritten. See :func:`phi2cpu.batch.complete_batch`."""
        return [c.text for c in self.complete_batch(prompts, max_tokens, stop=stop, **sampling)]

    def complete_batch(self, prompts: Sequence[str], max_tokens: int = 128, *, stop: Optional[Sequence[str]] = None,
                       **sampling: Any) -> List[Completion]:
        """Like :meth:`generate_batch`, returning a :class:`Completion` per prompt (its sampled ids,
        their log-probs and why it ended), as :meth:`complete` gives for each alone."""
        from .batch import complete_batch

        return complete_batch(self, prompts, max_tokens, stop=stop, **sampling)

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.path!r}, n_layer={c.n_layer}, n_embd={c.n_embd}, n_ctx={self.n_ctx}, "
                f"threads={self.threads}, n_seq={self.n_seq}, kv_type={self.kv_type!r})")


def _is_batch(ids: Any) -> bool:
    """A list of prompts (texts or id lists), rather than one text or one id list."""
    return not isinstance(ids, str) and len(ids) > 0 and not isinstance(ids[0], (int, np.integer))


def _packs(seqs: List[List[int]], n_ctx: int) -> Iterator[List[List[int]]]:
    """Consecutive groups of sequences whose lengths add up to at most n_ctx."""
    group: List[List[int]] = []
    for s in seqs:
        if group and sum(map(len, group)) + len(s) > n_ctx:
            yield group
            group = []
        group.append(s)
    if group:
        yield group
