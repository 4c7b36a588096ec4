import json
import random

import pytest

from fakes import TINY_EOS, TINY_N_VOCAB, tiny_gguf_vocab, tiny_tokenizer
from phi2cpu.errors import ModelFileError, Phi2Error
from phi2cpu.tokenizer import StreamDecoder, Tokenizer

CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo(Bar):\n\tdef __init__(self):\n\t\tself.x = {'a': [1, 2.5e-3]}  # comment\n",
    "Instruct: Explain gravity.\nOutput:",
    "Héllo wörld — naïve café, Ærøskøbing, Ελληνικά, русский текст, עברית, العربية",
    "你好，世界！日本語のテキスト。한국어 텍스트.",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 flags and ZWJ sequences",
    "runs of spaces:" + " " * 40 + "end\n" + "\t" * 12 + "tabs\n\n\n\n  \r\n",
    "a<|endoftext|>b <|endoftext|><|endoftext|>\n<|endoftext|>",
    "",
    " leading space",
    "trailing spaces   ",
    "\u200b\ufeff\x00\x7f control chars \u2028 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "it's we've they're I'm you'll he'd 'quoted' \"double\" '''triple'''",
    "digits 0 12 345 6789 3.14159e-10 0xDEADBEEF 1_000_000 ½ ² ①",
    "e\u0301 combining, a\u00a0b nbsp, c\u3000d ideographic space, \u2009thin\u2009",
    "line\r\nbreaks\r\n\r\n\n\n\n\n\n\n\n\nend",
    "    async def f(x: list[int] = []) -> dict[str, int]:\n        return {k: v for k, v in x if k != '_'}\n",
    "<|endoftext|>text<|endoftext|> <|endoftext|>\t<|endoftext|>",
]


def gguf_vocab_from_json(tokenizer_json: str, n_rows: int = 51200, pad_type: int = 4):
    """The vocab lists a GGUF file holds: tokens in id order (added tokens as their plain text),
    padded with [PADi]; types 1 normal / 3 control / 4 user-defined; merges as "a b"."""
    d = json.loads(tokenizer_json)
    tokens, types = [None] * n_rows, [pad_type] * n_rows
    for tok, i in d["model"]["vocab"].items():
        tokens[i], types[i] = tok, 1
    for t in d["added_tokens"]:
        tokens[t["id"]], types[t["id"]] = t["content"], (3 if t["special"] else 4)
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    return tokens, merges, types


@pytest.fixture(scope="module")
def phi2_json(phi2_dir):
    return (phi2_dir / "tokenizer.json").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reference(phi2_json):
    from tokenizers import Tokenizer as HF

    return HF.from_str(phi2_json)


@pytest.fixture(scope="module", params=["json", "gguf_pad_user", "gguf_pad_unused"])
def tok(request, phi2_json):
    if request.param == "json":
        return Tokenizer.from_json(phi2_json)
    pad_type = 4 if request.param == "gguf_pad_user" else 5
    return Tokenizer.from_gguf_vocab(*gguf_vocab_from_json(phi2_json, pad_type=pad_type))


def test_sizes_and_eos(tok):
    assert tok.n_vocab == 50295
    assert tok.eos_id == 50256


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_tokenizer_json(tok, reference, text):
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text


def test_ids_match_on_eval_text(tok, reference, eval_text):
    text = eval_text[:200_000]
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_special_and_whitespace_ids(tok):
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode("x" + " " * 31) == tok.encode("x") + [50257]
    assert tok.encode("\t\t") == [50294]
    for i in range(50257, 50295):
        text = tok.decode([i])
        assert text and set(text) <= {" ", "\t"}
        assert tok.encode(text) == [i]


def test_decode_matches_reference_on_random_ids(tok, reference):
    rng = random.Random(1)
    ids = [rng.randrange(50295) for _ in range(3000)]
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=False)


def test_from_dir(phi2_dir):
    t = Tokenizer.from_dir(phi2_dir)
    assert t.encode("hello world") == [31373, 995]


def test_surrogates_raise_clear_error(tok):
    bad = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")
    with pytest.raises(Phi2Error, match="not valid UTF-8.*0xe9"):
        tok.encode(bad)


# -- StreamDecoder ------------------------------------------------------------------------------

def stream_pieces(tok, ids):
    dec = StreamDecoder(tok)
    return [dec.push(i) for i in ids] + [dec.flush()]


@pytest.mark.parametrize("text", CORPUS)
def test_stream_concatenates_to_decode(tok, text):
    ids = tok.encode(text)
    pieces = stream_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_holds_split_characters(tok):
    ids = tok.encode("😀")
    assert len(ids) == 2  # one character over two byte-level tokens
    dec = StreamDecoder(tok)
    assert dec.push(ids[0]) == ""
    assert dec.push(ids[1]) == "😀"
    assert dec.flush() == ""


def test_stream_whitespace_tokens(tok):
    ids = [50280, 50257, 50294, 50256]
    assert stream_pieces(tok, ids)[:4] == [" " * 8, " " * 31, "\t\t", "<|endoftext|>"]


def byte_token_ids(tok):
    return {tok.token_bytes(i): i for i in range(tok.n_vocab) if len(tok.token_bytes(i)) == 1}


def test_stream_invalid_bytes_match_decode(tok):
    b = byte_token_ids(tok)
    sequences = [
        [b[b"\x80"]],                               # lone continuation byte
        [b[b"\xe4"], b[b"a"]],                      # truncated 3-byte character, then ASCII
        [b[b"\xf0"], b[b"\x9f"], b[b"\x98"]],       # incomplete at the end (flush)
        [b[b"\xff"], b[b"\xc3"], b[b"\xa9"]],       # invalid byte, then a valid "é"
    ]
    for ids in sequences:
        assert "".join(stream_pieces(tok, ids)) == tok.decode(ids)


def test_stream_random_ids_match_decode(tok):
    rng = random.Random(2)
    ids = [rng.randrange(50295) for _ in range(5000)]
    assert "".join(stream_pieces(tok, ids)) == tok.decode(ids)


# -- the tiny tokenizer (no assets needed) and malformed input ---------------------------------

def test_tiny_tokenizer_from_gguf_vocab():
    t = tiny_tokenizer()
    assert t.n_vocab == TINY_N_VOCAB and t.eos_id == TINY_EOS
    assert t.encode("hello world") == [257, 259, 260, 261, ord("l"), ord("d")]
    assert t.encode("a    b<|endoftext|>") == [ord("a"), 262, ord("b"), TINY_EOS]
    assert t.decode(t.encode("é")) == "é"


def test_gguf_vocab_errors():
    tokens, merges, types = tiny_gguf_vocab()
    with pytest.raises(ModelFileError, match="token types"):
        Tokenizer.from_gguf_vocab(tokens, merges, types[:-1])
    with pytest.raises(ModelFileError, match="merge"):
        Tokenizer.from_gguf_vocab(tokens, merges + ["abc"], types)
    with pytest.raises(ModelFileError, match="no BPE merges"):
        Tokenizer.from_gguf_vocab(tokens, [], types)
    with pytest.raises(ModelFileError, match="twice"):
        Tokenizer.from_gguf_vocab(tokens[:-1] + ["he"], merges, types)


def test_from_json_errors(tmp_path):
    with pytest.raises(ModelFileError):
        Tokenizer.from_json("{not json")
    with pytest.raises(ModelFileError, match="not found"):
        Tokenizer.from_dir(tmp_path)


def test_vocab_read_back_from_a_gguf_file(tmp_path, phi2_json, reference, eval_text):
    """The lists as a llama.cpp-written file holds them (tokenizer.ggml.* only, padding UNUSED),
    through our own GGUF header reader: ids identical to tokenizer.json's on the corpus and the
    eval text."""
    import gguf

    from phi2cpu.gguf_io import _parse_header

    tokens, merges, types = gguf_vocab_from_json(phi2_json, pad_type=5)
    w = gguf.GGUFWriter(tmp_path / "vocab.gguf", "phi2")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(50256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    kv, _, _ = _parse_header(memoryview((tmp_path / "vocab.gguf").read_bytes()))
    assert kv["tokenizer.ggml.model"] == "gpt2"
    tok = Tokenizer.from_gguf_vocab(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.merges"],
                                    kv["tokenizer.ggml.token_type"])
    for text in CORPUS + [eval_text[:300_000]]:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids, text[:80]
