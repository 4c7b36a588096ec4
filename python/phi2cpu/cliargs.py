"""Command-line habits shared by the subcommands: llama-cli's escape sequences, the thread-count
bound and warning, and MODEL / PROMPT given as positionals or as -m / -p."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .errors import Phi2Error

# Escapes llama-cli turns into characters; any other backslash pair stays as typed.
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_HEX = "0123456789abcdefABCDEF"

# --threads above this is a usage error: a bound that does not depend on the machine (a script that
# is valid on a 128-core server stays valid on a laptop, where it only warns), far above any CPU
# count the engine is built for, and far below where creating the threads would fail.
MAX_THREADS = 1024


def unescape(text: str, what: str = "text") -> str:
    """`\\n`, `\\t`, `\\r`, `\\\\`, `\\"`, `\\'` and `\\xHH` (one byte) as llama-cli reads them.

    `\\xHH` escapes are bytes, so `\\xc3\\xa9` is "é"; bytes that do not form UTF-8 are an error.
    """
    if "\\" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "\\" and nxt in _ESCAPES:
            out += _ESCAPES[nxt].encode()
            i += 2
        elif c == "\\" and nxt == "x" and i + 3 < n and text[i + 2] in _HEX and text[i + 3] in _HEX:
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out += c.encode()
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Phi2Error(f"{what}: its \\x escapes are not valid UTF-8 (byte 0x{out[e.start]:02x}); "
                        "use --no-escape to pass the text as typed") from None


def thread_count(text: str) -> int:
    """argparse type for --threads: an integer in 1..MAX_THREADS."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_THREADS}, got {n}")
    return n


def usable_cpus() -> int:
    """Logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def warn_threads(threads: Optional[int]) -> None:
    cpus = usable_cpus()
    if threads is not None and threads > cpus:
        print(f"phi2cpu: warning: --threads {threads} is more than the {cpus} logical CPUs this process "
              "can use; the extra threads only wait for a CPU", file=sys.stderr)


def _names_a_model(text: str) -> bool:
    """Whether a lone positional is a model rather than a prompt: a .gguf name or a stored model."""
    from . import store

    if text.lower().endswith(".gguf"):
        return True
    try:
        return store.find(text) is not None
    except Phi2Error:
        return False


def place_positionals(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set args.model (and args.prompt for `run`) from -m / -p and the positionals.

    The positionals fill MODEL and PROMPT from the left, so one positional lands in MODEL; when the
    command takes a prompt and -p is absent, the last positional is the prompt instead."""
    takes_prompt = hasattr(args, "prompt_opt")
    pos = [a for a in (args.model, getattr(args, "prompt", None)) if a is not None]
    model, prompt = args.model_opt, getattr(args, "prompt_opt", None)
    if takes_prompt:
        if prompt is None:
            if not pos:
                parser.error("PROMPT is missing (give it as the last argument, or as -p TEXT)")
            if len(pos) == 1 and model is None and _names_a_model(pos[0]):
                parser.error(f"PROMPT is missing: {pos[0]} is a model; give the prompt after it (or as -p TEXT), "
                             f"or talk to it with `phi2cpu chat {pos[0]}`")
            prompt = pos.pop()
        elif len(pos) > 1 or (pos and model is not None):
            parser.error("the prompt is given twice: use -p/--prompt or a positional PROMPT, not both")
    if pos:
        if model is not None:
            parser.error("the model is given twice: use -m/--model or a positional MODEL, not both")
        model = pos[0]
    args.model = model
    if takes_prompt:
        args.prompt = prompt
