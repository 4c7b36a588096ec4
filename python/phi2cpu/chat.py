"""A chat whose history stays in the KV cache: each turn processes only the new text.

The conversation is rendered by a chat template (chat_template.py): Phi-2's `Alice: ...\\nBob: ...`
transcript unless the model file or the caller names another. Every turn generates from the whole transcript with ``reuse_prefix``, so the part already in the
cache (the earlier turns and the model's own replies) is not processed again. When the transcript
no longer fits, the oldest turns are dropped and what is left is processed once.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from .errors import ContextFullError, Phi2Error, SamplingError
from .chat_template import ChatTemplate, for_model
from .generate import TextStream, generate
from .lookup import lookup_params
from .sampling import sampling_params


class ChatSession:
    """One conversation with a model. ``reply(text)`` streams the answer; ``record(text)`` (done by
    the stream's consumer, or ``ask``) stores what was shown, which may be cut short by Ctrl-C."""

    def __init__(self, model, system: str = "", max_tokens: int = 256, stop: Sequence[str] = (),
                 template: Optional[ChatTemplate] = None, lookup: Any = None, **sampling: Any):
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.template = template if template is not None else for_model(model)
        self.stop = list(self.template.stop) + [s for s in stop if s not in self.template.stop]
        self.sampling = sampling
        sampling_params(**sampling)  # bad values fail now, not at the first turn
        self.lookup = lookup_params(lookup)
        self.turns: List[Tuple[str, str]] = []
        self.dropped = 0   # turns dropped so far to fit the context
        self._pending: Optional[str] = None
        self.last_stats = None   # the GenerationStats of the last `ask`

    def _reserve(self) -> int:
        """Room kept free for the reply when deciding what history fits."""
        return min(self.max_tokens, self.model.n_ctx // 2)

    def transcript(self, turns: Sequence[Tuple[str, str]]) -> str:
        """The prompt for `turns` ((user, reply) pairs; the last reply "" for the turn being answered)."""
        messages = [{"role": "system", "content": self.system}] if self.system.strip() else []
        for i, (user, reply) in enumerate(turns):
            messages.append({"role": "user", "content": user})
            if i < len(turns) - 1 or reply:
                messages.append({"role": "assistant", "content": reply})
        return self.template.render(messages)

    def _fit(self, user: str) -> Tuple[str, int]:
        """The transcript for the new turn and how many old turns had to go to make it fit."""
        limit = self.model.n_ctx - self._reserve()
        turns = self.turns + [(user, "")]
        dropped = 0
        while True:
            text = self.transcript(turns)
            if len(self.model.tokenize(text)) <= limit:
                return text, dropped
            if len(turns) == 1:
                raise ContextFullError(
                    f"this message does not fit in the {self.model.n_ctx}-token context with room for a reply")
            turns = turns[1:]
            dropped += 1

    def reply(self, user: str) -> Tuple[TextStream, int]:
        """Start answering `user`: the stream of reply text, and the number of old turns dropped
        to make room (0 normally). Call `record` with the text shown once the stream ends."""
        if not user.strip():
            raise Phi2Error("empty message")
        text, dropped = self._fit(user)
        if dropped:
            self.turns = self.turns[dropped:]
            self.dropped += dropped
        self._pending = user
        stream = generate(self.model, text, max_tokens=self.max_tokens, stop=self.stop, stream=True,
                          reuse_prefix=True, lookup=self.lookup, **self.sampling)
        return stream, dropped

    def record(self, reply: str) -> None:
        """Store the reply to the pending message (as shown: a stopped reply is kept as it was)."""
        if self._pending is None:
            raise Phi2Error("no message is waiting for a reply")
        self.turns.append((self._pending, reply))
        self._pending = None

    def ask(self, user: str) -> str:
        """Answer `user` in full and remember the exchange."""
        stream, _ = self.reply(user)
        text = "".join(stream)
        self.record(text)
        self.last_stats = stream.stats
        return text

    def update(self, max_tokens: Optional[int] = None, system: Optional[str] = None, **sampling: Any) -> None:
        """Change settings for the next replies (None leaves one as it is; seed=None means a random
        seed). A bad value raises SamplingError and changes nothing."""
        new = dict(self.sampling, **sampling)
        sampling_params(**new)
        if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                                           and max_tokens >= 1):
            raise SamplingError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        self.sampling = new
        if max_tokens is not None:
            self.max_tokens = max_tokens
        if system is not None:
            self.system = system

    def clear(self) -> None:
        """Forget the conversation (the cache is reused only where the new text matches)."""
        self.turns = []
        self._pending = None
