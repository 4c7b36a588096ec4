"""Phi-2's byte-level BPE tokenizer (GPT-2 style), built from tokenizer.json or from GGUF vocab lists.

Text passed to `encode` must be valid Unicode: a str holding lone surrogates (for example bytes
that are not UTF-8, decoded with errors="surrogateescape") raises `Phi2Error` naming the position,
rather than being silently replaced.
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from .errors import ModelFileError, Phi2Error

EOS_TOKEN = "<|endoftext|>"

# GGUF token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

_PAD = re.compile(r"\[PAD(\d+)\]")


def _byte_level_table() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character map, as character -> byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_CHAR_TO_BYTE = _byte_level_table()


def check_text(text: str, what: str = "text") -> str:
    """Raise Phi2Error if `text` cannot be encoded as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        detail = f"undecodable byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF \
            else f"lone surrogate U+{ord(bad):04X}"
        raise Phi2Error(f"{what} is not valid UTF-8 ({detail} at character {e.start})") from None
    return text


class Tokenizer:
    """Encodes text to Phi-2 token ids and back. No BOS token is ever added (Phi-2 uses none)."""

    def __init__(self, hf: _HFTokenizer, source: str):
        if not isinstance(hf.decoder, decoders.ByteLevel):
            raise ModelFileError(f"{source}: only byte-level BPE tokenizers are supported")
        self._hf = hf
        self.source = source
        self.n_vocab: int = hf.get_vocab_size(with_added_tokens=True)
        eos = hf.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ModelFileError(f"{source}: tokenizer has no {EOS_TOKEN} token")
        self.eos_id: int = eos
        self._bytes_cache: dict[int, bytes] = {}
        self._max_token_bytes: Optional[int] = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> "Tokenizer":
        try:
            hf = _HFTokenizer.from_str(text)
        except Exception as e:  # the library raises plain Exception subclasses
            raise ModelFileError(f"{source}: cannot parse tokenizer: {e}") from None
        return cls(hf, source)

    @classmethod
    def from_dir(cls, hf_dir: Union[str, Path]) -> "Tokenizer":
        path = Path(hf_dir) / "tokenizer.json"
        if not path.is_file():
            raise ModelFileError(f"{path}: not found (a Hugging Face model folder needs tokenizer.json)")
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def from_gguf_vocab(
        cls,
        tokens: Sequence[str],
        merges: Iterable[str],
        token_types: Sequence[int],
        source: str = "GGUF vocab",
    ) -> "Tokenizer":
        """Rebuild the tokenizer from `tokenizer.ggml.tokens/merges/token_type`.

        Normal tokens are byte-level strings ("Ġthe"); control and user-defined tokens are stored
        as their plain text and become added tokens (control ones special). `[PADn]` entries that
        pad the vocab to the embedding size, and unused entries, are left out.
        """
        if len(tokens) != len(token_types):
            raise ModelFileError(f"{source}: {len(tokens)} tokens but {len(token_types)} token types")
        vocab: dict[str, int] = {}
        added: list[AddedToken] = []
        for i, (tok, typ) in enumerate(zip(tokens, token_types)):
            pad = _PAD.fullmatch(tok)
            if typ == TOKEN_UNUSED or (pad and int(pad.group(1)) == i):
                continue
            if tok in vocab:
                raise ModelFileError(f"{source}: token {tok!r} appears twice (ids {vocab[tok]} and {i})")
            # Added tokens also go in the BPE vocab so they keep their ids; BPE never produces
            # them itself since they are not byte-level strings reachable by merges.
            vocab[tok] = i
            if typ == TOKEN_CONTROL:
                added.append(AddedToken(tok, special=True, normalized=False))
            elif typ == TOKEN_USER_DEFINED:
                added.append(AddedToken(tok, special=False, normalized=False))
        pairs = []
        for n, m in enumerate(merges):
            parts = m.split(" ")
            if len(parts) != 2:
                raise ModelFileError(f"{source}: merge {n} is malformed: {m!r}")
            pairs.append((parts[0], parts[1]))
        if not pairs:
            raise ModelFileError(f"{source}: the vocab has no BPE merges")
        try:
            hf = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        except Exception as e:
            raise ModelFileError(f"{source}: invalid BPE vocab/merges: {e}") from None
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        hf.add_tokens([t for t in added if not t.special])
        hf.add_special_tokens([t for t in added if t.special])
        return cls(hf, source)

    # -- use ----------------------------------------------------------------------------------

    def encode(self, text: str, release_gil: bool = False) -> list[int]:
        """Token ids of `text`. With `release_gil`, other Python threads run while it tokenizes
        (a server's event loop stays responsive during a long prompt); the ids are the same."""
        check_text(text)
        if release_gil:  # the library's single-text encode holds the GIL; its batch call does not
            return self._hf.encode_batch([text], add_special_tokens=False)[0].ids
        return self._hf.encode(text, add_special_tokens=False).ids

    @property
    def max_token_bytes(self) -> int:
        """The most bytes one token stands for: a text of B UTF-8 bytes has at least
        B / max_token_bytes tokens."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(len(self.token_bytes(i)) for i in range(self.n_vocab))
        return self._max_token_bytes

    def limit_word_cache(self, words: int) -> None:
        """Keep at most `words` tokenized words cached. The library's default (10,000 words) holds
        memory for the life of the process after prompts full of long distinct words."""
        resize = getattr(self._hf.model, "_resize_cache", None)
        if resize is not None:
            resize(words)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD."""
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a multi-byte character)."""
        b = self._bytes_cache.get(token_id)
        if b is None:
            tok = self._hf.id_to_token(token_id)
            if tok is None:
                b = b""
            elif any(c not in _CHAR_TO_BYTE for c in tok):
                b = tok.encode("utf-8")  # the byte-level decoder's fallback (e.g. "\t\t" tokens)
            else:
                b = bytes(_CHAR_TO_BYTE[c] for c in tok)
            self._bytes_cache[token_id] = b
        return b

    def to_json(self) -> str:
        return self._hf.to_str()

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, source={self.source!r})"


class StreamDecoder:
    """Turns a stream of token ids into text pieces without splitting UTF-8 characters.

    Bytes of an incomplete character are held back until it completes; invalid sequences become
    U+FFFD exactly as in `Tokenizer.decode`, so the concatenated pieces equal decode(all ids).
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
