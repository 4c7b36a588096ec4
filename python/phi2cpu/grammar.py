"""Constrained generation: token masks that keep the output inside a grammar.

A :class:`Constraint` is a JSON schema, "any JSON object", or a llama.cpp GBNF grammar, compiled by
llguidance (the library llama.cpp uses for the same job). Before each token is drawn,
:class:`TokenMatcher` computes which of the vocabulary's ids can continue a valid output; the
others get a logit of -inf, so sampling settings only choose among valid tokens. End-of-text is
allowed only once the output is complete, and generation ends by itself once the grammar admits
no further token (the closing brace of a schema's object, say). A limit on tokens can still cut an
output short: the caller sees that as finish reason "length", never as a complete output.

JSON is written compactly in Python's `json.dumps` style (", " and ": ", no newlines), so that a
model cannot spend its token budget on whitespace; a schema's ``x-guidance`` key can change that.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from .errors import GrammarError

# llguidance's JSON options applied before a schema's own "x-guidance" settings
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KINDS = ("json_schema", "json_object", "gbnf")

_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # Tokenizer -> llguidance tables


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GrammarError("structured output (a JSON schema or grammar) needs llguidance: "
                           "pip install llguidance") from None
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """What the output must match. ``kind`` is one of KINDS; ``source`` is the schema (as JSON
    text) or the grammar text, as given; ``grammar`` is llguidance's compiled form."""

    kind: str
    source: str
    grammar: str

    def matcher(self, tokenizer, n_vocab: int) -> "TokenMatcher":
        return TokenMatcher(self, tokenizer, n_vocab)


def _checked(kind: str, source: str, grammar: str) -> Constraint:
    llg = _llguidance()
    failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        what = {"json_schema": "JSON schema", "gbnf": "grammar"}.get(kind, kind)
        raise GrammarError(f"invalid {what}: {messages[0] if messages else 'rejected'}")
    return Constraint(kind, source, grammar)


def json_schema(schema: Union[dict, str, bool]) -> Constraint:
    """Output that is JSON valid against `schema` (a dict, its JSON text, or true/false)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except (json.JSONDecodeError, RecursionError) as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    if schema is False:
        raise GrammarError("the JSON schema false admits no output")
    text = json.dumps(schema)
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(text, defaults=JSON_DEFAULTS)
    except ValueError as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None
    return _checked("json_schema", text, grammar)


def json_object() -> Constraint:
    """Output that is one JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
    c = json_schema({"type": "object"})
    return Constraint("json_object", c.source, c.grammar)


def gbnf(text: str) -> Constraint:
    """Output in the language of a llama.cpp GBNF grammar (its ``root`` rule)."""
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("the grammar is empty")
    llg = _llguidance()
    try:
        grammar = llg.grammar_from("gbnf", text)
    except ValueError as e:
        raise GrammarError(f"invalid grammar: {e}") from None
    return _checked("gbnf", text, grammar)


def constraint_from(json_schema_: Any = None, grammar: Optional[str] = None) -> Optional[Constraint]:
    """The constraint for generate()'s ``json_schema`` / ``grammar`` arguments (at most one)."""
    if json_schema_ is not None and grammar is not None:
        raise GrammarError("give json_schema or grammar, not both")
    for given in (json_schema_, grammar):
        if isinstance(given, Constraint):
            return given
    if json_schema_ is not None:
        return json_schema(json_schema_)
    if grammar is not None:
        return gbnf(grammar)
    return None


def _llg_tokenizer(tokenizer, n_vocab: int):
    """llguidance's tables for `tokenizer` (about half a second to build; kept per tokenizer)."""
    key = (n_vocab, tokenizer.eos_id)
    cached = _tokenizers.get(tokenizer)
    if cached is None or cached[0] != key:
        llg = _llguidance()
        cached = (key, llg.LLTokenizer(tokenizer.to_json(), n_vocab=n_vocab, eos_token=tokenizer.eos_id))
        _tokenizers[tokenizer] = cached
    return cached[1]


class TokenMatcher:
    """One generation's progress through a constraint: which ids may come next. The first mask is
    computed at once, so a grammar that admits no output at all fails here, before any model work."""

    def __init__(self, constraint: Constraint, tokenizer, n_vocab: int):
        llg = _llguidance()
        self.constraint = constraint
        self.n_vocab = n_vocab
        self._m = llg.LLMatcher(_llg_tokenizer(tokenizer, n_vocab), constraint.grammar, log_level=0)
        self._check("cannot use")
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._next: Optional[np.ndarray] = None
        self._next = self.allowed()
        if not self._next.any():
            raise GrammarError(f"the {constraint.kind} constraint admits no output")

    def _check(self, what: str) -> None:
        if self._m.is_error():  # llguidance's first line says why; a parser state dump follows
            detail = (self._m.get_error().strip().splitlines() or ["failed"])[0]
            raise GrammarError(f"{what} the {self.constraint.kind} constraint: {detail}")

    def allowed(self) -> np.ndarray:
        """Boolean (n_vocab,): the ids that keep the output valid (end-of-text once it is complete)."""
        if self._next is not None:
            return self._next
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._check("cannot follow")
        return np.unpackbits(self._bits.view(np.uint8), count=self.n_vocab, bitorder="little").view(bool)

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of `logits` with every id the constraint forbids at -inf."""
        return np.where(self.allowed(), np.asarray(logits, dtype=np.float32).reshape(-1)[: self.n_vocab],
                        np.float32(-np.inf))

    def consume(self, token: int) -> None:
        self._next = None
        if not self._m.consume_token(int(token)):
            self._check(f"token {token} breaks")
            raise GrammarError(f"token {token} breaks the {self.constraint.kind} constraint")

    def rollback(self, n: int) -> None:
        """Undo the last `n` consumed tokens (a speculative draft the model did not keep)."""
        if n:
            self._next = None
            if not self._m.rollback(int(n)):
                self._check("cannot roll back")
                raise GrammarError(f"cannot roll back {n} tokens of the {self.constraint.kind} constraint")

    @property
    def done(self) -> bool:
        """True once no token but end-of-text can follow: the output is complete."""
        return self._m.is_stopped()

    @property
    def complete(self) -> bool:
        """True when the output so far is a complete match (end-of-text would be allowed)."""
        return self._m.is_accepting()
