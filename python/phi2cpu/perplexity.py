"""Perplexity of a model on a text, with a fixed, stated protocol."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ContextFullError, Phi2Error
from .sampling import _is_int

PROTOCOL = """\
Protocol: tokenize the whole text (no BOS token); split it into non-overlapping windows of
WINDOW tokens, dropping the final partial window; evaluate each window from an empty KV cache
and score every position after the first, i.e. the negative log-likelihood of token t+1 given
the logits at t for t = 0..WINDOW-2, using a float64 log-softmax over all the model's logits
(51200 for Phi-2, padding rows included). ppl = exp(mean NLL over all scored tokens)."""

_ROWS = 64  # logits rows converted to float64 at a time


def _exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


@dataclass
class PerplexityResult:
    ppl: float
    nll_mean: float
    n_scored: int
    n_windows: int
    kl_mean: Optional[float] = None  # mean KL(base || model) in nats per scored position, with a base


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def window_kl(base_logits: np.ndarray, logits: np.ndarray, n: int) -> np.ndarray:
    """KL(softmax(base) || softmax(logits)) of the first n rows, in float64."""
    out = np.empty(n, dtype=np.float64)
    for a in range(0, n, _ROWS):
        lb, lm = _log_softmax(base_logits[a: min(a + _ROWS, n)]), _log_softmax(logits[a: min(a + _ROWS, n)])
        out[a: a + lb.shape[0]] = (np.exp(lb) * (lb - lm)).sum(axis=1)
    return out


def window_nll(logits: np.ndarray, ids) -> np.ndarray:
    """NLL of ids[t+1] under logits[t] for t = 0..len(ids)-2, in float64."""
    targets = np.asarray(ids[1:], dtype=np.int64)
    out = np.empty(targets.size, dtype=np.float64)
    for a in range(0, targets.size, _ROWS):
        x = np.asarray(logits[a: a + _ROWS][: targets.size - a], dtype=np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
        out[a: a + x.shape[0]] = lse - x[np.arange(x.shape[0]), targets[a: a + x.shape[0]]]
    return out


def perplexity(
    model,
    text: str,
    window: int = 512,
    max_windows: Optional[int] = None,
    progress: bool = False,
    base=None,
) -> PerplexityResult:
    if not (_is_int(window) and window >= 2):
        raise Phi2Error(f"window must be an integer >= 2, got {window!r}")
    if max_windows is not None and not (_is_int(max_windows) and max_windows >= 1):
        raise Phi2Error(f"max_windows must be an integer >= 1 or None, got {max_windows!r}")
    if window > model.n_ctx:
        raise ContextFullError(f"window is {window} tokens; the context holds {model.n_ctx}")
    if base is not None and window > base.n_ctx:
        raise ContextFullError(f"window is {window} tokens; the base model's context holds {base.n_ctx}")
    ids = model.tokenizer.encode(text)
    if base is not None and base.tokenizer.encode(text) != ids:
        raise Phi2Error("the base model tokenizes the text differently; KL divergence needs the same tokens")
    n_windows = len(ids) // window
    if n_windows == 0:
        raise Phi2Error(f"text is {len(ids)} tokens; one window needs {window}")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)

    from tqdm import tqdm

    total, count, kl_total = 0.0, 0, 0.0
    with tqdm(total=n_windows, disable=not progress, unit="window", file=sys.stderr) as bar:
        for w in range(n_windows):
            chunk = ids[w * window: (w + 1) * window]
            model.reset()
            logits = model.eval(chunk, all_logits=True)
            nll = window_nll(logits, chunk)
            total += float(nll.sum())
            count += nll.size
            if base is not None:
                base.reset()
                kl_total += float(window_kl(base.eval(chunk, all_logits=True), logits, nll.size).sum())
            bar.set_postfix(ppl=f"{_exp(total / count):.4f}")
            bar.update(1)
    mean = total / count
    return PerplexityResult(ppl=_exp(mean), nll_mean=mean, n_scored=count, n_windows=n_windows,
                            kl_mean=kl_total / count if base is not None else None)


perplexity.__doc__ = ("Perplexity of `model` on `text`; with `base` (e.g. the F16 model) also the mean KL "
                      "divergence of `model`'s next-token distribution from `base`'s over the same positions.\n\n"
                      + PROTOCOL)
