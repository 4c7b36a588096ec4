"""Chat: prompt formats, a session that keeps history in the KV cache, and the real `phi2cpu chat`
driven through tmux as a person would (type, read the screen, press Ctrl-C)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import phi2cpu
from phi2cpu.chat import ChatSession
from phi2cpu.chat_repl import ChatLoop, history_path, is_open_block, line_reader, message_text, prompt_reader
from phi2cpu.errors import ContextFullError, Phi2Error
from phi2cpu.prompts import FORMATS, chat_transcript, get_format, messages_prompt


def test_formats_wrap_and_stop():
    assert get_format("qa").wrap("Name a prime.") == "Instruct: Name a prime.\nOutput:"
    assert get_format("chat").wrap("Hi") == "Alice: Hi\nBob:"
    assert get_format("raw").wrap("x\n") == "x\n" and get_format("raw").stop == ()
    assert "\nInstruct:" in get_format("qa").stop and "\nAlice:" in get_format("chat").stop
    assert "\ndef " in get_format("code").stop
    with pytest.raises(Phi2Error, match="unknown prompt format 'json'"):
        get_format("json")
    assert set(FORMATS) == {"raw", "qa", "chat", "code"}


def test_transcript_and_messages():
    assert chat_transcript([("Hi", "Hello!"), ("How are you?", "")], system="Be brief.") == (
        "Be brief.\nAlice: Hi\nBob: Hello!\nAlice: How are you?\nBob:")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}]
    assert messages_prompt(msgs) == chat_transcript([("Hi", "Hello!"), ("How are you?", "")], "Be brief.")
    for bad, why in (([], "last message"), ([{"role": "user", "content": 3}], "content"),
                     ([{"role": "tool", "content": "x"}], "role"),
                     ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message")):
        with pytest.raises(Phi2Error, match=why):
            messages_prompt(bad)


@pytest.fixture(scope="module")
def bundled():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=2, n_ctx=256)


def test_second_turn_processes_only_the_new_text(bundled):
    chat = ChatSession(bundled, max_tokens=12, temperature=0)
    chat.ask("def add(a, b):")
    first = chat.last_stats
    assert first.prompt_evaluated == first.prompt_tokens  # nothing cached yet
    history = bundled.tokenize(chat_transcript(chat.turns))
    chat.ask("def mul(a, b):")
    st = chat.last_stats
    new_text = bundled.tokenize("\nAlice: def mul(a, b):\nBob:")
    assert st.prompt_tokens == len(bundled.tokenize(chat_transcript(chat.turns[:1] + [("def mul(a, b):", "")])))
    # only the new turn (give or take a token where the old reply's text is re-tokenized)
    assert st.prompt_evaluated <= len(new_text) + 2
    assert st.prompt_tokens - st.prompt_evaluated >= len(history) - 2
    # and the reply equals one computed from scratch
    fresh = ChatSession(phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=256), max_tokens=12,
                        temperature=0)
    fresh.turns = list(chat.turns[:1])
    assert fresh.ask("def mul(a, b):") == chat.turns[1][1]


def test_full_context_drops_oldest_turns(bundled):
    chat = ChatSession(bundled, max_tokens=40, temperature=0)
    dropped_total = 0
    for i in range(8):
        stream, dropped = chat.reply(f"def function_number_{i}(x, y, z):")
        chat.record("".join(stream))
        dropped_total += dropped
        assert bundled.n_past <= bundled.n_ctx
    assert dropped_total > 0 and chat.dropped == dropped_total
    assert chat.turns[-1][0] == "def function_number_7(x, y, z):"
    with pytest.raises(ContextFullError, match="does not fit"):
        chat.reply("x " * 400)
    with pytest.raises(Phi2Error, match="empty"):
        chat.reply("   ")


# ----------------------------------------------------------------------------- the chat loop, in process

def fake_session(reply: str = "ok", **kw) -> ChatSession:
    """A session on a fake model that answers every turn with `reply`."""
    from fakes import FakeModel, onehot, tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok.encode(reply)

    def logits(history):
        # after "Bob:" (the end of every transcript) comes the reply, then the end of text
        text = tok.decode(list(history))
        tail = text[text.rfind("Bob:") + 4:] if "Bob:" in text else None
        if tail is None:
            return onehot(256)
        done = len(tok.encode(tail)) if tail else 0
        return onehot(ids[done] if done < len(ids) else 256)
    return ChatSession(FakeModel(logits, tokenizer=tok, n_ctx=4096), temperature=0, **kw)


def run_lines(session, text: str, **kw):
    """Feed `text` to a ChatLoop as piped stdin; returns (exit code, what was written)."""
    out = []
    loop = ChatLoop(session, write=out.append, **kw)
    rc = loop.run(line_reader(io.StringIO(text)))
    return rc, "".join(out)


@pytest.mark.parametrize("text, open_, message", [
    ('"""', True, ""), ('"""hello', True, "hello"), ('"""a\nb"""', False, "a\nb"),
    ('"""\nline 1\nline 2\n"""', False, "line 1\nline 2"), ('  """x"""  ', False, "x"),
    ('""""""', False, ""), ("plain text", False, "plain text"), ('say """hi"""', False, 'say """hi"""'),
    ("def f():\n    return 1\n", False, "def f():\n    return 1"),
])
def test_triple_quote_blocks(text, open_, message):
    assert is_open_block(text) is open_
    if not open_:
        assert message_text(text) == message


def test_piped_lines_are_turns_and_blocks_are_one_turn(capsys):
    s = fake_session(" yes")
    rc, out = run_lines(s, 'hello\n"""def f(x):\n    return x\n"""\n\n   \nbye now\n')
    assert rc == 0 and out == " yes\n" * 3
    assert [u for u, _ in s.turns] == ["hello", "def f(x):\n    return x", "bye now"]
    assert all(r == " yes" for _, r in s.turns)


def test_unclosed_block_at_end_of_input_is_still_sent():
    s = fake_session()
    run_lines(s, '"""line 1\nline 2\n')
    assert [u for u, _ in s.turns] == ["line 1\nline 2"]


@pytest.mark.parametrize("word", ["/bye", "/exit", "/quit", "/BYE"])
def test_quit_commands_stop_reading(word):
    s = fake_session()
    rc, out = run_lines(s, f"one\n{word}\ntwo\n")
    assert rc == 0 and [u for u, _ in s.turns] == ["one"]


@pytest.mark.parametrize("word", ["/clear", "/reset"])
def test_clear_forgets_the_conversation(word, capsys):
    s = fake_session()
    run_lines(s, f"one\ntwo\n{word}\nthree\n")
    assert [u for u, _ in s.turns] == ["three"]
    assert "(conversation cleared)" in capsys.readouterr().err


def test_help_and_unknown_commands(capsys):
    s = fake_session()
    rc, out = run_lines(s, "/help\n/?\n/foo\n/Show-me\n/usr/bin/python is slow\n", history=Path("H"))
    err = capsys.readouterr().err
    assert out.count("Commands:") == 2 and "/set NAME VALUE" in out and "/clear" in out and "kept in H" in out
    assert "unknown command '/foo'; /help lists the commands" in err
    assert "unknown command '/show-me'" in err
    # a path is a message, not a command
    assert [u for u, _ in s.turns] == ["/usr/bin/python is slow"]


SETS = [
    ("temperature 0.3", "temperature", 0.3), ("temp 0", "temperature", 0.0), ("top_k 5", "top_k", 5),
    ("top-k 7", "top_k", 7), ("top_p 0.5", "top_p", 0.5), ("min_p 0.2", "min_p", 0.2),
    ("repeat_penalty 1.1", "repeat_penalty", 1.1), ("presence_penalty 0.5", "presence_penalty", 0.5),
    ("frequency_penalty -1", "frequency_penalty", -1.0), ("repeat_last_n 16", "penalty_last_n", 16),
    ("seed 42", "seed", 42), ("parameter top_k 3", "top_k", 3),
]


@pytest.mark.parametrize("cmd, key, value", SETS)
def test_set_changes_one_sampling_option(cmd, key, value, capsys):
    s = fake_session()
    before = dict(s.sampling)
    run_lines(s, f"/set {cmd}\n")
    assert s.sampling == dict(before, **{key: value})
    assert "= " in capsys.readouterr().err


def test_set_seed_random_max_tokens_and_system(capsys):
    s = fake_session(seed=1)
    run_lines(s, "/set seed random\n/set max_tokens 7\n/set num_predict 9\n/set system Be brief.\n")
    assert s.sampling["seed"] is None and s.max_tokens == 9 and s.system == "Be brief."
    run_lines(s, '/set system "Quoted text"\nhi\n')
    assert s.system == "Quoted text"
    assert s.model.tokenizer.decode(s.model.tokens).startswith("Quoted text\nAlice: hi\nBob:")
    run_lines(s, "/set system\n")
    assert s.system == ""


@pytest.mark.parametrize("cmd, words", [
    ("temperature -1", "temperature must be"), ("temperature hot", "'hot' is not a number"),
    ("top_k 1.5", "'1.5' is not an integer"), ("top_p 2", "top_p must be"), ("top_p nan", "top_p must be"),
    ("min_p 3", "min_p must be"), ("repeat_penalty 0", "repeat_penalty must be"),
    ("presence_penalty 9", "presence_penalty must be"), ("seed -4", "seed must be"),
    ("max_tokens 0", "max_tokens must be"), ("repeat_last_n -1", "penalty_last_n must be"),
    ("top_k", "needs a value"), ("colour blue", "unknown setting 'colour'"), ("", "/set NAME VALUE"),
])
def test_bad_set_is_explained_and_changes_nothing(cmd, words, capsys):
    s = fake_session()
    before = (dict(s.sampling), s.max_tokens, s.system)
    run_lines(s, f"/set {cmd}\n")
    err = capsys.readouterr().err
    assert words in err, err
    assert (dict(s.sampling), s.max_tokens, s.system) == before


def test_set_verbose_and_quiet(capsys):
    s = fake_session()
    seen = []
    rc, _ = run_lines(s, "a\n/set verbose\nb\n/set quiet\nc\n",
                      timing=lambda st, first: seen.append(first) or ["TIMING"])
    assert seen == [True] and capsys.readouterr().err.count("TIMING") == 1


def test_show_lists_the_model_and_the_settings(bundled):
    s = ChatSession(bundled, max_tokens=4, temperature=0)
    rc, out = run_lines(s, "/set top_k 5\n/set system Be kind.\nhello\n/show\n")
    lines = out.splitlines()
    assert "model:" in lines and "settings:" in lines
    flat = " ".join(out.split())
    for words in ("file type Q8_0", "architecture phi2", "parameters 31.0 M", "context 256 tokens",
                  "top_k 5", "temperature 0", "seed random", "max_tokens 4", "system 'Be kind.'",
                  "conversation: 1 turn(s)", bundled.path):
        assert words in flat, words


def test_history_path_honours_phi2cpu_home_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("PHI2CPU_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert history_path() == tmp_path / "home" / ".local" / "state" / "phi2cpu" / "chat_history"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert history_path() == tmp_path / "state" / "phi2cpu" / "chat_history"
    monkeypatch.setenv("PHI2CPU_HOME", str(tmp_path / "p2"))
    assert history_path() == tmp_path / "p2" / "chat_history"


@contextlib.contextmanager
def prompt_on_pipe(history):
    """read(keys): type `keys` at a prompt_toolkit prompt and return what it reads."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    with create_pipe_input() as pipe:
        reader = prompt_reader(history, input=pipe, output=DummyOutput())

        def read(keys: str) -> str:
            pipe.send_text(keys)
            return reader()
        yield read


PASTE = "".join(f"    line_{i} = {i}\n" for i in range(12))
FUNCTION = "def thirteen_lines():\n" + PASTE   # 13 lines


def test_prompt_toolkit_bracketed_paste_is_one_message(tmp_path):
    with prompt_on_pipe(tmp_path / "h") as read:
        text = read(f"\x1b[200~{FUNCTION}\x1b[201~\r")
    assert text == FUNCTION and message_text(text) == FUNCTION.rstrip("\n")


def _loop_turns(texts) -> list:
    """The messages a ChatLoop sends for what a reader returned."""
    s, texts = fake_session(), iter(texts)

    def read():
        for text in texts:
            return text
        raise EOFError
    ChatLoop(s, write=lambda piece: None).run(read)
    return [u for u, _ in s.turns]


def test_a_paste_that_starts_with_triple_quotes_is_sent_as_it_is(tmp_path):
    """A pasted module opens with its docstring: Enter sends it, quotes and all (as ollama takes a paste),
    rather than opening a \"\"\" block that eats the docstring's quotes. The trailing \"\"\" only closes the
    block when the paste was wrongly taken for one."""
    module = '"""Helpers for lists."""\nimport os\n\ndef f(x):\n    return x\n'
    with prompt_on_pipe(tmp_path / "h") as read:
        text = read(f"\x1b[200~{module}\x1b[201~\r" + '"""\r')
    assert _loop_turns([text]) == [module.rstrip("\n")]
    # typed quotes still open a block, and a paste inside it is part of the block
    with prompt_on_pipe(tmp_path / "h") as read:
        text = read('"""' + "\x1b[200~a\nb\n\x1b[201~" + '"""\r')
    assert _loop_turns([text]) == ["a\nb"]


def test_prompt_toolkit_triple_quotes_and_history(tmp_path):
    hist = tmp_path / "state" / "chat_history"
    with prompt_on_pipe(hist) as read:
        assert read('"""first\rsecond\rthird"""\r') == '"""first\nsecond\nthird"""'
        assert read("plain\r") == "plain"
    assert hist.is_file() and "+plain" in hist.read_text()
    # a second session recalls both, newest first
    with prompt_on_pipe(hist) as read:
        assert read("\x1b[A\x1b[A\r") == '"""first\nsecond\nthird"""'


def test_unwritable_history_warns_once_and_chat_goes_on(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "dir").mkdir()
    for where in (blocker / "sub" / "chat_history", tmp_path / "dir"):   # no folder; not a file
        with prompt_on_pipe(where) as read:
            assert [read("hi\r"), read("there\r"), read("\x1b[A\r")] == ["hi", "there", "there"]  # in memory
        err = capsys.readouterr().err
        assert err.count("phi2cpu: warning: the chat history is not saved") == 1, err


def test_piped_chat_end_to_end(tmp_path):
    """Scripts pipe a conversation in: only the replies come out, and nothing goes to the history."""
    env = dict(os.environ, PHI2CPU_HOME=str(tmp_path))
    text = 'def add(a, b):\n/set max_tokens 4\n"""class A:\n    pass\n"""\n/show\n/bye\nignored\n'
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "chat", "-t", "1", "--temp", "0", "-n", "6"],
                       input=text, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ">>>" not in r.stdout.replace("    >>>", "") and "(max_tokens = 4)" in r.stderr
    assert "conversation:       2 turn(s)" in r.stdout and "max_tokens        4" in r.stdout
    assert not (tmp_path / "chat_history").exists()


class TmuxChat:
    """`phi2cpu chat` in a detached tmux session on its own tmux server; read what a person would see.
    The shell prints `[exited N]` when the program ends and keeps the pane open for reading."""

    def __init__(self, *args: str, home: Path, pipe_to: str = ""):
        self.socket = f"phi2cpu-test-{uuid.uuid4().hex[:8]}"
        cmd = " ".join(shlex.quote(a) for a in ["env", f"PHI2CPU_HOME={home}", sys.executable, "-m", "phi2cpu",
                                                "chat", *args])
        cmd += f" | {pipe_to}" if pipe_to else ""
        shell = f"{cmd}; echo \"[exited $?]\"; sleep 600"
        self._tmux("new-session", "-d", "-x", "200", "-y", "50", shell, check=True)

    def _tmux(self, *args: str, check: bool = False) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=check, env=dict(os.environ, PYTHONUNBUFFERED="1")).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-2000")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.screen()
            if len(re.findall(pattern, s, re.M)) >= count:
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern!r} x{count}; screen:\n{self.screen()}")

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", *keys, check=True)

    def paste(self, text: str) -> None:
        """Paste as a terminal does when the program asked for bracketed paste (ESC[200~ ... ESC[201~)."""
        self._tmux("set-buffer", "-b", "p", text, check=True)
        self._tmux("paste-buffer", "-p", "-b", "p", check=True)

    def last_prompt_line(self) -> str:
        return [line for line in self.screen().splitlines() if line.startswith(">>> ")][-1]

    def alive(self) -> bool:
        return "[exited " not in self.screen()

    def wait_exit(self, timeout: float = 10.0) -> int:
        return int(re.search(r"\[exited (\d+)\]", self.wait_for(r"\[exited \d+\]", timeout=timeout)).group(1))

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def tmux_chat(tmp_path):
    """start(*args): a `phi2cpu chat` whose history lives under tmp_path."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sessions = []

    def start(*args, **kw):
        s = TmuxChat(*args, home=tmp_path, **kw)
        sessions.append(s)
        return s
    yield start
    for s in sessions:
        s.close()


PROMPT_LINE = r"^>>> "


def test_tmux_chat_keeps_history_in_the_cache(tmux_chat):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "16", "--verbose")
    t.wait_for(PROMPT_LINE)
    t.send("def add(a, b):", "Enter")
    t.wait_for(PROMPT_LINE, 2)
    t.send("def mul(a, b):", "Enter")
    s = t.wait_for(PROMPT_LINE, 3)
    turns = re.findall(r"prompt: .* (\d+) tokens processed \((\d+) reused from the cache\)", s)
    assert len(turns) == 2, s
    (p1, r1), (p2, r2) = [(int(a), int(b)) for a, b in turns]
    assert r1 == 0
    # turn 2 reused turn 1 (its 16-token reply included, give or take a re-tokenized token) and read
    # only its own line: "\nAlice: def mul(a, b):\nBob:" is 12 tokens
    assert r2 >= p1 + 16 - 2 and p2 <= 12 + 2, s
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0


def test_tmux_ctrl_c_stops_the_reply_not_the_program(tmux_chat):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "1500")
    t.wait_for(PROMPT_LINE)
    t.send("def quicksort(arr):", "Enter")
    time.sleep(1.5)
    t.send("C-c")
    s = t.wait_for(r"\(reply stopped\)", timeout=30)
    t.wait_for(PROMPT_LINE, 2)
    assert t.alive(), s
    t.send("C-c")  # at the prompt: a hint, still running
    t.wait_for(r"Ctrl-D or /bye quits\)")
    assert t.alive()
    t.send("def add(a, b):", "Enter")
    t.wait_for(PROMPT_LINE, 4)
    assert t.alive()
    t.send("C-d")
    assert t.wait_exit() == 0


def test_tmux_chat_says_when_the_context_fills(tmux_chat):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "24", "--ctx", "96")
    t.wait_for(PROMPT_LINE)
    for i in range(5):
        t.send(f"def function_number_{i}(x, y):", "Enter")
        t.wait_for(PROMPT_LINE, i + 2)
    s = t.screen()
    assert "context full: dropped the" in s, s
    assert t.alive()


THIRTEEN_LINES = '''def moving_average(values, window):
    """The mean of each run of `window` values."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out'''


def _turns(screen: str) -> int:
    return int(re.findall(r"^conversation: +(\d+) turn", screen, re.M)[-1])


def test_tmux_pasted_block_is_one_turn(tmux_chat):
    assert THIRTEEN_LINES.count("\n") == 12
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "8", "--verbose")
    t.wait_for(PROMPT_LINE)
    t.paste(THIRTEEN_LINES)
    t.wait_for(r"^\.\.\.     return out$")   # all 13 lines sit in the prompt, nothing sent yet
    assert len(re.findall(r"^prompt: ", t.screen(), re.M)) == 0
    t.send("Enter")
    s = t.wait_for(r"^stopped: ")
    t.wait_for(PROMPT_LINE, 2)
    t.send("/show", "Enter")
    t.wait_for(r"^conversation: ")
    s = t.wait_for(PROMPT_LINE, 3)
    assert _turns(s) == 1, s
    # exactly one reply: one prompt-processing line, one new >>> prompt after the paste
    assert len(re.findall(r"^prompt: ", s, re.M)) == 1 and len(re.findall(r"^stopped: ", s, re.M)) == 1, s
    assert len(re.findall(PROMPT_LINE, s, re.M)) == 3, s   # start, after the reply, after /show
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0


def test_tmux_paste_is_one_turn_with_stdout_piped(tmux_chat):
    """`phi2cpu chat | tee log`: the keyboard is still a person's, so the prompt (drawn on stderr)
    still takes a pasted block as one message."""
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "8", pipe_to="cat")
    t.wait_for(PROMPT_LINE)
    t.paste(THIRTEEN_LINES)
    t.wait_for(r"^\.\.\.     return out$")
    t.send("Enter")
    t.wait_for(PROMPT_LINE, 2)
    t.send("/show", "Enter")
    s = t.wait_for(r"^conversation: ")
    assert _turns(s) == 1, s
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0


def test_tmux_triple_quotes_make_one_turn(tmux_chat):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "8", "--verbose")
    t.wait_for(PROMPT_LINE)
    t.send('"""def f(x):', "Enter")
    t.send("    y = x * 2", "Enter")
    t.send('    return y"""', "Enter")
    s = t.wait_for(r"^stopped: ")
    assert re.search(r'^>>> """def f\(x\):\n\.\.\.     y = x \* 2\n\.\.\.     return y"""$', s, re.M), s
    t.wait_for(PROMPT_LINE, 2)
    t.send("/show", "Enter")
    s = t.wait_for(r"^conversation: ")
    assert _turns(s) == 1 and len(re.findall(r"^prompt: ", s, re.M)) == 1, s
    t.send("C-d")
    assert t.wait_exit() == 0


def test_tmux_commands(tmux_chat):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "6")
    t.wait_for(PROMPT_LINE)
    t.send("/help", "Enter")
    t.wait_for(r"^Commands:")
    t.wait_for(r"The input history is kept in .*chat_history")
    t.send("/set temperature 0.3", "Enter")
    t.wait_for(r"^\(temperature = 0\.3\)")
    t.send("/set top_p 7", "Enter")
    t.wait_for(r"top_p must be a number in \(0, 1\], got 7\.0; nothing changed")
    t.send("/set max_tokens 5", "Enter")
    t.wait_for(r"^\(max_tokens = 5\)")
    t.send("def add(a, b):", "Enter")
    t.wait_for(PROMPT_LINE, 6)
    t.send("/show", "Enter")
    s = t.wait_for(r"^conversation: ")
    assert re.search(r"^  temperature +0\.3$", s, re.M) and re.search(r"^  top_p +0\.95$", s, re.M), s
    assert re.search(r"^  max_tokens +5$", s, re.M) and re.search(r"^  file type +Q8_0$", s, re.M), s
    assert _turns(s) == 1
    t.send("/frobnicate", "Enter")
    t.wait_for(r"unknown command '/frobnicate'; /help lists the commands")
    t.send("/clear", "Enter")
    t.wait_for(r"^\(conversation cleared\)")
    t.send("/reset", "Enter")
    t.wait_for(r"^\(conversation cleared\)", 2)
    t.send("/show", "Enter")
    t.wait_for(r"^conversation: ", 2)
    assert _turns(t.screen()) == 0 and t.alive()
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0


@pytest.mark.parametrize("word", ["/exit", "/quit"])
def test_tmux_exit_words(tmux_chat, word):
    t = tmux_chat("--threads", "1")
    t.wait_for(PROMPT_LINE)
    t.send(word, "Enter")
    assert t.wait_exit() == 0


def test_tmux_history_survives_sessions(tmux_chat, tmp_path):
    t = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "4")
    t.wait_for(PROMPT_LINE)
    t.send("def remembered(x):", "Enter")
    t.wait_for(PROMPT_LINE, 2)
    t.send("/bye", "Enter")
    assert t.wait_exit() == 0
    assert "+def remembered(x):" in (tmp_path / "chat_history").read_text()

    t2 = tmux_chat("--threads", "1", "--temperature", "0", "--max-tokens", "4")
    t2.wait_for(PROMPT_LINE)
    t2.send("Up")
    t2.wait_for(r"^>>> /bye")
    t2.send("Up")
    t2.wait_for(r"^>>> def remembered\(x\):")
    assert t2.last_prompt_line().rstrip() == ">>> def remembered(x):"
    t2.send("Enter")
    t2.wait_for(PROMPT_LINE, 2)
    t2.send("C-d")
    assert t2.wait_exit() == 0
