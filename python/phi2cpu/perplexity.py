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
) -> PerplexityResult:
    if not (_is_int(window) and window >= 2):
        raise Phi2Error(f"window must be an integer >= 2, got {window!r}")
    if max_windows is not None and not (_is_int(max_windows) and max_windows >= 1):
        raise Phi2Error(f"max_windows must be an integer >= 1 or None, got {max_windows!r}")
    if window > model.n_ctx:
        raise ContextFullError(f"window is {window} tokens; the context holds {model.n_ctx}")
    ids = model.tokenizer.encode(text)
    n_windows = len(ids) // window
    if n_windows == 0:
        raise Phi2Error(f"text is {len(ids)} tokens; one window needs {window}")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)

    from tqdm import tqdm

    total, count = 0.0, 0
    with tqdm(total=n_windows, disable=not progress, unit="window", file=sys.stderr) as bar:
        for w in range(n_windows):
            chunk = ids[w * window: (w + 1) * window]
            model.reset()
            logits = model.eval(chunk, all_logits=True)
            nll = window_nll(logits, chunk)
            total += float(nll.sum())
            count += nll.size
            bar.set_postfix(ppl=f"{_exp(total / count):.4f}")
            bar.update(1)
    mean = total / count
    return PerplexityResult(ppl=_exp(mean), nll_mean=mean, n_scored=count, n_windows=n_windows)


perplexity.__doc__ = "Perplexity of `model` on `text`.\n\n" + PROTOCOL
