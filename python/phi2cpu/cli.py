"""The `phi2cpu` command: run, chat, serve, info, perplexity, imatrix, quantize, pull, list, rm."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import server_limits as limits
from .cliargs import MAX_THREADS, place_positionals, thread_count, unescape, usable_cpus, warn_threads
from .errors import Phi2Error, SamplingError, error_message
from .generate import STOP_CONTEXT, generate
from .prompts import FORMATS, get_format
from .lookup import LookupParams, lookup_params
from .sampling import SamplingParams, sampling_params
from .server_batch import DEFAULT_CHUNK
from .tokenizer import check_text

DEMO_NOTE = (
    "phi2cpu: note: using the bundled demo model phi2-mini-code, a 31M-parameter model with "
    "Phi-2's architecture trained on Python code; it is not Phi-2. To run microsoft/phi-2, "
    "`phi2cpu pull microsoft/phi-2` and pass phi-2:q4_0 as MODEL (or convert a local copy with "
    "`phi2cpu quantize` and pass the file)."
)

RUN_EXAMPLES = """\
examples:
  phi2cpu run "def fibonacci(n):"                 # bundled demo model
  phi2cpu run phi-2.q4_0.gguf "Explain gravity." --format qa -n 200
  phi2cpu run -m phi-2.q4_0.gguf -p "Instruct: Explain gravity.\\nOutput:" --stop "\\nInstruct:"
  phi2cpu run phi-2.q4_0.gguf "def add(a, b):" --format code --temp 0
  phi2cpu run phi-2.q4_0.gguf "Write a haiku." --format chat --repeat-penalty 1.1 --min-p 0.1
  cat prompt.txt | phi2cpu run phi-2.q4_0.gguf - -s 42 --quiet

As in llama-cli, the escapes \\n \\t \\r \\\\ \\" \\' and \\xHH in PROMPT, --stop and --system
become the characters they name (any other backslash stays as typed); --no-escape turns this off.
A prompt read from stdin ("-") is used exactly as read, trailing newline included, never unescaped.
The prompt is used as given unless --format wraps it; it must be valid UTF-8. Put `--` before a
prompt that starts with "-". Only the generated text goes to stdout; notes and the timing line go
to stderr."""

SERVE_EXAMPLES = """\
examples:
  phi2cpu serve                                   # bundled demo model on 127.0.0.1:8000
  PHI2CPU_API_KEY=secret phi2cpu serve phi-2.q4_0.gguf --host 0.0.0.0 --port 8080 --threads 8
  phi2cpu serve phi-2:q4_0 --alias phi-2 --cors-origins http://localhost:3000 --temp 0.7
  phi2cpu serve phi-2:q4_0 --parallel 8 --batch-chunk 128 --queue 32   # 8 slots decoded together
  phi2cpu serve phi-2:q4_0 --ray --replicas 2 --max-replicas 8 --threads 4   # Ray Serve, autoscaled

Requests share --parallel slots: they are decoded together, one step at a time; new ones join
between steps in arrival order; long prompts are fed --batch-chunk tokens a step and a prompt-lookup
verification (k + 1 tokens) never waits for them, so a stream waits at most one step of
--parallel x (k + 1) + --batch-chunk tokens (k: the largest lookup draft in use, 0 without
lookup), plus a grace of 10 ms or a quarter of the last step for slots still sampling. A freed
slot keeps its tokens, so a request that repeats a cached prefix (a chat resending its history)
evaluates only what is new. The bytes a request gets do not depend on the other requests nor on
the cache.
Point any OpenAI client at http://HOST:PORT/v1 (with --api-key, pass the key as the client's api_key)."""

CHAT_EXAMPLES = """\
examples:
  phi2cpu chat                                  # bundled demo model
  phi2cpu chat phi-2.q4_0.gguf --system "A helpful assistant who answers briefly."
  phi2cpu chat -m phi-2.q4_0.gguf --temp 0.3 --verbose

At the >>> prompt: /help lists the commands; /set temperature 0.3 (or top_k, top_p, min_p,
repeat_penalty, seed, max_tokens, system ...) changes a setting; /show prints the model and the
settings; /clear forgets the conversation; /bye quits (so does Ctrl-D). A pasted block is one
message; \"\"\" starts a message over several lines and a line ending in \"\"\" sends it. Up and Down
recall earlier input, kept in $PHI2CPU_HOME/chat_history (else $XDG_STATE_HOME/phi2cpu/, or
~/.local/state/phi2cpu/). Ctrl-C while the model is replying stops that reply; the conversation
goes on. With stdin not a terminal, each line (or \"\"\" block) is a message and only the replies
are printed."""

INFO_EXAMPLES = """\
examples:
  phi2cpu info phi-2.q4_0.gguf
  phi2cpu info phi-2:q4_0 --ctx 512                # a stored model; memory needed at a 512-token context"""

PULL_EXAMPLES = """\
examples:
  phi2cpu pull microsoft/phi-2                  # converted to q4_0, stored as phi-2:q4_0
  phi2cpu pull microsoft/phi-2 --type q4_k_m    # stored as phi-2:q4_k_m
  phi2cpu pull TheBloke/phi-2-GGUF:Q4_K_M       # a GGUF as it is, stored as thebloke/phi-2-gguf:q4_k_m
  phi2cpu pull TheBloke/phi-2-GGUF/phi-2.Q5_K_M.gguf   # that one file, as it is
  phi2cpu run phi-2:q4_0 "Instruct: Explain gravity.\\nOutput:"

From a checkpoint repo only config.json, tokenizer.json and the safetensors weights are fetched
(5.6 GB for microsoft/phi-2), into the Hugging Face cache (HF_HOME); files already there are not
downloaded again, and with HF_HUB_OFFLINE=1 only the cache is used. Models are stored in
$PHI2CPU_HOME, default $XDG_CACHE_HOME/phi2cpu (~/.cache/phi2cpu); `phi2cpu list` shows them. A
download that stops (Ctrl-C, a lost connection, a full disk) resumes when the same pull runs again.
Every file is checked against the hub's sha256 (or git blob id) before it is used, and nothing
appears under its final name until it is complete."""

QUANTIZE_HELP = """\
convert a Hugging Face Phi-2 folder (or a phi-2 GGUF) to f16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k,
q4_1, q5_0, q5_1, iq4_nl or iq4_xs; see `phi2cpu quantize --help`"""


def _perplexity_epilog() -> str:
    from .perplexity import PROTOCOL

    return PROTOCOL + """

The result is printed as `ppl = X` (4 decimals) on the last line of stdout; progress goes to
stderr.

examples:
  phi2cpu perplexity phi-2.q4_0.gguf wiki.test.raw
  phi2cpu perplexity phi-2.q8_0.gguf code.py --window 1024 --max-windows 20"""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _positive_seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return x


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    fmt = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="phi2cpu",
        description="Run Microsoft's Phi-2 on a CPU from quantized GGUF files.",
        epilog="Run `phi2cpu COMMAND --help` for a command's options and examples.\n\n"
               "exit status: 0 success, 1 error (one `phi2cpu: error:` line on stderr), 2 bad usage, "
               "130 interrupted (Ctrl-C).",
        formatter_class=fmt,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="generate text from a prompt", formatter_class=fmt,
        usage="phi2cpu run [options] [MODEL] PROMPT\n       phi2cpu run [options] -m MODEL -p PROMPT",
        description="Continue PROMPT with MODEL, streaming the generated text to stdout.",
        epilog=RUN_EXAMPLES,
    )
    run.add_argument("model", nargs="?", metavar="MODEL",
                     help="GGUF model file, e.g. phi-2.q4_0.gguf; default: the bundled demo model")
    run.add_argument("prompt", nargs="?", metavar="PROMPT", help='prompt text, or "-" to read it from stdin')
    _model_opt(run)
    run.add_argument("-p", "--prompt", dest="prompt_opt", default=None, metavar="PROMPT",
                     help="the prompt, in place of the positional PROMPT")
    run.add_argument("--format", choices=list(FORMATS), default="raw",
                     help="wrap PROMPT in a Phi-2 prompt format and add its stop strings: "
                          + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
                          + " (default: raw)")
    run.add_argument("-n", "--max-tokens", "--n-predict", type=int, default=128, metavar="N",
                     help="most tokens to generate; -1 = until end-of-text or a full context "
                          "(default: 128)")
    _sampling_args(run)
    run.add_argument("--stop", action="append", default=None, metavar="STR",
                     help="stop before this text (repeatable; not printed)")
    run.add_argument("--json-schema", default=None, metavar="FILE",
                     help="only generate JSON valid against the JSON schema in FILE")
    run.add_argument("--grammar-file", default=None, metavar="FILE",
                     help="only generate text matching the llama.cpp GBNF grammar in FILE (its root rule)")
    _lookup_args(run)
    _escape_arg(run, "PROMPT and --stop")
    _output_args(run)
    _engine_args(run, ctx=True)
    run.set_defaults(func=_cmd_run)

    chat = sub.add_parser(
        "chat", help="talk with a model; the history stays in the KV cache", formatter_class=fmt,
        usage="phi2cpu chat [options] [MODEL | -m MODEL]",
        description="An interactive chat, in Phi-2's format (Alice: ... / Bob: ...) unless --chat-template or "
                    "the model file names another. Each turn processes "
                    "only the new text: the history stays in the KV cache. When the context is full, "
                    "the oldest turns are dropped (with a note) and the rest is processed once.",
        epilog=CHAT_EXAMPLES,
    )
    chat.add_argument("model", nargs="?", metavar="MODEL",
                      help="GGUF model file, e.g. phi-2.q4_0.gguf; default: the bundled demo model")
    _model_opt(chat)
    chat.add_argument("--system", default="", metavar="TEXT",
                      help="text that opens the conversation (e.g. who the assistant is)")
    chat.add_argument("-n", "--max-tokens", "--n-predict", type=_positive_int, default=256, metavar="N",
                      help="most tokens per reply (default: 256)")
    _sampling_args(chat)
    chat.add_argument("--stop", action="append", default=None, metavar="STR",
                      help="also stop a reply before this text (repeatable)")
    _lookup_args(chat)
    _chat_template_arg(chat)
    _escape_arg(chat, "--system and --stop")
    _output_args(chat)
    _engine_args(chat, ctx=True)
    chat.set_defaults(func=_cmd_chat)

    info = sub.add_parser("info", help="describe a model file", formatter_class=fmt,
                          description="Print a model file's architecture, hyper-parameters, "
                                      "tensor types, sizes and tokenizer source.",
                          epilog=INFO_EXAMPLES)
    info.add_argument("model", metavar="MODEL", nargs="?",
                      help="GGUF file or store name; default: the bundled demo model")
    _model_opt(info)
    info.add_argument("-c", "--ctx", "--ctx-size", type=_positive_int, default=None, metavar="N",
                      help="context size for the memory estimate (default: 2048, or the trained "
                           "context when that is shorter)")
    info.add_argument("--kv-type", choices=("f16", "f32"), default="f16",
                      help="KV cache type for the memory estimate (default: f16)")
    info.add_argument("--system", action="store_true",
                      help="also (or only) describe this machine: CPU, cores, default threads, and which "
                           "kernel path runs and why")
    info.set_defaults(func=_cmd_info)

    ppl = sub.add_parser("perplexity", help="measure perplexity on a text file", formatter_class=fmt,
                         description="Measure MODEL's perplexity on the UTF-8 text in FILE.",
                         epilog=_perplexity_epilog())
    ppl.add_argument("model", metavar="MODEL", help="model file")
    ppl.add_argument("file", metavar="FILE", help="UTF-8 text file")
    ppl.add_argument("--window", type=_positive_int, default=512, metavar="N",
                     help="tokens per window (default: 512)")
    ppl.add_argument("--max-windows", type=_positive_int, default=None, metavar="N",
                     help="score at most N windows (default: all)")
    ppl.add_argument("--kl-base", metavar="BASE", default=None,
                     help="also report the mean KL divergence of MODEL's next-token distribution from BASE's "
                          "(e.g. the F16 file MODEL was quantized from)")
    ppl.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the result lines")
    _engine_args(ppl, ctx=False)
    ppl.set_defaults(func=_cmd_perplexity)

    imx = sub.add_parser("imatrix", help="collect an importance matrix for `quantize --imatrix`",
                         formatter_class=fmt,
                         description="Run MODEL over the UTF-8 calibration text in TEXT and write, per weight "
                                     "matrix, each input column's sum of squares and the token count, as "
                                     "llama.cpp's imatrix GGUF layout (the format llama-quantize --imatrix takes).",
                         epilog="example:\n  phi2cpu imatrix phi-2.f16.gguf calibration.txt -o phi-2-imatrix.gguf\n"
                                "  phi2cpu quantize phi-2.f16.gguf phi-2.q4_k_m.gguf q4_k_m --imatrix phi-2-imatrix.gguf\n\n"
                                "Keep the calibration text apart from any text you evaluate on.")
    imx.add_argument("model", metavar="MODEL", help="model file (F16 or F32 is best)")
    imx.add_argument("text", metavar="TEXT", help="UTF-8 calibration text file")
    imx.add_argument("-o", "--output", required=True, metavar="FILE", help="imatrix file to write (.gguf)")
    imx.add_argument("--chunk-size", type=_positive_int, default=512, metavar="N",
                     help="tokens per chunk, each run from an empty cache (default: 512)")
    imx.add_argument("--chunks", type=_positive_int, default=None, metavar="N",
                     help="use at most N chunks (default: all whole chunks of TEXT)")
    imx.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _engine_args(imx, ctx=False)
    imx.set_defaults(func=_cmd_imatrix)

    srv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                         formatter_class=fmt, usage="phi2cpu serve [options] [MODEL | -m MODEL]",
                         description="Serve MODEL at /v1/completions, /v1/chat/completions, /v1/models, "
                                     "/tokenize, /detokenize, /metrics and /health, described at /docs (needs "
                                     "`pip install \"phi2cpu[server]\"`).",
                         epilog=SERVE_EXAMPLES)
    srv.add_argument("model", nargs="?", metavar="MODEL",
                     help="GGUF model file, e.g. phi-2.q4_0.gguf; default: the bundled demo model")
    _model_opt(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, metavar="N",
                     help="TCP port; 0 picks a free one (default: 8000)")
    srv.add_argument("--alias", "--model-name", dest="aliases", action="append", default=None, metavar="NAME",
                     help="the model's id, and the only `model` requests may name (repeatable: more names; the "
                          "first is the id /v1/models lists). Default: the store or file name is the id and any "
                          "`model` is accepted, since one model is served and clients often send a name of "
                          "their own (gpt-3.5-turbo)")
    srv.add_argument("--api-key", default=None, metavar="KEY",
                     help="require `Authorization: Bearer KEY` on /v1, /tokenize, /detokenize and /metrics "
                          "(default: $PHI2CPU_API_KEY, else none)")
    srv.add_argument("--cors-origins", default=None, metavar="ORIGINS",
                     help="comma-separated browser origins allowed to call the API, or * for any (default: none)")
    d = SamplingParams()
    for flags, kind, name, what in (
            (("--temperature", "--temp"), float, "temperature", "temperature"),
            (("--top-k",), int, "top_k", "top-k"), (("--top-p",), float, "top_p", "top-p"),
            (("--min-p",), float, "min_p", "min-p"), (("--repeat-penalty",), float, "repeat_penalty", "repeat penalty")):
        srv.add_argument(*flags, type=kind, default=getattr(d, name), dest=name, metavar="X",
                         help=f"the {what} of requests that do not set it (default: {getattr(d, name)}, as run)")
    _lookup_args(srv, " for requests that do not set `lookup`")
    _chat_template_arg(srv)
    srv.add_argument("-np", "--parallel", type=_positive_int, default=None, metavar="N",
                     help="slots: requests (choices) generated together, each with its own KV cache of --ctx-size "
                          "positions (default: 4, fewer when 4 caches would take over half the available memory; "
                          "at 2048 positions Phi-2 needs 640 MiB per slot in f16)")
    srv.add_argument("--batch-chunk", type=_positive_int, default=DEFAULT_CHUNK, metavar="N",
                     help="prompt tokens evaluated per step over all slots, so a long prompt holds the other "
                          "streams up by one step of at most --parallel x (k + 1) + N tokens, k the lookup "
                          "draft (default: %(default)s)")
    srv.add_argument("--max-queue", "--queue", type=_positive_int, default=64, metavar="N",
                     help="requests allowed to wait for a slot; more get 503 with Retry-After (default: 64)")
    srv.add_argument("--max-body-bytes", type=_positive_int, default=limits.DEFAULT_MAX_BODY_BYTES, metavar="N",
                     help="largest request body; larger ones get 413 (default: %(default)s = 1 MiB)")
    srv.add_argument("--read-timeout", type=_positive_seconds, default=limits.DEFAULT_READ_TIMEOUT,
                     metavar="SECONDS", help="a request's line, headers and body must arrive within this; "
                                             "else 408 and the connection is closed (default: %(default)g)")
    srv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                     help="server log level (default: info)")
    _engine_args(srv, ctx=False)
    srv.add_argument("-c", "--ctx-size", "--ctx", dest="ctx", type=_positive_int, default=2048, metavar="N",
                     help="context window in tokens per request, prompt included (default: 2048)")
    srv.add_argument("--ray", action="store_true",
                     help="serve through Ray Serve on a Ray cluster ($RAY_ADDRESS, else one started here), each "
                          "replica one engine of --threads threads (default 1 with --ray; needs "
                          "`pip install \"phi2cpu[ray]\"`; MODEL must resolve on every node)")
    srv.add_argument("--replicas", type=_positive_int, default=None, metavar="N",
                     help="with --ray: engine replicas (default: 1); the lower bound with --max-replicas")
    srv.add_argument("--max-replicas", type=_positive_int, default=None, metavar="N",
                     help="with --ray: autoscale between --replicas and N replicas by load")
    srv.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="with --ray: the cluster to join (default: $RAY_ADDRESS, else start one)")
    srv.set_defaults(func=_cmd_serve)

    pull = sub.add_parser("pull", help="download a model from the Hugging Face Hub into the model store",
                          formatter_class=fmt, usage="phi2cpu pull [options] REPO | REPO:QUANT | REPO/FILE.gguf",
                          description="Put a model in the store under a name that run, chat, serve, info and\n"
                                      "perplexity accept as MODEL. REPO (a checkpoint, e.g. microsoft/phi-2) is\n"
                                      "converted as `phi2cpu quantize` does; REPO:QUANT picks the repo's .gguf whose\n"
                                      "name holds the tag QUANT, REPO/FILE.gguf names one; a GGUF is stored as it is.",
                          epilog=PULL_EXAMPLES)
    pull.add_argument("source", metavar="SOURCE", help="REPO, REPO:QUANT or REPO/FILE.gguf")
    pull.add_argument("--type", type=str.lower, default=None, metavar="TYPE",
                      help="weight type a checkpoint is converted to, one of `phi2cpu quantize`'s: q4_0 (the "
                           "default: our fastest kernel, and "
                           "the type of Ollama's default phi tag), q4_k_m (the same size class, less quality "
                           "loss), q5_k_m, q6_k, q8_0 (near-lossless, twice the size), f16, f32")
    pull.add_argument("--name", default=None, metavar="NAME",
                      help="store it as NAME (BASE:TAG) instead of e.g. phi-2:q4_0")
    pull.add_argument("--revision", default="main", metavar="REV",
                      help="branch, tag or commit on the hub (default: main)")
    pull.add_argument("--force", action="store_true", help="pull again even if NAME is already in the store")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes")
    pull.set_defaults(func=_cmd_pull)

    lst = sub.add_parser("list", help="list the models in the store",
                         description="List the models `phi2cpu pull` stored: name, file type, size, date.")
    lst.set_defaults(func=_cmd_list)

    rm = sub.add_parser("rm", help="delete models from the store", description="Delete models from the store.")
    rm.add_argument("names", nargs="+", metavar="NAME", help="a name `phi2cpu list` shows")
    rm.set_defaults(func=_cmd_rm)

    sub.add_parser("quantize", help=QUANTIZE_HELP, add_help=False)
    sub.add_parser("bench", help="benchmark against llama.cpp and HF transformers; see `phi2cpu bench --help`",
                   add_help=False)
    return top, {"run": run, "chat": chat, "info": info, "perplexity": ppl, "serve": srv, "pull": pull,
                 "list": lst, "rm": rm, "imatrix": imx}


def _chat_template_arg(p: argparse.ArgumentParser) -> None:
    from .chat_template import BUILTINS

    p.add_argument("--chat-template", default=None, metavar="FILE|NAME",
                   help="how messages become the prompt: a Jinja2 template file (or a tokenizer_config.json), "
                        f"or a built-in: {', '.join(BUILTINS)} (default: the model file's "
                        "tokenizer.chat_template when it has one, else phi2, the Alice:/Bob: chat format of "
                        "Phi-2's model card)")


def _model_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", dest="model_opt", default=None, metavar="MODEL",
                   help="the model, in place of the positional MODEL")


def _escape_arg(p: argparse.ArgumentParser, texts: str) -> None:
    p.add_argument("--no-escape", dest="escape", action="store_false",
                   help=f"take {texts} as typed (by default \\n, \\t, \\\\, \\\" ... become the characters "
                        "they name, as in llama-cli)")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    p.add_argument("--temperature", "--temp", type=float, default=d.temperature, metavar="T",
                   help=f"sampling temperature; 0 = greedy (default: {d.temperature})")
    p.add_argument("--top-k", type=int, default=d.top_k, metavar="K",
                   help=f"sample from the K most likely tokens; 0 = off (default: {d.top_k})")
    p.add_argument("--top-p", type=float, default=d.top_p, metavar="P",
                   help=f"nucleus sampling mass in (0, 1]; 1 = off (default: {d.top_p})")
    p.add_argument("--min-p", type=float, default=d.min_p, metavar="P",
                   help=f"drop tokens less likely than P x the most likely one; 0 = off (default: {d.min_p})")
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty, metavar="X",
                   help=f"divide the logits of recent tokens by X (> 1 discourages repeats; default: "
                        f"{d.repeat_penalty} = off)")
    p.add_argument("--presence-penalty", type=float, default=d.presence_penalty, metavar="X",
                   help="subtract X from the logit of each recent token, in [-2, 2] (default: 0)")
    p.add_argument("--frequency-penalty", type=float, default=d.frequency_penalty, metavar="X",
                   help="subtract X per occurrence of each recent token, in [-2, 2] (default: 0)")
    p.add_argument("--repeat-last-n", type=int, default=d.penalty_last_n, metavar="N",
                   help=f"how many recent tokens the penalties look at; 0 = off (default: {d.penalty_last_n})")
    p.add_argument("--logit-bias", action="append", default=None, metavar="ID=BIAS",
                   help="add BIAS to token ID's logit; -inf bans it (repeatable)")
    p.add_argument("-s", "--seed", type=int, default=None, metavar="S",
                   help="random seed >= 0 for reproducible output (default: random)")


def _sampling_options(args: argparse.Namespace) -> dict:
    """The sampling options given on the command line, checked (a bad value is a SamplingError)."""
    bias = {}
    for item in args.logit_bias or []:
        tok, sep, value = item.partition("=")
        try:
            bias[int(tok)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SamplingError(f"--logit-bias takes TOKEN_ID=BIAS (e.g. 50256=-inf), got {item!r}")
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repeat_penalty=args.repeat_penalty, presence_penalty=args.presence_penalty,
                   frequency_penalty=args.frequency_penalty, penalty_last_n=args.repeat_last_n,
                   logit_bias=bias, seed=args.seed)
    sampling_params(**options)
    return options


def _lookup_args(p: argparse.ArgumentParser, whose: str = "") -> None:
    d = LookupParams()
    p.add_argument("--lookup", action="store_true",
                   help="speculative decoding by prompt lookup" + whose + ": guess the next tokens from an earlier "
                        "occurrence of the last few, check them in one batched pass; the same output (greedy) or "
                        "output distribution (sampling), faster when the output repeats the prompt")
    p.add_argument("--lookup-k", type=int, default=None, metavar="K",
                   help=f"with --lookup: most guessed tokens per step (default: {d.k})")
    p.add_argument("--lookup-ngram", type=int, default=None, metavar="N",
                   help=f"with --lookup: longest n-gram matched (default: {d.ngram_max})")
    p.add_argument("--lookup-ngram-min", type=int, default=None, metavar="N",
                   help=f"with --lookup: shortest n-gram matched (default: {d.ngram_min})")
    p.add_argument("--lookup-fixed", action="store_true",
                   help="with --lookup: guess all K tokens whenever a match is found, instead of as many as "
                        "this run's measured speed says pay off")


def _lookup_option(args: argparse.Namespace) -> Optional[LookupParams]:
    """LookupParams from --lookup and its settings (None without --lookup), checked."""
    given = {"k": args.lookup_k, "ngram_max": args.lookup_ngram, "ngram_min": args.lookup_ngram_min}
    given = {k: v for k, v in given.items() if v is not None}
    if args.lookup_fixed:
        given["adaptive"] = False
    if not args.lookup:
        if given:
            raise Phi2Error("--lookup-k, --lookup-ngram, --lookup-ngram-min and --lookup-fixed need --lookup")
        return None
    return lookup_params(given)


def _output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", "-q", action="store_true", help="print only the generated text (no notes, no timing)")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="print a timing breakdown (load, prompt, per-token generation) to stderr")


def _engine_args(p: argparse.ArgumentParser, ctx: bool) -> None:
    p.add_argument("-t", "--threads", type=thread_count, default=None, metavar="N",
                   help=f"worker threads, 1..{MAX_THREADS} (default: the physical cores; more than the "
                        "logical CPUs warns)")
    if ctx:
        p.add_argument("-c", "--ctx", "--ctx-size", type=_positive_int, default=2048, metavar="N",
                       help="context window in tokens, prompt included (default: 2048)")
    p.add_argument("--kv-type", choices=("f16", "f32"), default=None,
                   help="how the KV cache stores keys and values (default: f16, half the bytes of f32; "
                        "attention scores stay f32)")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("phi2cpu")
    except Exception:
        return "unknown"


def _load(path: str, threads: Optional[int], n_ctx: int, kv_type: Optional[str] = None, n_seq: int = 1):
    import phi2cpu

    kwargs = {"n_ctx": n_ctx}
    if n_seq != 1:
        kwargs["n_seq"] = n_seq
    if threads is not None:
        kwargs["threads"] = threads
    if kv_type is not None:
        kwargs["kv_type"] = kv_type
    return phi2cpu.load(path, **kwargs)


def _arg_text(args: argparse.Namespace, text: str, what: str) -> str:
    """A text option as the user meant it: valid UTF-8, escapes unescaped unless --no-escape."""
    text = check_text(text, what)
    return unescape(text, what) if args.escape else text


def _read_prompt(args: argparse.Namespace) -> str:
    """PROMPT (unescaped unless --no-escape), or stdin for "-", exactly as read."""
    if args.prompt != "-":
        return _arg_text(args, args.prompt, "PROMPT")
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    data = stream.read()
    if isinstance(data, str):
        return check_text(data, "stdin")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Phi2Error(f"stdin is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None


def _write(piece: str) -> None:
    try:
        sys.stdout.write(piece)
    except UnicodeEncodeError:
        enc = sys.stdout.encoding or "utf-8"
        sys.stdout.write(piece.encode(enc, "replace").decode(enc))
    sys.stdout.flush()


def _resolve(model: str) -> str:
    """MODEL as a file: an existing path, else a name in the store (phi-2:q4_0)."""
    from .store import resolve

    return str(resolve(model))


def _model_path(args: argparse.Namespace) -> str:
    """MODEL (a path or a store name), or the bundled demo model (with a note unless --quiet)."""
    if args.model is not None:
        return _resolve(args.model)
    import phi2cpu

    if not getattr(args, "quiet", False):
        print(DEMO_NOTE, file=sys.stderr)
    return str(phi2cpu.default_model_path())


def _load_timed(args: argparse.Namespace):
    """The model named by args, and the seconds loading took."""
    path = _model_path(args)
    t = time.perf_counter()
    model = _load(path, args.threads, args.ctx, args.kv_type)
    return model, time.perf_counter() - t


def _timing_lines(model, load_s: Optional[float], st) -> list:
    from . import _core

    ms_tok = 1000 * st.gen_seconds / st.generated_tokens if st.generated_tokens else 0.0
    ms_prompt = 1000 * st.prompt_seconds / st.prompt_evaluated if st.prompt_evaluated else 0.0
    lines = [] if load_s is None else [
        f"load:      {load_s * 1000:9.1f} ms  ({model.path}, {model.threads} threads, {_core.isa()[0]} kernels)"]
    return lines + [
        f"prompt:    {st.prompt_seconds * 1000:9.1f} ms  {st.prompt_evaluated} tokens processed"
        f" ({st.prompt_tokens - st.prompt_evaluated} reused from the cache), {ms_prompt:.2f} ms/token",
        f"generate:  {st.gen_seconds * 1000:9.1f} ms  {st.generated_tokens} tokens, {ms_tok:.2f} ms/token, "
        f"{st.gen_tokens_per_s:.1f} tok/s",
        f"stopped:   {st.stop_reason}",
    ]


def _constraint(args: argparse.Namespace):
    """The grammar.Constraint of --json-schema / --grammar-file, or None; errors name the file."""
    from . import grammar
    from .errors import GrammarError

    if args.json_schema is not None and args.grammar_file is not None:
        raise Phi2Error("give --json-schema or --grammar-file, not both")
    path = args.json_schema if args.json_schema is not None else args.grammar_file
    if path is None:
        return None
    text = _read_text_file(path)
    try:
        return grammar.json_schema(text) if args.json_schema is not None else grammar.gbnf(text)
    except GrammarError as e:
        raise GrammarError(f"{path}: {e}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args)
    fmt = get_format(args.format)
    constraint = _constraint(args)
    stop = [_arg_text(args, s, "--stop") for s in args.stop or []] + list(fmt.stop)
    sampling = _sampling_options(args)
    lookup = _lookup_option(args)
    if args.max_tokens < 1 and args.max_tokens != -1:
        raise SamplingError(f"max_tokens must be an integer >= 1, or -1 for no limit, got {args.max_tokens}")
    model, load_s = _load_timed(args)
    # -1 (llama-cli's "no limit"): generation stops at end-of-text or when the context is full
    max_tokens = model.n_ctx if args.max_tokens == -1 else args.max_tokens
    pieces = generate(model, fmt.wrap(prompt), max_tokens=max_tokens, stop=stop or None, stream=True,
                      json_schema=constraint, lookup=lookup, **sampling)
    last = ""
    for piece in pieces:
        _write(piece)
        last = piece
    if last and not last.endswith("\n") and sys.stdout.isatty():
        _write("\n")
    st = pieces.stats
    if args.quiet:
        return 0
    if st.stop_reason == STOP_CONTEXT:
        print(f"phi2cpu: note: stopped because the context ({model.n_ctx} tokens) is full",
              file=sys.stderr)
    if constraint is not None and st.finish_reason == "length":
        print(f"phi2cpu: note: the output is incomplete: generation stopped at the token limit before "
              f"{'the JSON' if args.json_schema is not None else 'the grammar'} was complete", file=sys.stderr)
    print("\n".join(_timing_lines(model, load_s, st)) if args.verbose else st.summary(), file=sys.stderr)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatSession
    from .chat_repl import run_chat
    from .chat_template import for_model, load as load_template

    stop = [_arg_text(args, s, "--stop") for s in args.stop or []]
    system = _arg_text(args, args.system, "--system")
    sampling = _sampling_options(args)
    lookup = _lookup_option(args)
    template = load_template(args.chat_template) if args.chat_template is not None else None
    model, load_s = _load_timed(args)
    session = ChatSession(model, system=system, max_tokens=args.max_tokens, stop=stop,
                          template=template or for_model(model), lookup=lookup, **sampling)
    from .store import name_of

    title = f"phi2cpu chat: {name_of(model.path) or os.path.basename(model.path)}, context {model.n_ctx} tokens."
    return run_chat(session, title=title, quiet=args.quiet, verbose=args.verbose, write=_write,
                    timing=lambda stats, first: _timing_lines(model, load_s if first else None, stats))


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise Phi2Error(f"serve needs {e.name}: pip install \"phi2cpu[server]\"") from None
    from .server import serve

    if not 0 <= args.port <= 65535:
        raise Phi2Error(f"--port must be in 0..65535, got {args.port}")
    from .store import name_of

    defaults = sampling_params(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               min_p=args.min_p, repeat_penalty=args.repeat_penalty)
    api_key = args.api_key if args.api_key is not None else os.environ.get("PHI2CPU_API_KEY") or None
    if args.api_key == "":
        raise Phi2Error("--api-key must not be empty")
    origins = [o.strip() for o in args.cors_origins.split(",") if o.strip()] if args.cors_origins else None
    from .chat_template import for_model, load as load_template

    template = load_template(args.chat_template) if args.chat_template is not None else None
    path = _model_path(args)
    lookup = _lookup_option(args)
    if args.ray or args.replicas or args.max_replicas or args.ray_address:
        if lookup is not None:
            raise Phi2Error("--lookup is not available with --ray")
        if args.parallel is not None:
            raise Phi2Error("--parallel is not available with --ray: each replica serves one request at a time")
        try:
            from .ray.serving import serve_from_cli
        except ImportError as e:
            raise Phi2Error(str(e)) from None
        return serve_from_cli(args, path, defaults=defaults, api_key=api_key, origins=origins)
    from .gguf_io import read_model_file
    from .server_limits import check_parallel, default_parallel

    config, kv_type, parallel = read_model_file(path).config, args.kv_type or "f16", args.parallel
    if parallel is None:
        parallel = default_parallel(config, args.ctx, kv_type)
    else:
        check_parallel(config, args.ctx, kv_type, parallel)
    model = _load(path, args.threads, args.ctx, args.kv_type, n_seq=parallel)
    template = template or for_model(model)
    name = args.aliases[0] if args.aliases else (name_of(path) or os.path.basename(path))
    if name.endswith(".gguf") and not args.aliases:
        name = name[: -len(".gguf")]

    def listening(url: str) -> None:
        print(f"phi2cpu: serving {name} at {url}/v1 ({model.n_seq} slots of {model.n_ctx} tokens, "
              f"{model.threads} threads, chat template {template.name}); Ctrl-C stops",
              file=sys.stderr, flush=True)

    serve(model, name, host=args.host, port=args.port, log_level=args.log_level,
          max_queue=args.max_queue, on_listen=listening, max_body_bytes=args.max_body_bytes,
          read_timeout=args.read_timeout, aliases=args.aliases, defaults=defaults, api_key=api_key,
          cors_origins=origins, chat_template=template, lookup=lookup, batch_chunk=args.batch_chunk)
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _type_name(t: int) -> str:
    import gguf

    try:
        return gguf.GGMLQuantizationType(t).name
    except ValueError:
        return f"type {t}"


def _system_lines() -> list:
    import platform

    from . import _core
    from .model import default_threads

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    isa, reason = _core.isa()
    return [f"cpu:           {cpu}", f"logical cpus:  {usable_cpus()} usable ({os.cpu_count()} in the machine)",
            f"threads:       {default_threads()} by default (physical cores)",
            f"kernel path:   {isa} ({reason})", f"available:     {_core.available_isas()}",
            "               (set PHI2CPU_ISA to one of these to force it)"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .gguf_io import read_model_file
    from .modelinfo import KV_BYTES, MAX_BATCH, bits_per_weight, file_type_name, memory_needed

    if args.system:
        print("\n".join(_system_lines()))
        if args.model is None:
            return 0
        print()
    path = _model_path(args)
    if os.path.isdir(path):
        raise Phi2Error(f"{path} is a folder, not a GGUF file; convert a Hugging Face checkpoint with "
                        f"`phi2cpu quantize {path} OUT.gguf` (or `phi2cpu pull REPO`)")
    mf = read_model_file(path)
    if args.ctx is None:
        args.ctx = min(2048, mf.config.n_ctx_train)
    elif args.ctx > mf.config.n_ctx_train:
        raise Phi2Error(f"--ctx {args.ctx} exceeds the {mf.config.n_ctx_train} positions this model was "
                        "trained on (run, chat and serve refuse it too)")
    kv = mf.kv or {}
    out = [f"file:          {mf.path}", f"file size:     {_fmt_bytes(mf.file_size)}"]
    for key, label in (("general.architecture", "architecture"), ("general.name", "name")):
        if isinstance(kv.get(key), str):
            out.append(f"{label + ':':<15}{kv[key]}")
    out.append(f"file type:     {file_type_name(kv, mf.tensors)}")
    cfg = mf.config.as_dict()
    cfg["head_dim"] = mf.config.head_dim
    cfg["n_rot"] = f"{mf.config.n_rot} (rotary dims per head, of head_dim {mf.config.head_dim})"
    out.append("hyper-parameters:")
    out += [f"  {k:<13}{v:g}" if isinstance(v, float) else f"  {k:<13}{v}" for k, v in cfg.items()]

    n_params = 0
    by_type: dict[int, list[int]] = {}
    for t in mf.tensors.values():
        count = 1
        for d in t.shape:
            count *= int(d)
        n_params += count
        entry = by_type.setdefault(t.ggml_type, [0, 0])
        entry[0] += 1
        entry[1] += int(t.nbytes)
    scaled = f"{n_params / 1e9:.2f} B" if n_params >= 1e9 else f"{n_params / 1e6:.1f} M"
    out.append(f"parameters:    {n_params:,} ({scaled})")
    out.append(f"tensors:       {len(mf.tensors)}")
    for t, (count, nbytes) in sorted(by_type.items(), key=lambda kv_: -kv_[1][1]):
        out.append(f"  {_type_name(t):<8}{count:>5} tensors  {_fmt_bytes(nbytes):>12}")
    tensor_bytes = sum(nbytes for _, nbytes in by_type.values())
    if n_params:
        out.append(f"bits/weight:   {bits_per_weight(tensor_bytes, n_params):.2f} "
                   f"({_fmt_bytes(tensor_bytes)} of tensors)")
    mem = memory_needed(mf.config, tensor_bytes, args.ctx, args.kv_type)
    out += [f"memory at --ctx {mem.n_ctx}: {_fmt_bytes(mem.total)} in the engine (the Python process and "
            "tokenizer come on top)",
            f"  weights      {_fmt_bytes(mem.weights):>12}",
            f"  KV cache     {_fmt_bytes(mem.kv_cache):>12}  ({args.kv_type} K and V: 2 x {mf.config.n_layer} "
            f"layers x {mem.n_ctx} positions x {mf.config.n_embd} x {KV_BYTES[args.kv_type]} bytes)",
            f"  activations  {_fmt_bytes(mem.activations):>12}  (a batch of "
            f"{min(mem.n_ctx, MAX_BATCH)} tokens)"]
    if mf.recipe:
        recipe = mf.recipe if isinstance(mf.recipe, str) else json.dumps(mf.recipe, sort_keys=True)
        out.append(f"quant recipe:  {recipe}")
    out.append("tokenizer:     " + ("embedded tokenizer.json" if mf.tokenizer_json
                                    else "rebuilt from the GGUF vocab (tokenizer.ggml.*)"))
    print("\n".join(out))
    return 0


def _read_text_file(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Phi2Error(f"{path}: not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start})") from None


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from .perplexity import perplexity

    text = _read_text_file(args.file)
    model = _load(_resolve(args.model), args.threads, args.window, args.kv_type)
    base = _load(_resolve(args.kl_base), args.threads, args.window, args.kv_type) if args.kl_base else None
    res = perplexity(model, text, window=args.window, max_windows=args.max_windows, progress=not args.quiet,
                     base=base)
    print(f"windows: {res.n_windows} x {args.window} tokens, scored tokens: {res.n_scored}, "
          f"mean nll: {res.nll_mean:.6f}")
    print(f"ppl = {res.ppl:.4f}")
    if res.kl_mean is not None:
        print(f"mean KL divergence from {args.kl_base} = {res.kl_mean:.6f} nats")
    return 0


def _cmd_imatrix(args: argparse.Namespace) -> int:
    from . import imatrix

    out = Path(args.output)
    if not out.parent.is_dir():
        raise Phi2Error(f"{out.parent}: output directory does not exist")
    text = _read_text_file(args.text)
    model = _load(_resolve(args.model), args.threads, args.chunk_size)
    im = imatrix.collect(model, text, chunk_size=args.chunk_size, max_chunks=args.chunks,
                         dataset=Path(args.text).name, progress=not args.quiet)
    imatrix.save(im, out)
    print(f"wrote {out}: {len(im.sums)} matrices, {im.chunk_count} chunks x {im.chunk_size} tokens")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from .hub import pull

    def say(note: str) -> None:
        if not args.quiet:
            print(f"phi2cpu: {note}", file=sys.stderr, flush=True)

    entry, _ = pull(args.source, args.type, name=args.name, revision=args.revision, force=args.force,
                    progress=not args.quiet, say=say)
    print(f"{entry.name}: {entry.type}, {_fmt_bytes(entry.size)}, {entry.path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .store import entries, models_dir

    found = entries()
    if not found:
        print(f"phi2cpu: no models in {models_dir()}; `phi2cpu pull microsoft/phi-2` fetches Phi-2", file=sys.stderr)
        return 0
    rows = [("NAME", "TYPE", "SIZE", "MODIFIED")] + [
        (e.name, e.type, _fmt_bytes(e.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified)))
        for e in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from .store import find, models_dir, remove

    for name in args.names:  # every name is checked before anything is deleted
        if find(name) is None:
            raise Phi2Error(f"{name}: no model of that name in the store ({models_dir()}); `phi2cpu list` shows them")
    for name in args.names:
        entry = remove(name)
        print(f"deleted {entry.name} ({_fmt_bytes(entry.size)})")
    from .repack_cache import prune

    prune()  # the deleted models' repack caches
    return 0


def _error(message: str) -> None:
    print(f"phi2cpu: error: {' '.join(message.split(chr(10)))}", file=sys.stderr)


def _dispatch(argv: list) -> int:
    top, subs = build_parser()
    if argv and argv[0] == "quantize":
        from . import quantize

        return quantize.main(argv[1:], prog="phi2cpu quantize") or 0
    if argv and argv[0] == "bench":
        from . import bench

        return bench.main(argv[1:]) or 0
    if argv and argv[0] in subs:
        # intermixed lets options follow the positionals; it mishandles "--", plain parsing doesn't
        parse = subs[argv[0]].parse_args if "--" in argv else subs[argv[0]].parse_intermixed_args
        args = parse(argv[1:])
        if hasattr(args, "model_opt"):
            place_positionals(subs[argv[0]], args)
        warn_threads(getattr(args, "threads", None))
    else:
        args = top.parse_args(argv)
        if args.command is None:
            top.print_help(sys.stderr)
            return 2
    return args.func(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`); silence the final flush at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Phi2Error as e:
        _error(str(e))
        return 1
    except OSError as e:
        _error(error_message(e))
        return 1
