"""Token-mask cost of the constrained-decoding libraries on Phi-2's 51,200-entry vocabulary.

For each library that is installed (llguidance, xgrammar, outlines-core) and each grammar (a JSON
schema, any JSON value, a GBNF grammar), it builds the tokenizer tables and compiles the grammar,
then walks the Phi-2 tokens of a document the grammar accepts: at every step it computes the mask
of allowed next tokens (a 1600-word int32 bitmask over 51,200 ids), checks that the document's
next token is allowed and that a token breaking the grammar is not, and consumes the token.
A library that rejects a step is reported as incorrect, not timed.

    python benchmarks/grammar_masks.py TOKENIZER_DIR [--repeat 5]

TOKENIZER_DIR holds Phi-2's tokenizer.json (and tokenizer_config.json for xgrammar).
Reports the median of the per-token times over the repeats (min-max), in microseconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

N_VOCAB = 51200            # Phi-2's embedding rows (the tokenizer has 50295 ids)
WORDS = (N_VOCAB + 31) // 32

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}
DOC = ('{"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"], '
       '"address": {"city": "London", "zip": "W1"}}')
ANY_DOC = '{"items": [1, 2.5, {"ok": true, "none": null}], "text": "a \\"quoted\\" word"}'
GBNF = r'''
root   ::= "answer: " ( yes | no ) " because " reason "."
yes    ::= "yes"
no     ::= "no"
reason ::= [a-z ]+
'''
GBNF_DOC = "answer: yes because the sky is blue."
# a token that no step of these documents may take: "}" is wrong at the start of each of them
BAD_START = "}"


def allowed(mask: np.ndarray, tok: int) -> bool:
    return bool((int(mask[tok // 32]) >> (tok % 32)) & 1)


def walk(steps, tokens, eos, mask) -> list:
    """Per-token seconds of compute-mask + consume over `tokens`; `steps` = (fill, consume)."""
    fill, consume = steps
    times = []
    for tok in tokens:
        t = time.perf_counter()
        fill(mask)
        ok = allowed(mask, tok)
        consume(tok)
        times.append(time.perf_counter() - t)
        if not ok:
            raise AssertionError(f"token {tok} of the document was masked out")
    fill(mask)
    if not allowed(mask, eos):
        raise AssertionError("end-of-text is not allowed after the complete document")
    return times


def llguidance_case(tok_json: str, eos: int):
    import llguidance as llg
    from llguidance.numpy import fill_next_token_bitmask

    t = time.perf_counter()
    tok = llg.LLTokenizer(tok_json, n_vocab=N_VOCAB, eos_token=eos)
    setup = time.perf_counter() - t

    def make(kind: str, text: str):
        t = time.perf_counter()
        grammar = llg.grammar_from(kind, text)
        m = llg.LLMatcher(tok, grammar, log_level=0)
        if m.is_error():
            raise AssertionError(m.get_error())
        compile_s = time.perf_counter() - t

        def fill(mask):
            fill_next_token_bitmask(m, mask.reshape(1, -1))

        def consume(t_):
            if not m.consume_token(t_):
                raise AssertionError(m.get_error())
        return compile_s, (fill, consume)
    return "llguidance " + llg.__version__, setup, {
        "schema": lambda: make("json_schema", json.dumps(SCHEMA)),
        "any JSON": lambda: make("json_schema", '{"type": "object"}'),
        "GBNF": lambda: make("gbnf", GBNF),
    }


def xgrammar_case(tok_dir: Path, eos: int):
    import torch
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    t = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=N_VOCAB, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    setup = time.perf_counter() - t

    def make(build):
        t = time.perf_counter()
        m = xgr.GrammarMatcher(build())
        compile_s = time.perf_counter() - t
        bits = torch.zeros((1, WORDS), dtype=torch.int32)

        def fill(mask):
            m.fill_next_token_bitmask(bits)
            mask[:] = bits.numpy()[0]

        def consume(t_):
            if not m.accept_token(t_):
                raise AssertionError(f"xgrammar refused token {t_}")
        return compile_s, (fill, consume)
    return "xgrammar " + xgr.__version__ if hasattr(xgr, "__version__") else "xgrammar", setup, {
        "schema": lambda: make(lambda: compiler.compile_json_schema(json.dumps(SCHEMA))),
        "any JSON": lambda: make(lambda: compiler.compile_builtin_json_grammar()),
        "GBNF": lambda: make(lambda: compiler.compile_grammar(GBNF)),
    }


def outlines_case(tokenizer, eos: int):
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema

    t = time.perf_counter()
    vocab: dict = {}
    for i in range(tokenizer.n_vocab):
        if i != eos:
            b = tokenizer.token_bytes(i)
            if b:
                vocab.setdefault(b, []).append(i)
    voc = oc.Vocabulary(eos, vocab)
    setup = time.perf_counter() - t

    def make():
        t = time.perf_counter()
        guide = oc.Guide(oc.Index(build_regex_from_schema(json.dumps(SCHEMA)), voc))
        compile_s = time.perf_counter() - t

        def fill(mask):
            guide.write_mask_into(mask.ctypes.data, mask.size, 4)

        def consume(t_):
            guide.advance(t_)
        return compile_s, (fill, consume)
    # outlines-core compiles regular expressions only: no grammar for recursive JSON or GBNF
    import importlib.metadata as md
    return "outlines-core " + md.version("outlines-core"), setup, {"schema": make}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tokenizer_dir", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from phi2cpu.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(args.tokenizer_dir)
    eos = tokenizer.eos_id
    docs = {"schema": DOC, "any JSON": ANY_DOC, "GBNF": GBNF_DOC}
    tok_json = (args.tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")
    bad = tokenizer.encode(BAD_START)[0]
    makers = []
    for name, fn in (("llguidance", lambda: llguidance_case(tok_json, eos)),
                     ("xgrammar", lambda: xgrammar_case(args.tokenizer_dir, eos)),
                     ("outlines-core", lambda: outlines_case(tokenizer, eos))):
        try:
            makers.append(fn())
        except ImportError as e:
            print(f"{name}: not installed ({e})")
    rows = ["| library | grammar | tokenizer setup | compile | mask+consume per token, median (min-max) |",
            "|---|---|---|---|---|"]
    for label, setup, cases in makers:
        for gname, make in cases.items():
            tokens = tokenizer.encode(docs[gname])
            medians, compiles = [], []
            try:
                for _ in range(args.repeat):
                    compile_s, steps = make()
                    compiles.append(compile_s)
                    mask = np.zeros(WORDS, dtype=np.int32)
                    steps[0](mask)
                    if allowed(mask, bad):
                        raise AssertionError(f"{BAD_START!r} allowed at the start")
                    times = walk(steps, tokens, eos, mask)
                    medians.append(statistics.median(times))
            except AssertionError as e:
                rows.append(f"| {label} | {gname} | | | incorrect: {e} |")
                continue
            us = [x * 1e6 for x in medians]
            rows.append(f"| {label} | {gname} ({len(tokens)} tokens) | {setup * 1000:.0f} ms | "
                        f"{statistics.median(compiles) * 1000:.1f} ms | {statistics.median(us):.1f} us "
                        f"({min(us):.1f}-{max(us):.1f}) |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
