"""Chat: prompt formats, a session that keeps history in the KV cache, and the real `phi2cpu chat`
driven through tmux as a person would (type, read the screen, press Ctrl-C)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

import phi2cpu
from phi2cpu.chat import ChatSession
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


class TmuxChat:
    """`phi2cpu chat` in a detached tmux session on its own tmux server; read what a person would see.
    The shell prints `[exited N]` when the program ends and keeps the pane open for reading."""

    def __init__(self, *args: str):
        self.socket = f"phi2cpu-test-{uuid.uuid4().hex[:8]}"
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "phi2cpu", "chat", *args])
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

    def alive(self) -> bool:
        return "[exited " not in self.screen()

    def wait_exit(self, timeout: float = 10.0) -> int:
        return int(re.search(r"\[exited (\d+)\]", self.wait_for(r"\[exited \d+\]", timeout=timeout)).group(1))

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def tmux_chat():
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sessions = []

    def start(*args):
        s = TmuxChat(*args)
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
