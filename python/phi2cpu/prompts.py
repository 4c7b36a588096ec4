"""Phi-2's prompt formats (from its model card) and the stop strings that go with them.

Phi-2 is a base model: after answering it tends to write the next exercise, question or chat turn
itself. Each format's stop strings cut generation where such an invented continuation begins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

from .errors import Phi2Error


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str            # "{prompt}" is replaced by the user's text
    stop: Tuple[str, ...]    # stop strings added to the user's own
    description: str

    def wrap(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)


USER, ASSISTANT = "Alice", "Bob"   # the speaker names the model card's chat example uses

FORMATS: Dict[str, PromptFormat] = {f.name: f for f in (
    PromptFormat("raw", "{prompt}", (), "the prompt exactly as given"),
    PromptFormat("qa", "Instruct: {prompt}\nOutput:", ("\nInstruct:", "\nExercise", "\nQuestion:"),
                 "Instruct: PROMPT\\nOutput:"),
    PromptFormat("chat", f"{USER}: {{prompt}}\n{ASSISTANT}:", (f"\n{USER}:", f"\n{ASSISTANT}:"),
                 f"{USER}: PROMPT\\n{ASSISTANT}:"),
    PromptFormat("code", "{prompt}", ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n\n\n", "\n```"),
                 "the prompt as code (a signature and docstring); stops at the next top-level statement"),
)}


def get_format(name: str) -> PromptFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise Phi2Error(f"unknown prompt format {name!r}; choose from {', '.join(FORMATS)}") from None


def chat_transcript(turns: Sequence[Tuple[str, str]], system: str = "") -> str:
    """The text of a chat so far, ending with the assistant's cue: `turns` are (user, assistant)
    pairs, the last assistant reply "" for the turn being answered. `system`, if any, opens it."""
    parts: List[str] = [system.strip() + "\n"] if system.strip() else []
    for i, (user, reply) in enumerate(turns):
        parts.append(f"{USER}: {user.strip()}\n{ASSISTANT}:")
        if i < len(turns) - 1 or reply:
            parts.append(f" {reply.strip()}\n")
    return "".join(parts)


def messages_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """A chat prompt from OpenAI-style messages ({"role": "system"|"user"|"assistant", "content"}):
    system messages open it, then user / assistant turns, ending with the assistant's cue."""
    system: List[str] = []
    turns: List[List[str]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if not isinstance(content, str):
            raise Phi2Error("each message needs a string 'content'")
        if role == "system":
            system.append(content)
        elif role == "user":
            turns.append([content, ""])
        elif role == "assistant":
            if not turns or turns[-1][1]:
                turns.append(["", content])
            else:
                turns[-1][1] = content
        else:
            raise Phi2Error(f"message role must be system, user or assistant, got {role!r}")
    if not turns or turns[-1][1]:
        raise Phi2Error("the last message must be from the user")
    return chat_transcript([(u, a) for u, a in turns], "\n".join(system))
