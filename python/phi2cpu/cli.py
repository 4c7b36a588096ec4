"""The `phi2cpu` command: run, info, perplexity, quantize."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .errors import Phi2Error, SamplingError, error_message
from .generate import STOP_CONTEXT, generate
from .sampling import SamplingParams
from .tokenizer import check_text

DEMO_NOTE = (
    "phi2cpu: note: using the bundled demo model phi2-mini-code, a 31M-parameter model with "
    "Phi-2's architecture trained on Python code; it is not Phi-2. To run microsoft/phi-2, "
    "convert it with `phi2cpu quantize` and pass the file as MODEL."
)

RUN_EXAMPLES = """\
examples:
  phi2cpu run "def fibonacci(n):"                 # bundled demo model
  phi2cpu run phi-2.q4 "Instruct: Explain gravity.\\nOutput:" --max-tokens 200
  phi2cpu run phi-2.q4 "def add(a, b):" --temperature 0 --stop "\\n\\n"
  cat prompt.txt | phi2cpu run phi-2.q4 - --seed 42

The prompt is used exactly as given (from stdin with "-", including any trailing newline); it
must be valid UTF-8. Put `--` before a prompt that starts with "-". Only the generated text goes
to stdout; notes and the timing line go to stderr."""

INFO_EXAMPLES = """\
examples:
  phi2cpu info phi-2.q4"""

QUANTIZE_HELP = """\
convert a Hugging Face Phi-2 folder (or a phi-2 GGUF) to f16, q8_0 or q4_0;
see `phi2cpu quantize --help`"""


def _perplexity_epilog() -> str:
    from .perplexity import PROTOCOL

    return PROTOCOL + """

The result is printed as `ppl = X` (4 decimals) on the last line of stdout; progress goes to
stderr.

examples:
  phi2cpu perplexity phi-2.q4 wiki.test.raw
  phi2cpu perplexity phi-2.q8 code.py --window 1024 --max-windows 20"""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    fmt = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="phi2cpu",
        description="Run Microsoft's Phi-2 on a CPU from quantized GGUF files.",
        epilog="Run `phi2cpu COMMAND --help` for a command's options and examples.",
        formatter_class=fmt,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="generate text from a prompt", formatter_class=fmt,
        usage="phi2cpu run [options] [MODEL] PROMPT",
        description="Continue PROMPT with MODEL, streaming the generated text to stdout.",
        epilog=RUN_EXAMPLES,
    )
    run.add_argument("model", nargs="?", metavar="MODEL",
                     help="model file (.q4/.q8/.f16/.gguf); default: the bundled demo model")
    run.add_argument("prompt", metavar="PROMPT", help='prompt text, or "-" to read it from stdin')
    run.add_argument("--max-tokens", type=int, default=128, metavar="N",
                     help="most tokens to generate (default: 128)")
    run.add_argument("--temperature", type=float, default=0.8, metavar="T",
                     help="sampling temperature; 0 = greedy (default: 0.8)")
    run.add_argument("--top-k", type=int, default=40, metavar="K",
                     help="sample from the K most likely tokens; 0 = off (default: 40)")
    run.add_argument("--top-p", type=float, default=0.95, metavar="P",
                     help="nucleus sampling mass in (0, 1]; 1 = off (default: 0.95)")
    run.add_argument("--seed", type=int, default=None, metavar="S",
                     help="random seed >= 0 for reproducible output (default: random)")
    run.add_argument("--stop", action="append", default=None, metavar="STR",
                     help="stop before this text (repeatable; not printed)")
    _engine_args(run, ctx=True)
    run.set_defaults(func=_cmd_run)

    info = sub.add_parser("info", help="describe a model file", formatter_class=fmt,
                          description="Print a model file's architecture, hyper-parameters, "
                                      "tensor types, sizes and tokenizer source.",
                          epilog=INFO_EXAMPLES)
    info.add_argument("model", metavar="MODEL", nargs="?", help="model file")
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
    _engine_args(ppl, ctx=False)
    ppl.set_defaults(func=_cmd_perplexity)

    sub.add_parser("quantize", help=QUANTIZE_HELP, add_help=False)
    sub.add_parser("bench", help="benchmark against llama.cpp and HF transformers; see `phi2cpu bench --help`",
                   add_help=False)
    return top, {"run": run, "info": info, "perplexity": ppl}


def _engine_args(p: argparse.ArgumentParser, ctx: bool) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="worker threads (default: the engine's choice)")
    if ctx:
        p.add_argument("--ctx", type=_positive_int, default=2048, metavar="N",
                       help="context window in tokens, prompt included (default: 2048)")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("phi2cpu")
    except Exception:
        return "unknown"


def _load(path: str, threads: Optional[int], n_ctx: int):
    import phi2cpu

    kwargs = {"n_ctx": n_ctx}
    if threads is not None:
        kwargs["threads"] = threads
    return phi2cpu.load(path, **kwargs)


def _read_prompt(arg: str) -> str:
    if arg != "-":
        return check_text(arg, "PROMPT")
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


def _cmd_run(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args.prompt)
    stop = [check_text(s, "--stop") for s in args.stop or []]
    SamplingParams(args.temperature, args.top_k, args.top_p, args.seed).validate()
    if args.max_tokens < 1:
        raise SamplingError(f"max_tokens must be an integer >= 1, got {args.max_tokens}")
    if args.model is None:
        import phi2cpu

        path = phi2cpu.default_model_path()
        print(DEMO_NOTE, file=sys.stderr)
    else:
        path = args.model
    model = _load(path, args.threads, args.ctx)
    pieces = generate(model, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=stop or None,
                      stream=True)
    last = ""
    for piece in pieces:
        _write(piece)
        last = piece
    if last and not last.endswith("\n") and sys.stdout.isatty():
        _write("\n")
    st = pieces.stats
    if st.stop_reason == STOP_CONTEXT:
        print(f"phi2cpu: note: stopped because the context ({model.n_ctx} tokens) is full",
              file=sys.stderr)
    print(st.summary(), file=sys.stderr)
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
    return [f"cpu:           {cpu}", f"logical cpus:  {os.cpu_count()}",
            f"threads:       {default_threads()} by default (physical cores)",
            f"kernel path:   {isa} ({reason})", f"available:     {_core.available_isas()}",
            "               (set PHI2CPU_ISA to one of these to force it)"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .gguf_io import read_model_file

    if args.system:
        print("\n".join(_system_lines()))
        if args.model is None:
            return 0
        print()
    elif args.model is None:
        raise Phi2Error("info needs MODEL (or --system)")
    mf = read_model_file(args.model)
    kv = mf.kv or {}
    out = [f"file:          {mf.path}", f"file size:     {_fmt_bytes(mf.file_size)}"]
    for key, label in (("general.architecture", "architecture"), ("general.name", "name")):
        if isinstance(kv.get(key), str):
            out.append(f"{label + ':':<15}{kv[key]}")
    cfg = mf.config.as_dict()
    cfg["head_dim"] = mf.config.head_dim
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
    model = _load(args.model, args.threads, args.window)
    res = perplexity(model, text, window=args.window, max_windows=args.max_windows, progress=True)
    print(f"windows: {res.n_windows} x {args.window} tokens, scored tokens: {res.n_scored}, "
          f"mean nll: {res.nll_mean:.6f}")
    print(f"ppl = {res.ppl:.4f}")
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
