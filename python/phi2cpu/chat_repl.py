"""The `phi2cpu chat` prompt, in the manner of `ollama run`.

At a terminal it reads with prompt_toolkit: line editing, a history kept between sessions, and
bracketed paste, so a pasted block is one message. A message that starts with \"\"\" goes on over
several lines until a line ends with \"\"\". Lines that start with a /word are commands. With stdout
piped (`phi2cpu chat | tee log`) the prompt is drawn on stderr. When stdin is not a terminal, it
reads plain lines (the same commands and \"\"\" blocks) and prints no prompt, so scripts can pipe a
conversation in and get only the replies out.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional, TextIO

from .chat import ChatSession
from .errors import Phi2Error, SamplingError
from .tokenizer import check_text

QUOTES = '"""'
HINT = "(Ctrl-D or /bye quits)"
_COMMAND = re.compile(r"/(?:\?|[A-Za-z][\w-]*)")

# /set NAME VALUE: the user's name -> (ChatSession.update keyword, parser)
_NUMBER_SETTINGS = {
    "temperature": ("temperature", float), "top_k": ("top_k", int), "top_p": ("top_p", float),
    "min_p": ("min_p", float), "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float), "frequency_penalty": ("frequency_penalty", float),
    "repeat_last_n": ("penalty_last_n", int), "seed": ("seed", int), "max_tokens": ("max_tokens", int),
}
_ALIASES = {"temp": "temperature", "num_predict": "max_tokens", "n_predict": "max_tokens",
            "penalty_last_n": "repeat_last_n"}


def history_path() -> Path:
    """$PHI2CPU_HOME/chat_history, else $XDG_STATE_HOME/phi2cpu/chat_history (~/.local/state)."""
    home = os.environ.get("PHI2CPU_HOME")
    if home:
        return Path(home).expanduser() / "chat_history"
    state = os.environ.get("XDG_STATE_HOME")
    return (Path(state).expanduser() if state else Path.home() / ".local" / "state") / "phi2cpu" / "chat_history"


def is_open_block(text: str) -> bool:
    """True while a \"\"\" message has been opened and not yet closed."""
    body = text.lstrip()
    if not body.startswith(QUOTES):
        return False
    return not body[len(QUOTES):].rstrip().endswith(QUOTES)


class Pasted(str):
    """A message that began with a paste: taken as it is, \"\"\" and all (a pasted module may open with
    its docstring)."""


def message_text(text: str) -> str:
    """The message in what was read: a \"\"\" block without its quotes, else the text itself."""
    body = text.strip()
    if body.startswith(QUOTES) and not isinstance(text, Pasted):
        body = body[len(QUOTES):]
        if body.rstrip().endswith(QUOTES):
            body = body.rstrip()[:-len(QUOTES)]
        return body.strip("\r\n")
    return text.strip("\r\n")


HELP = """\
Commands:
  /set NAME VALUE   change a setting for the next replies: temperature, top_k, top_p, min_p,
                    repeat_penalty, presence_penalty, frequency_penalty, repeat_last_n,
                    seed (a number, or random), max_tokens; /set system TEXT (empty: none);
                    /set verbose and /set quiet turn the timing lines on and off
  /show             the model and the current settings
  /clear            forget the conversation (also /reset)
  /help             this list (also /?)
  /bye              quit (also /exit, /quit, Ctrl-D)

Enter sends the message. A pasted block is one message, newlines and all.
\"\"\" starts a message over several lines; a line that ends with \"\"\" finishes it.
Ctrl-C stops a reply; at the prompt it drops what was typed."""


class ChatLoop:
    """Reads messages and commands, and streams the session's replies to `write`."""

    def __init__(self, session: ChatSession, quiet: bool = False, verbose: bool = False,
                 timing: Optional[Callable[[object, bool], List[str]]] = None,
                 write: Optional[Callable[[str], None]] = None, history: Optional[Path] = None,
                 hint_on_new_line: bool = True):
        self.session = session
        self.hint_prefix = "\n" if hint_on_new_line else ""  # prompt_toolkit ends the line itself
        self.quiet = quiet
        self.verbose = verbose
        self.timing = timing          # (stats, first reply) -> lines for --verbose
        self.write = write or _write_stdout
        self.history = history
        self._first = True

    # ------------------------------------------------------------------ the loop
    def run(self, read: Callable[[], str]) -> int:
        """`read()` returns one message or command (a whole \"\"\" block at once) and raises EOFError
        at the end of input, KeyboardInterrupt on Ctrl-C."""
        while True:
            try:
                text = read()
            except EOFError:
                _note("")
                return 0
            except KeyboardInterrupt:
                _note(self.hint_prefix + HINT)
                continue
            try:
                text = check_text(text, "message")
            except Phi2Error as e:
                _note(f"phi2cpu: {e}")
                continue
            line = text.strip()
            if line and "\n" not in line and _COMMAND.fullmatch(line.split()[0]):
                if not self.command(line):
                    return 0
                continue
            message = message_text(text)
            if message.strip():
                self.turn(message)

    def turn(self, message: str) -> None:
        session = self.session
        try:
            stream, dropped = session.reply(message)
        except Phi2Error as e:
            _note(f"phi2cpu: {e}")
            return
        if dropped and not self.quiet:
            _note(f"(context full: dropped the {dropped} oldest turn(s); processing the rest once)")
        shown = []
        try:
            for piece in stream:
                self.write(piece)
                shown.append(piece)
        except KeyboardInterrupt:
            stream.close()
            _note("\n(reply stopped)")
        session.record("".join(shown))
        self.write("\n")
        if self.verbose and self.timing is not None:
            _note("\n".join(self.timing(stream.stats, self._first)))
            self._first = False

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Run one /command; False means quit."""
        word, _, rest = line.partition(" ")
        word, rest = word.lower(), rest.strip()
        if word in ("/bye", "/exit", "/quit"):
            return False
        if word in ("/clear", "/reset"):
            self.session.clear()
            _note("(conversation cleared)")
        elif word in ("/help", "/?"):
            self.write(HELP + (f"\nThe input history is kept in {self.history}.\n" if self.history else "\n"))
        elif word == "/show":
            self.write("\n".join(self.show_lines()) + "\n")
        elif word == "/set":
            self.set(rest)
        else:
            _note(f"unknown command {word!r}; /help lists the commands")
        return True

    def set(self, rest: str) -> None:
        name, _, value = rest.partition(" ")
        name, value = name.lower().replace("-", "_"), value.strip()
        if name == "parameter":  # ollama's spelling: /set parameter NAME VALUE
            name, _, value = value.partition(" ")
            name, value = name.lower().replace("-", "_"), value.strip()
        name = _ALIASES.get(name, name)
        if name in ("verbose", "quiet") and not value:
            self.verbose = name == "verbose"
            _note(f"(timing lines {'on' if self.verbose else 'off'})")
            return
        if name == "system":
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            self.session.update(system=value)
            _note("(system text cleared)" if not value else "(system text set)")
            return
        if name not in _NUMBER_SETTINGS:
            known = ", ".join(list(_NUMBER_SETTINGS) + ["system", "verbose", "quiet"])
            _note(f"(/set: unknown setting {name!r}; settings are {known})" if name else
                  f"(/set NAME VALUE; settings are {known})")
            return
        key, kind = _NUMBER_SETTINGS[name]
        if not value:
            _note(f"(/set {name} needs a value)")
            return
        try:
            parsed = None if name == "seed" and value.lower() in ("random", "none") else kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            _note(f"(/set {name}: {value!r} is not {what}; nothing changed)")
            return
        try:
            self.session.update(**{key: parsed})
        except SamplingError as e:
            _note(f"({e}; nothing changed)")
            return
        _note(f"({name} = {'random' if parsed is None else parsed})")

    def show_lines(self) -> List[str]:
        from .modelinfo import file_type_name

        s, model = self.session, self.session.model
        lines = ["model:"]
        path = getattr(model, "path", None)
        if path:
            lines.append(f"  {'file':<18}{path}")
        mf = getattr(model, "file", None)
        if mf is not None:
            n_params = sum(_count(t.shape) for t in mf.tensors.values())
            lines += [f"  {'architecture':<18}{(mf.kv or {}).get('general.architecture', 'phi2')}",
                      f"  {'parameters':<18}{n_params / 1e6:,.1f} M",
                      f"  {'file type':<18}{file_type_name(mf.kv or {}, mf.tensors)}"]
        lines.append(f"  {'context':<18}{model.n_ctx} tokens ({model.n_past} in the cache)")
        threads = getattr(model, "threads", None)
        if threads:
            lines.append(f"  {'threads':<18}{threads}")
        opts = dict(s.sampling)
        lines.append("settings:")
        for name, (key, _) in _NUMBER_SETTINGS.items():
            v = s.max_tokens if key == "max_tokens" else opts.get(key, _default(key))
            shown = "random" if v is None else f"{v:g}" if isinstance(v, float) else v
            lines.append(f"  {name:<18}{shown}")
        lines.append(f"  {'system':<18}{s.system!r}" if s.system else f"  {'system':<18}(none)")
        lines.append(f"  {'stop':<18}{', '.join(repr(x) for x in s.stop)}")
        lines.append(f"conversation:       {len(s.turns)} turn(s) (chat template {s.template.name})")
        return lines


def _default(key: str):
    from .sampling import SamplingParams

    return getattr(SamplingParams(), key)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write_stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


# ---------------------------------------------------------------------- readers

def line_reader(stream: TextIO, prompt: Optional[TextIO] = None) -> Callable[[], str]:
    """Messages from plain lines; a \"\"\" block is read to its closing line (or the end of input).
    `prompt`, when given, gets the >>> and ... prompts."""
    def read() -> str:
        if prompt is not None:
            prompt.write(">>> ")
            prompt.flush()
        line = stream.readline()
        if not line:
            raise EOFError
        text = line.rstrip("\n")
        while is_open_block(text):
            if prompt is not None:
                prompt.write("... ")
                prompt.flush()
            more = stream.readline()
            if not more:
                break
            text += "\n" + more.rstrip("\n")
        return text
    return read


def prompt_reader(history: Optional[Path], input=None, output=None) -> Callable[[], str]:
    """Messages from a prompt_toolkit prompt: Enter sends, except inside an open \"\"\" block,
    where it starts a new line; a bracketed paste lands in the line whole. A message that starts
    with a paste is never a \"\"\" block: it comes back as Pasted."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application.current import get_app
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.keys import Keys

    keys = KeyBindings()
    pasted = [False]   # this message began with a paste

    @keys.add("enter")
    def _enter(event) -> None:
        buf = event.current_buffer
        if not pasted[0] and is_open_block(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @keys.add(Keys.BracketedPaste)
    def _paste(event) -> None:
        buf = event.current_buffer
        pasted[0] = pasted[0] or not buf.text
        buf.insert_text(event.data.replace("\r\n", "\n").replace("\r", "\n"))  # as prompt_toolkit's own

    def placeholder():  # gone once the line is accepted or dropped, so it never stays on the screen
        return [] if get_app().is_done else FormattedText([("fg:ansibrightblack", "Send a message (/help for help)")])

    session = PromptSession(history=_history(history) if history else InMemoryHistory(), key_bindings=keys,
                            prompt_continuation="... ", input=input, output=output, placeholder=placeholder)

    def read() -> str:
        pasted[0] = False
        text = session.prompt(">>> ")
        return Pasted(text) if pasted[0] else text
    return read


def _history(path: Path):
    """A FileHistory at `path`; if it cannot be read or written, one warning and the chat goes on
    with the history of this session only."""
    from prompt_toolkit.history import FileHistory

    warned = []

    def warn(e: OSError) -> None:
        if not warned:
            _note(f"phi2cpu: warning: the chat history is not saved: {e}")
            warned.append(e)

    class _SafeFileHistory(FileHistory):
        def load_history_strings(self):
            try:
                yield from super().load_history_strings()
            except OSError as e:
                warn(e)

        def store_string(self, string: str) -> None:
            if warned:
                return
            try:
                super().store_string(string)
            except OSError as e:
                warn(e)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warn(e)
    return _SafeFileHistory(str(path))


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def prompt_screen() -> Optional[TextIO]:
    """Where a person at the keyboard sees the prompt: stdout, or stderr when only stdout is piped
    (`phi2cpu chat | tee log`); None when stdin is not a terminal or neither output is one."""
    if not _isatty(sys.stdin):
        return None
    return next((s for s in (sys.stdout, sys.stderr) if _isatty(s)), None)


def run_chat(session: ChatSession, title: str = "", quiet: bool = False, verbose: bool = False,
             timing: Optional[Callable[[object, bool], List[str]]] = None,
             write: Optional[Callable[[str], None]] = None) -> int:
    """The chat on this process's terminal, or on piped stdin without prompts."""
    screen = prompt_screen()
    tty = screen is not None
    history = history_path() if tty else None
    loop = ChatLoop(session, quiet=quiet, verbose=verbose, timing=timing, write=write, history=history,
                    hint_on_new_line=not tty)
    if title and not quiet:
        _note(title + ' Type /help for the commands; """ starts a multi-line message; Ctrl-C stops a reply; '
              "Ctrl-D or /bye quits.")
    if tty:
        from prompt_toolkit.output import create_output

        read = prompt_reader(history, output=None if screen is sys.stdout else create_output(stdout=screen))
    else:
        read = line_reader(sys.stdin, sys.stderr if _isatty(sys.stdin) else None)
    return loop.run(read)
