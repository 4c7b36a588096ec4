"""Offline inference over Ray Data: ``map_batches`` with an actor pool of phi2cpu engines.

Each actor loads the model once (a path or store name that resolves on every node, or None for the
bundled demo model) with `threads` engine threads and as many Ray CPUs, and works through batches
of rows. Three kinds of work, each a callable class for ``Dataset.map_batches`` and a function that
applies it:

- :func:`generate` / :class:`Generator`: a completion per prompt (``Model.complete``): columns
  ``text``, ``finish_reason``, ``completion_tokens``, ``token_logprobs``.
- :func:`score` / :class:`LogLikelihood`: log-likelihood of each text (every token after the first),
  or of a continuation given a context, as lm-eval's ``loglikelihood``: columns ``logprob`` (the
  sum), ``n_tokens``, ``greedy`` (every scored token is the argmax) and ``token_logprobs``, equal to
  ``Model.token_logprobs``.
- :func:`perplexity` / :class:`Perplexity`: ``Model.perplexity`` of each text: ``ppl``,
  ``nll_mean``, ``n_scored``.

A row the model cannot take (too few tokens, longer than the context) fails the job with the
row's error, never with a made-up number.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from phi2cpu.errors import Phi2Error

Batch = Dict[str, np.ndarray]


def _column(batch: Batch, name: str) -> List[str]:
    if name not in batch:
        raise Phi2Error(f"the dataset has no column {name!r} (it has {', '.join(sorted(batch)) or 'none'})")
    values = [v.item() if isinstance(v, np.generic) else v for v in batch[name]]
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise Phi2Error(f"column {name!r} must hold strings; row {i} of a batch holds {type(v).__name__}")
    return values


def _lists(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Ragged per-row lists as one object array (a list column in the dataset)."""
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = np.asarray(r, dtype=np.float64)
    return out


class _Engine:
    def __init__(self, model: Optional[str] = None, threads: int = 1, n_ctx: int = 2048):
        import phi2cpu

        self.model = phi2cpu.load(model, threads=threads, n_ctx=n_ctx)


class Generator(_Engine):
    """``map_batches(Generator, fn_constructor_kwargs=dict(model=..., threads=..., ...))``: a
    completion of each row's `prompt_column`; `sampling` as ``Model.complete`` takes it (a seed
    makes every row's draws reproducible wherever it runs)."""

    def __init__(self, model: Optional[str] = None, threads: int = 1, n_ctx: int = 2048,
                 prompt_column: str = "prompt", max_tokens: int = 128, stop: Optional[Sequence[str]] = None,
                 **sampling: Any):
        from phi2cpu.sampling import sampling_params

        sampling_params(**sampling)  # a bad option fails here, once, not on every row
        super().__init__(model, threads, n_ctx)
        self.prompt_column, self.max_tokens, self.stop, self.sampling = prompt_column, max_tokens, stop, sampling

    def __call__(self, batch: Batch) -> Batch:
        done = [self.model.complete(p, self.max_tokens, stop=self.stop, **self.sampling)
                for p in _column(batch, self.prompt_column)]
        return {**batch, "text": np.array([c.text for c in done], dtype=object),
                "finish_reason": np.array([c.finish_reason for c in done], dtype=object),
                "completion_tokens": np.array([len(c.token_ids) for c in done], dtype=np.int64),
                "token_logprobs": _lists([c.token_logprobs for c in done])}


class LogLikelihood(_Engine):
    """Log-likelihood of each row's `text_column`, or (with `context_column`) of the text as a
    continuation of the context: the tokens of context + text, with only the text's scored."""

    def __init__(self, model: Optional[str] = None, threads: int = 1, n_ctx: int = 2048,
                 text_column: str = "text", context_column: Optional[str] = None):
        super().__init__(model, threads, n_ctx)
        self.text_column, self.context_column = text_column, context_column
        self.n_valid = min(self.model.tokenizer.n_vocab, self.model.config.n_vocab)

    def _one(self, text: str, context: Optional[str]):
        from phi2cpu.perplexity import window_nll

        m = self.model
        if context is None:
            ids, first = m.tokenize(text), 1
            if len(ids) < 2:
                raise Phi2Error(f"a text to score needs at least two tokens, got {len(ids)}: {text[:40]!r}")
        else:
            head, tail = m.tokenize(context), m.tokenize(text)
            if not head or not tail:
                raise Phi2Error(f"a context and its continuation both need a token: {context[:40]!r}, {text[:40]!r}")
            ids, first = head + tail, len(head)
        logits = m.logits(ids)
        lp = -window_nll(logits, ids)[first - 1:]  # as Model.token_logprobs computes it
        greedy = bool(np.all(np.argmax(logits[first - 1:-1, : self.n_valid], axis=1) == np.asarray(ids[first:])))
        return lp, greedy

    def __call__(self, batch: Batch) -> Batch:
        texts = _column(batch, self.text_column)
        contexts = _column(batch, self.context_column) if self.context_column else [None] * len(texts)
        done = [self._one(t, c) for t, c in zip(texts, contexts)]
        return {**batch, "logprob": np.array([float(lp.sum()) for lp, _ in done], dtype=np.float64),
                "n_tokens": np.array([lp.size for lp, _ in done], dtype=np.int64),
                "greedy": np.array([g for _, g in done], dtype=bool),
                "token_logprobs": _lists([lp for lp, _ in done])}


class Perplexity(_Engine):
    """``Model.perplexity`` of each row's `text_column` (non-overlapping windows of `window` tokens)."""

    def __init__(self, model: Optional[str] = None, threads: int = 1, n_ctx: int = 2048,
                 text_column: str = "text", window: int = 512):
        super().__init__(model, threads, max(n_ctx, window))
        self.text_column, self.window = text_column, window

    def __call__(self, batch: Batch) -> Batch:
        done = [self.model.perplexity(t, window=self.window) for t in _column(batch, self.text_column)]
        return {**batch, "ppl": np.array([r.ppl for r in done], dtype=np.float64),
                "nll_mean": np.array([r.nll_mean for r in done], dtype=np.float64),
                "n_scored": np.array([r.n_scored for r in done], dtype=np.int64)}


def _pool(actors):
    """An actor pool: `actors` engines, or (min, max) for a pool Ray Data grows and shrinks."""
    from ray.data import ActorPoolStrategy

    if isinstance(actors, int) and not isinstance(actors, bool) and actors >= 1:
        return ActorPoolStrategy(size=actors)
    if (isinstance(actors, (tuple, list)) and len(actors) == 2
            and all(isinstance(a, int) and not isinstance(a, bool) for a in actors) and 1 <= actors[0] <= actors[1]):
        return ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    raise Phi2Error(f"actors must be an integer >= 1 or a (min, max) pair with 1 <= min <= max, got {actors!r}")


def _apply(ds, cls, model, threads: int, actors, batch_size: int, kwargs: Dict[str, Any]):
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise Phi2Error(f"threads must be an integer >= 1, got {threads!r}")
    return ds.map_batches(cls, fn_constructor_kwargs={"model": None if model is None else str(model),
                                                      "threads": threads, **kwargs},
                          batch_size=batch_size, batch_format="numpy", compute=_pool(actors), num_cpus=threads)


def generate(ds, model: Optional[str] = None, *, threads: int = 1, actors=1, batch_size: int = 8,
             n_ctx: int = 2048, prompt_column: str = "prompt", max_tokens: int = 128,
             stop: Optional[Sequence[str]] = None, **sampling: Any):
    """`ds` with a completion per row, by `actors` engines (an int, or (min, max) for an
    autoscaling pool) of `threads` threads each. Lazy, as every Ray Data transform."""
    return _apply(ds, Generator, model, threads, actors, batch_size,
                  dict(n_ctx=n_ctx, prompt_column=prompt_column, max_tokens=max_tokens, stop=stop, **sampling))


def score(ds, model: Optional[str] = None, *, threads: int = 1, actors=1, batch_size: int = 8,
          n_ctx: int = 2048, text_column: str = "text", context_column: Optional[str] = None):
    """`ds` with each row's log-likelihood (see :class:`LogLikelihood`)."""
    return _apply(ds, LogLikelihood, model, threads, actors, batch_size,
                  dict(n_ctx=n_ctx, text_column=text_column, context_column=context_column))


def perplexity(ds, model: Optional[str] = None, *, threads: int = 1, actors=1, batch_size: int = 1,
               n_ctx: int = 2048, text_column: str = "text", window: int = 512):
    """`ds` with each row's perplexity (see :class:`Perplexity`)."""
    return _apply(ds, Perplexity, model, threads, actors, batch_size,
                  dict(n_ctx=n_ctx, text_column=text_column, window=window))
