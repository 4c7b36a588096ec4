"""Several prompts generated together: continuous batching over the model's KV-cache sequences.

Each engine call carries the next token of every sequence that is decoding plus a chunk of the
prompt of one or more sequences still prefilling; a sequence that finishes frees its slot for the
next prompt at once. A prompt's tokens and log-probs do not depend on the other prompts, because
every sampler sees only its own logits and history, and the engine computes each entry as it
would alone (see Model.forward_batch).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence

from .errors import SamplingError
from .generate import (STOP_CONTEXT, STOP_EOS, STOP_MAX_TOKENS, STOP_STRING, GenerationStats, _check_max_tokens,
                       _check_stop, _fit_context, prompt_ids, token_logprob)
from .sampling import Sampler, sampling_params

PREFILL_CHUNK = 256  # prompt tokens per engine call, over all prefilling sequences


@dataclass
class _Slot:
    index: int                      # the prompt's place in the input
    ids: List[int]                  # its prompt ids
    sampler: Sampler
    budget: int                     # tokens it may sample (max_tokens, or what the context leaves)
    stats: GenerationStats
    started: float
    fed: int = 0                    # prompt tokens already in the cache
    next_token: Optional[int] = None  # sampled, not yet in the cache
    history: List[int] = field(default_factory=list)
    first_logits: float = 0.0


def complete_batch(model, prompts: Sequence[str], max_tokens: int = 128, *, stop: Optional[Sequence[str]] = None,
                   **sampling: Any) -> list:
    """Continue every prompt, up to ``model.n_seq`` of them at a time; returns one
    :class:`phi2cpu.model.Completion` per prompt, in order. ``max_tokens``, ``stop`` and the
    sampling fields mean what they mean for :func:`phi2cpu.generate.generate`, and each prompt's
    result equals what ``Model.complete`` gives for it alone with the same settings (a ``seed``
    seeds every prompt's sampler alike). The caches of all the model's sequences are overwritten."""
    from .model import Completion

    if isinstance(prompts, str):
        raise SamplingError("a batch needs a list of prompts, not one str")
    params = sampling_params(**sampling)
    requested = _check_max_tokens(max_tokens)
    stops = _check_stop(list(stop) if stop is not None else None)
    all_ids = [prompt_ids(model, p) for p in prompts]
    budgets = [_fit_context(model, len(ids), requested) for ids in all_ids]  # ContextFullError before any work
    n_valid = min(model.tokenizer.n_vocab, model.config.n_vocab)
    results: List[Optional[Completion]] = [None] * len(all_ids)
    queue: Deque[int] = deque(range(len(all_ids)))
    free = list(range(model.n_seq))
    active: Dict[int, _Slot] = {}
    while queue or active:
        while queue and free:
            i, seq = queue.popleft(), free.pop(0)
            model.reset(seq)
            st = GenerationStats(prompt_tokens=len(all_ids[i]), prompt_evaluated=len(all_ids[i]),
                                 stop_reason=STOP_MAX_TOKENS if budgets[i] == requested else STOP_CONTEXT)
            active[seq] = _Slot(i, all_ids[i], Sampler(params, n_valid=n_valid), budgets[i], st,
                                time.perf_counter(), history=list(all_ids[i]))
        tokens, positions, seqs, wants = [], [], [], []
        for seq, s in active.items():  # decoding sequences first: one token each
            if s.next_token is not None:
                tokens.append(s.next_token)
                positions.append(len(s.history) - 1)
                seqs.append(seq)
                wants.append(True)
        room = PREFILL_CHUNK
        for seq, s in active.items():  # then prompt chunks, in admission order
            if s.fed == len(s.ids) or room == 0:
                continue
            take = min(room, len(s.ids) - s.fed)
            tokens += s.ids[s.fed:s.fed + take]
            positions += range(s.fed, s.fed + take)
            seqs += [seq] * take
            wants += [False] * (take - 1) + [s.fed + take == len(s.ids)]
            s.fed += take
            room -= take
        logits = model.forward_batch(tokens, positions, seqs, wants)
        rows = iter(logits)
        now = time.perf_counter()
        for seq, want in zip(seqs, wants):
            if not want:
                continue
            s = active[seq]
            if s.first_logits == 0.0:
                s.first_logits = now
                s.stats.prompt_seconds = now - s.started
            done = _step(model, s, next(rows), stops)
            if done:
                s.stats.gen_seconds = now - s.first_logits
                results[s.index] = _completion(model, s, stops, Completion)
                del active[seq]
                free.append(seq)
        free.sort()
    return results


def _step(model, s: _Slot, logits, stops: List[str]) -> bool:
    """Samples one token for s from its logits; True when s is finished."""
    tok = s.sampler.sample(logits, s.history)
    st = s.stats
    st.generated_tokens += 1
    s.next_token = None
    if tok == model.tokenizer.eos_id:
        st.stop_reason = STOP_EOS
        return True
    s.history.append(tok)
    st.token_ids.append(tok)
    st.token_logprobs.append(token_logprob(logits, tok))
    if stops and any(x in model.tokenizer.decode(st.token_ids) for x in stops):
        st.stop_reason = STOP_STRING
        return True
    if st.generated_tokens == s.budget:
        return True
    s.next_token = tok
    return False


def _completion(model, s: _Slot, stops: List[str], completion_type):
    text = model.tokenizer.decode(s.stats.token_ids)
    hits = [i for i in (text.find(x) for x in stops) if i >= 0]
    if hits:
        text = text[:min(hits)]
    st = s.stats
    return completion_type(text, list(st.token_ids), list(st.token_logprobs), st.finish_reason, st)
