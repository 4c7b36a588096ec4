"""Correctness before speed, and quality after quantization.

- validate(): greedy tokens of each engine on phi2-mini-code (real trained weights) against its
  counterpart: phi2cpu vs llama.cpp on the same Q8_0 file, phi2cpu F16 vs HF fp32. A pair whose
  tokens part ways where neither engine had a near-tie is a MISMATCH.
- perplexity(): phi2-mini-code on the eval text, every engine fed the same token ids, scored by
  phi2cpu.perplexity's protocol (non-overlapping windows, every position after the first).
- kl_divergence(): the full-size random model, each format's next-token distribution against
  phi2cpu's F32 GGUF of the same checkpoint (the F32 file is the reference: the NumPy oracle is
  far too slow for hundreds of positions at 2.7B parameters).
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .engines import HF_BF16, HF_FP32, LLAMA_CPP, PHI2CPU, format_label
from .worker import Worker, WorkerError

VALIDATION_PROMPT = (
    "import os\nimport json\n\n\ndef load_settings(path):\n"
    '    """Read the JSON settings file at path and return a dict."""\n'
)
NEAR_TIE = 0.05  # logit units: a top-2 margin this small may flip under any rounding
# A peer's own 4-bit or 8-bit build is not expected to continue a prompt exactly as phi2cpu F16
# does, but teacher-forced, its next token should mostly agree; a build that computes another model
# (a wrong rotary width, a broken export) does not.
PEER_MIN_TOP1 = 0.75
PEER_POSITIONS = 32
PEER_TEXT_TOKENS = 256


@dataclass
class Agreement:
    reference: str            # "phi2cpu Q8_0"
    other: str                # "llama.cpp Q8_0"
    status: str = "pending"   # OK | near-tie | MISMATCH | skipped | failed
    reason: str = ""
    n_tokens: int = 0
    n_agree: int = 0          # leading greedy tokens that agree
    tokenization_equal: Optional[bool] = None
    top5_equal: Optional[bool] = None
    top5_max_abs_diff: Optional[float] = None
    margin_at_split: Optional[float] = None
    text_reference: str = ""
    text_other: str = ""


def leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def judge(ref: dict, other: dict, n: int) -> tuple[str, int, Optional[float]]:
    """OK when all n greedy tokens agree; near-tie when they part at a step where either engine's
    top-2 margin was under NEAR_TIE; MISMATCH otherwise."""
    k = leading_agreement(ref["tokens"], other["tokens"])
    if k >= n:
        return "OK", k, None
    margin = min(m[k] for m in (ref["margins"], other["margins"]) if m is not None)
    return ("near-tie" if margin < NEAR_TIE else "MISMATCH"), k, margin


def compare_greedy(pair: Agreement, ref: dict, other: dict, n: int) -> None:
    pair.n_tokens = n
    pair.status, pair.n_agree, pair.margin_at_split = judge(ref, other, n)
    if ref["top"] is None or other["top"] is None:
        return  # an engine that gives no logits
    pair.top5_equal = ref["top"]["ids"] == other["top"]["ids"]
    shared = set(ref["top"]["ids"]) & set(other["top"]["ids"])
    a = dict(zip(ref["top"]["ids"], ref["top"]["logits"]))
    b = dict(zip(other["top"]["ids"], other["top"]["logits"]))
    pair.top5_max_abs_diff = max((abs(a[i] - b[i]) for i in shared), default=None)


@dataclass
class PeerCheck:
    engine: str
    format: str
    status: str = "pending"   # ok | refused | skipped | failed
    reason: str = ""
    top1_agree: Optional[float] = None  # teacher-forced next tokens equal to the reference's
    n_positions: int = 0


def check_ends(n_ids: int, n: int = PEER_POSITIONS) -> list[int]:
    """n prefix lengths spread over the text, from 8 tokens up to all of it."""
    return sorted({int(x) for x in np.linspace(8, n_ids, n)})


def judge_peer(check: PeerCheck, ref: list[int], got: list[int]) -> None:
    check.n_positions = len(ref)
    check.top1_agree = float(np.mean(np.asarray(ref) == np.asarray(got)))
    if check.top1_agree >= PEER_MIN_TOP1:
        check.status = "ok"
    else:
        check.status = "refused"
        check.reason = (f"failed its check on phi2-mini-code: its next token agrees with phi2cpu F16's at "
                        f"{check.top1_agree:.0%} of {check.n_positions} positions (at least {PEER_MIN_TOP1:.0%} "
                        f"needed): the build computes another model")


def check_peers(checks: list[PeerCheck], ref_path: str, paths: dict[tuple[str, str], str], ids: list[int],
                threads: int, log: Callable[[str], None], log_path=None) -> None:
    """Teacher-forced next tokens of each peer build against phi2cpu F16 on the same ids."""
    ends = check_ends(len(ids))
    with Worker(PHI2CPU, threads, log_path) as w:
        w.call("load", path=ref_path, threads=threads, n_ctx=len(ids) + 8)
        ref = w.call("next", ids=ids, ends=ends)["tokens"]
    for c in checks:
        if c.status != "pending":
            continue
        try:
            with Worker(c.engine, threads, log_path) as w:
                w.call("load", path=paths[(c.engine, c.format)], threads=threads, n_ctx=len(ids) + 8)
                got = w.call("next", ids=ids, ends=ends)["tokens"]
        except WorkerError as e:
            c.status, c.reason = "failed", f"its check on phi2-mini-code failed: {e}"
            log(f"  {c.engine} {c.format}: {e}")
            continue
        judge_peer(c, ref, got)
        log(f"  {c.engine} {c.format}: next token agrees with phi2cpu F16 at {c.top1_agree:.0%} of "
            f"{c.n_positions} positions: {c.status}")


def _label(engine: str, fmt: str) -> str:
    return format_label(engine, fmt) if engine in (HF_FP32, HF_BF16) else f"{engine} {fmt}"


def _greedy(engine: str, path: str, threads: int, prompt_ids: list[int], n: int, log_path,
            text: Optional[str] = None) -> dict:
    with Worker(engine, threads, log_path) as w:
        w.call("load", path=path, threads=threads, n_ctx=len(prompt_ids) + n + 8)
        out = w.call("greedy", ids=prompt_ids, n=n)
        if text is not None:
            out["tokenized"] = w.call("tokenize", text=text)["ids"]
        return out


def validate(pairs: list[tuple[str, str, str, str]], paths: dict[tuple[str, str], str], prompt_ids: list[int],
             threads: int, n: int, decode: Callable[[list[int]], str], log: Callable[[str], None],
             log_path=None, skipped: Optional[dict[str, str]] = None) -> list[Agreement]:
    """pairs: (ref engine, ref format, other engine, other format)."""
    results = []
    cache: dict[tuple[str, str], dict] = {}
    for ref_e, ref_f, oth_e, oth_f in pairs:
        pair = Agreement(_label(ref_e, ref_f), _label(oth_e, oth_f))
        results.append(pair)
        if skipped and oth_e in skipped:
            pair.status, pair.reason = "skipped", skipped[oth_e]
            continue
        try:
            for key in ((ref_e, ref_f), (oth_e, oth_f)):
                if key not in cache:
                    cache[key] = _greedy(key[0], paths[key], threads, prompt_ids, n, log_path, VALIDATION_PROMPT)
        except WorkerError as e:
            pair.status, pair.reason = "failed", str(e)
            log(f"  {pair.other}: {e}")
            continue
        ref, other = cache[(ref_e, ref_f)], cache[(oth_e, oth_f)]
        compare_greedy(pair, ref, other, n)
        pair.tokenization_equal = ref["tokenized"] == other["tokenized"]
        pair.text_reference, pair.text_other = decode(ref["tokens"]), decode(other["tokens"])
        log(f"  {pair.reference} vs {pair.other}: {pair.status}, {pair.n_agree}/{n} greedy tokens agree, "
            f"tokenization {'equal' if pair.tokenization_equal else 'DIFFERS'}")
    return results


# ----------------------------------------------------------------------------- perplexity

@dataclass
class PplRow:
    engine: str
    format: str
    status: str = "pending"
    reason: str = ""
    ppl: Optional[float] = None
    n_windows: int = 0
    n_scored: int = 0
    seconds: Optional[float] = None


def perplexity(rows: list[PplRow], paths: dict[tuple[str, str], str], ids: list[int], window: int,
               max_windows: Optional[int], threads: int, log: Callable[[str], None], log_path=None) -> None:
    for row in rows:
        if row.status == "skipped":
            continue
        t0 = time.perf_counter()
        try:
            with Worker(row.engine, threads, log_path) as w:
                w.call("load", path=paths[(row.engine, row.format)], threads=threads, n_ctx=window,
                       all_logits=True)
                out = w.call("nll", ids=ids, window=window, max_windows=max_windows)
        except WorkerError as e:
            row.status, row.reason = "failed", str(e)
            log(f"  ppl {row.engine} {row.format}: {e}")
            continue
        row.seconds = time.perf_counter() - t0
        row.n_windows, row.n_scored = out["n_windows"], out["n_scored"]
        row.ppl = math.exp(out["nll_sum"] / out["n_scored"])
        row.status = "ok"
        log(f"  ppl {row.engine:9s} {row.format:5s} {row.ppl:8.4f} ({row.n_windows} windows, {row.seconds:.0f} s)")


# ----------------------------------------------------------------------------- KL divergence

@dataclass
class KlRow:
    engine: str
    format: str
    status: str = "pending"
    reason: str = ""
    mean_kl: Optional[float] = None
    max_kl: Optional[float] = None
    top1_agree: Optional[float] = None
    n_positions: int = 0


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_rows(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) per position, in nats, over every logit (float64)."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def _logits(engine: str, path: str, ids: list[int], threads: int, out: Path, log_path) -> np.ndarray:
    with Worker(engine, threads, log_path) as w:
        w.call("load", path=path, threads=threads, n_ctx=len(ids), all_logits=engine == LLAMA_CPP)
        w.call("logits", ids=ids, out=str(out))
    return np.load(out, mmap_mode="r")


def kl_divergence(rows: list[KlRow], ref_path: str, paths: dict[tuple[str, str], str], ids: list[int],
                  threads: int, log: Callable[[str], None], log_path=None) -> None:
    with tempfile.TemporaryDirectory(prefix="phi2cpu-bench-") as tmp:
        ref = _logits(PHI2CPU, ref_path, ids, threads, Path(tmp) / "ref.npy", log_path)
        for row in rows:
            if row.status == "skipped":
                continue
            try:
                got = _logits(row.engine, paths[(row.engine, row.format)], ids, threads,
                              Path(tmp) / f"{row.engine}-{row.format}.npy", log_path)
            except WorkerError as e:
                row.status, row.reason = "failed", str(e)
                log(f"  KL {row.engine} {row.format}: {e}")
                continue
            kl = np.concatenate([kl_rows(ref[a:a + 64], got[a:a + 64]) for a in range(0, len(ids), 64)])
            row.mean_kl, row.max_kl = float(kl.mean()), float(kl.max())
            row.top1_agree = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
            row.n_positions = len(ids)
            row.status = "ok"
            log(f"  KL {row.engine:9s} {row.format:5s} mean {row.mean_kl:.3e}  top-1 agree {row.top1_agree:.1%}")
