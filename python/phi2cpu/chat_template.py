"""Chat templates: OpenAI-style messages rendered into one prompt by a Jinja2 template.

Templates run in Jinja2's ImmutableSandboxedEnvironment with the variables and helpers that
Hugging Face chat templates expect (``messages``, ``add_generation_prompt``, ``bos_token``,
``eos_token``, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text), so a
template from a tokenizer_config.json or a GGUF's ``tokenizer.chat_template`` renders as it does
there. A template cannot reach Python objects beyond the messages it is given.

Built-ins (``--chat-template NAME``):

- ``phi2`` (the default): the chat format of Phi-2's model card, ``Alice: ...\\nBob: ...``. Phi-2 has
  no chat template of its own; the card gives this two-speaker format for conversations and the
  ``Instruct: ...\\nOutput:`` one for single questions, and only the former carries several turns.
- ``phi2-qa``: the card's ``Instruct: ...\\nOutput:`` format, turn after turn.
- ``chatml``: ``<|im_start|>role\\n...<|im_end|>``, the format of most chat fine-tunes of Phi-2.

A final assistant message is continued: the prompt ends inside that message, without its
end-of-turn text, so the model writes its next words (as transformers' ``continue_final_message``).
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import TemplateError
from .prompts import FORMATS

GGUF_KEY = "tokenizer.chat_template"
PHI2_EOS = "<|endoftext|>"

PHI2_CHAT = """\
{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\\n') | trim -%}
{%- if system %}{{ system + '\\n' }}{% endif -%}
{%- set ns = namespace(prev='') -%}
{%- for m in messages if m.role != 'system' -%}
  {%- if m.role == 'user' -%}
    {%- if ns.prev == 'user' %}{{ 'Bob: \\n' }}{% endif -%}
    {{ 'Alice: ' + m.content | trim + '\\n' }}
  {%- elif m.role == 'assistant' -%}
    {%- if ns.prev != 'user' %}{{ 'Alice: \\n' }}{% endif -%}
    {{ 'Bob: ' + m.content | trim + '\\n' }}
  {%- else -%}
    {{ raise_exception('message roles must be system, user or assistant, got ' + m.role) }}
  {%- endif -%}
  {%- set ns.prev = m.role -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {%- if ns.prev != 'user' %}{{ 'Alice: \\n' }}{% endif -%}
  {{ 'Bob:' }}
{%- endif -%}
"""

PHI2_QA = """\
{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\\n') | trim -%}
{%- if system %}{{ system + '\\n' }}{% endif -%}
{%- for m in messages if m.role != 'system' -%}
  {%- if m.role == 'user' %}{{ 'Instruct: ' + m.content | trim + '\\n' }}
  {%- elif m.role == 'assistant' %}{{ 'Output: ' + m.content | trim + '\\n' }}
  {%- else %}{{ raise_exception('message roles must be system, user or assistant, got ' + m.role) }}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}{{ 'Output:' }}{% endif -%}
"""

CHATML = """\
{%- for m in messages -%}
  {{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' + '\\n' }}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}
"""

# end-of-turn texts of common template families: a template that writes one stops generation at it
TURN_MARKERS = ("<|im_end|>", "<|im_start|>", "<|end|>", "<|user|>", "<|eot_id|>", "<end_of_turn>", "</s>")

BUILTINS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "phi2": (PHI2_CHAT, FORMATS["chat"].stop),
    "phi2-qa": (PHI2_QA, FORMATS["qa"].stop),
    "chatml": (CHATML, ("<|im_end|>", "<|im_start|>")),
}
DEFAULT = "phi2"


def _environment():
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TemplateError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message: str):
        raise TemplateError(f"the chat template refused the messages: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: Optional[int] = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template; ``name`` says where it came from, ``stop`` ends a turn's reply."""

    name: str
    source: str
    stop: Tuple[str, ...]
    bos_token: str = PHI2_EOS   # Phi-2 uses <|endoftext|> for both
    eos_token: str = PHI2_EOS
    _compiled: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_source(cls, source: str, name: str, stop: Optional[Sequence[str]] = None,
                    bos_token: str = PHI2_EOS, eos_token: str = PHI2_EOS) -> "ChatTemplate":
        import jinja2

        if not isinstance(source, str) or not source.strip():
            raise TemplateError(f"chat template {name}: it is empty")
        env = _environment()
        try:
            compiled = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template {name}: line {e.lineno}: {e.message}") from None
        if stop is None:
            stop = tuple(m for m in TURN_MARKERS if m in source)
        return cls(name, source, tuple(stop), bos_token, eos_token, compiled)

    def _render(self, messages: List[Mapping[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any]
                ) -> str:
        import jinja2

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"chat template {self.name}: refused by the sandbox: {e}") from None
        except Exception as e:  # whatever the template's own code raises: the messages are refused
            raise TemplateError(f"chat template {self.name}: cannot render the messages: "
                                f"{type(e).__name__}: {e}") from None

    def render(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
        """The prompt for `messages` (dicts with string "role" and "content"). It ends with the
        assistant's cue, or, when the last message is the assistant's, inside that message."""
        msgs = [dict(m) for m in messages]
        if not msgs:
            raise TemplateError("the messages are empty")
        for i, m in enumerate(msgs):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise TemplateError(f"messages[{i}] needs a string role and content")
        last = msgs[-1]
        if last["role"] != "assistant":
            return self._render(msgs, True, extra)
        content = last["content"].strip()
        if not content:  # nothing to continue: a fresh reply
            return self._render(msgs[:-1], True, extra)
        text = self._render(msgs, False, extra)
        end = text.rfind(content)
        if end < 0:
            raise TemplateError(f"chat template {self.name}: cannot continue the final assistant message: "
                                "the template does not write its text as given")
        return text[: end + len(content)]


def builtin(name: str) -> ChatTemplate:
    source, stop = BUILTINS[name]
    return ChatTemplate.from_source(source, name, stop)


def load(spec: str) -> ChatTemplate:
    """`spec` is a built-in name or a file holding a Jinja2 template (or a tokenizer_config.json
    with a "chat_template" string)."""
    if spec in BUILTINS:
        return builtin(spec)
    path = Path(spec)
    if not path.is_file():
        raise TemplateError(f"--chat-template {spec}: not a built-in ({', '.join(BUILTINS)}) and not a file")
    try:
        source = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(f"{spec}: not valid UTF-8 text (offset {e.start})") from None
    if path.suffix == ".json":
        try:
            source = json.loads(source)["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TemplateError(f"{spec}: a .json chat template must be an object with a \"chat_template\" "
                                "string") from None
        if not isinstance(source, str):
            raise TemplateError(f"{spec}: \"chat_template\" must be a string (named templates are not supported)")
    return ChatTemplate.from_source(source, spec)


def for_model(model, spec: Optional[str] = None) -> ChatTemplate:
    """The template `spec` names; else the model file's own ``tokenizer.chat_template``; else phi2."""
    if spec is not None:
        return load(spec)
    kv = getattr(getattr(model, "file", None), "kv", None) or {}
    source = kv.get(GGUF_KEY)
    if isinstance(source, str) and source.strip():
        bos, eos = (_token_text(model, kv.get(f"tokenizer.ggml.{k}_token_id")) for k in ("bos", "eos"))
        return ChatTemplate.from_source(source, f"{GGUF_KEY} of {Path(model.path).name}", bos_token=bos,
                                        eos_token=eos)
    return builtin(DEFAULT)


def _token_text(model, token_id: Any) -> str:
    """The text of the file's bos/eos token (a fine-tune may have its own), else <|endoftext|>."""
    if isinstance(token_id, int) and 0 <= token_id < model.tokenizer.n_vocab:
        return model.tokenizer.decode([token_id])
    return PHI2_EOS
