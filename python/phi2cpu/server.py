"""An OpenAI-compatible HTTP server for one model: `phi2cpu serve`, or `create_app()` for ASGI.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming),
``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health``.

One model has one KV cache, so requests never run at the same time: every generation is a job
on a single worker thread, taken first come, first served. Each job starts from an empty cache
(`generate_tokens` resets it), so no request can see another's tokens. The event loop only
relays text: requests are parsed, validated and tokenized on a thread of their own (the tokenizer
and the engine's forward pass both release the GIL), so ``/health`` answers while either runs. A
client that disconnects cancels its job, between two tokens if it is running or before it starts
if it is still waiting.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: invalid fields
are 400, an unknown model is 404, a body over the size limit is 413, a request that does not
arrive within the read timeout is 408, a full queue is 503 (limits: :mod:`phi2cpu.server_limits`).
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import Phi2Error
from .generate import STOP_EOS, STOP_STRING, GenerationStats, TextStream, generate_tokens
from .prompts import get_format, messages_prompt
from .sampling import SAMPLING_OPTIONS, SamplingParams
from .server_limits import (DEFAULT_MAX_BODY_BYTES, DEFAULT_READ_TIMEOUT, MAX_HEAD_BYTES, RequestLimits,
                            fix_mmap_threshold, reserve_kv_cache, timed_h11_protocol)
from .tokenizer import check_text

MAX_STOP_STRINGS = 4          # as OpenAI's API
MAX_PROMPTS = 16              # prompts in one /v1/completions request
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_INT = 2 ** 63 - 1         # integer fields are int64, as OpenAI's
MAX_SEED = 2 ** 64 - 1
TOKENIZER_WORD_CACHE = 1000   # words; the library's 10,000 kept ~25 MB after prompts of random words

# request fields beyond temperature/top_p/top_k/seed -> (the value that means "off", lo, hi)
_OPTIONAL_SAMPLING = {
    "min_p": (0.0, 0.0, 1.0),
    "repeat_penalty": (1.0, 0.0, 10.0),
    "presence_penalty": (0.0, -2.0, 2.0),
    "frequency_penalty": (0.0, -2.0, 2.0),
}


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type_: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --- request fields --------------------------------------------------------------------------

def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not (_is_number(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise _bad(f"{name} must be a number in {interval}, got {_short(v)}", name)
    return float(v)


def _integer(body: dict, name: str, default: Optional[int], lo: int, hi: int = MAX_INT) -> Optional[int]:
    v = body.get(name)
    if v is None:
        return default
    if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
        bounds = f">= {lo}" if hi == MAX_INT else f"in [{lo}, {hi}]"
        raise _bad(f"{name} must be an integer {bounds}, got {_short(v)}", name)
    return v


def _short(v: object, limit: int = 60) -> str:
    """A client's value as JSON, cut short: an error message must not echo a megabyte back."""
    try:
        r = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _boolean(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(f"{name} must be true or false, got {_short(v)}", name)
    return v


def _text(v: object, param: str) -> str:
    try:
        return check_text(v, param)
    except Phi2Error as e:
        raise _bad(str(e), param) from None


def _stop_strings(body: dict) -> List[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        raise _bad(f"stop must be a non-empty string or a list of them, got {_short(v)}", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return [_text(s, "stop") for s in stops]


def _logit_bias(body: dict, n_vocab: int) -> Dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(f"logit_bias must be an object mapping token ids to numbers, got {_short(v)}", "logit_bias")
    out: Dict[int, float] = {}
    for key, bias in v.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise _bad(f"logit_bias keys must be token ids, got {_short(key)}", "logit_bias")
        tok = int(key)
        if not 0 <= tok < n_vocab:
            raise _bad(f"logit_bias token id {tok} is outside 0..{n_vocab - 1}", "logit_bias")
        if not (_is_number(bias) and -100 <= bias <= 100):
            raise _bad(f"logit_bias values must be numbers in [-100, 100], got {_short(bias)} for {key}",
                       "logit_bias")
        out[tok] = float(bias)
    return out


def _reject_unsupported(body: dict, chat: bool) -> None:
    """Fields whose non-default values this server cannot honour: refuse rather than ignore."""
    _check_n(body)
    if _boolean(body, "echo", False):
        raise _bad("echo is not supported", "echo")
    if _integer(body, "best_of", 1, 1) != 1:
        raise _bad("best_of is not supported (only 1)", "best_of")
    if body.get("suffix") not in (None, ""):
        raise _bad("suffix is not supported", "suffix")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise _bad("logprobs are not supported", "logprobs")
    if chat:
        for name in ("tools", "functions"):
            if body.get(name):
                raise _bad(f"{name} are not supported: Phi-2 has no tool-calling format", name)
        fmt = body.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise _bad("response_format other than {\"type\": \"text\"} is not supported", "response_format")


def _check_n(body: dict) -> None:
    n = body.get("n")
    if n is None:
        return
    if not (isinstance(n, int) and not isinstance(n, bool)):
        raise _bad(f"n must be an integer, got {_short(n)}", "n")
    if n != 1:
        raise _bad(f"n must be 1: this server returns one choice per prompt, got {n}", "n")


def _check_model_field(body: dict) -> Optional[str]:
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise _bad(f"model must be a string, got {_short(name)}", "model")
    return name


def _stream_flags(body: dict) -> Tuple[bool, bool]:
    """(stream, include_usage). OpenAI refuses stream_options without stream; so does this."""
    stream = _boolean(body, "stream", False)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not stream:
        raise _bad("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(opts, dict):
        raise _bad("stream_options must be an object", "stream_options")
    return stream, _boolean(opts, "include_usage", False)


def _sampling(body: dict, n_vocab: int) -> SamplingParams:
    """SamplingParams from OpenAI's fields (with OpenAI's defaults: temperature 1, top_p 1, no
    min_p, no penalties) and the common extensions top_k, min_p, repeat_penalty and
    penalty_last_n."""
    kwargs: Dict[str, Any] = {
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "top_k": _integer(body, "top_k", 0, 0),
        "seed": _integer(body, "seed", None, 0, MAX_SEED),
    }
    last_n = _integer(body, "penalty_last_n", None, 0)
    if last_n is not None:
        kwargs["penalty_last_n"] = last_n
    for name, (off, lo, hi) in _OPTIONAL_SAMPLING.items():
        kwargs[name] = _number(body, name, off, lo, hi)
    kwargs["logit_bias"] = _logit_bias(body, n_vocab)
    try:
        return SamplingParams(**kwargs).validate()
    except Phi2Error as e:  # its messages start with the field's name
        name = str(e).split(" ", 1)[0]
        raise _bad(str(e), name if name in SAMPLING_OPTIONS else None) from None


# --- prompts ---------------------------------------------------------------------------------

CHAT_ROLES = ("system", "developer", "user", "assistant")  # "developer" is OpenAI's newer "system"


def _message_text(msg: dict, i: int) -> str:
    content = msg.get("content")
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return _text(content, param)
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad(f"{param}: only text parts are supported", param)
            parts.append(_text(part["text"], param))
        return "".join(parts)
    raise _bad(f"{param} must be a string or a list of text parts", param)


def chat_prompt(messages: object) -> Tuple[str, List[str]]:
    """Phi-2's chat prompt for OpenAI-style `messages` (:func:`phi2cpu.prompts.messages_prompt`:
    system text first, then the model card's two-speaker turns, ending with the reply's cue) and
    the stop strings that cut off a turn the model invents for the user."""
    if not (isinstance(messages, list) and messages):
        raise _bad("messages must be a non-empty list", "messages")
    plain = []
    for i, msg in enumerate(messages):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)):
            raise _bad(f"messages[{i}] must be an object with a role", f"messages[{i}]")
        role = msg["role"]
        if role not in CHAT_ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {_short(role)}",
                       f"messages[{i}].role")
        plain.append({"role": "system" if role == "developer" else role, "content": _message_text(msg, i)})
    try:
        prompt = messages_prompt(plain)
    except Phi2Error as e:
        raise _bad(str(e), "messages") from None
    return prompt, list(get_format("chat").stop)


# --- the generation worker -------------------------------------------------------------------

@dataclass(eq=False)  # hashed by identity: the engine keeps a set of live jobs
class Job:
    """One request's work: a prompt per choice, run one after another on the worker thread."""
    prompts: List[List[int]]
    params: SamplingParams
    max_tokens: int
    stops: List[str]
    lstrip: bool = False  # drop whitespace before the first visible character (chat replies)
    cancel: threading.Event = field(default_factory=threading.Event)


def _until_cancelled(tokens: Iterator[int], cancel: threading.Event) -> Iterator[int]:
    """Passes tokens through; stops before asking the engine for another once `cancel` is set."""
    try:
        for tok in tokens:
            yield tok
            if cancel.is_set():
                return
    finally:
        tokens.close()


def _lstripped(pieces: Iterator[str]) -> Iterator[str]:
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            yield piece


def _finish_reason(stop_reason: str) -> str:
    return "stop" if stop_reason in (STOP_EOS, STOP_STRING) else "length"


class Engine:
    """Runs jobs one at a time on a single thread, in arrival order, and relays their events
    (``("text", index, piece)``, ``("end", index, finish_reason, prompt_tokens, completion_tokens)``,
    ``("error", exception)``) to the event loop."""

    def __init__(self, model, max_queue: int = 64):
        self.model = model
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi2cpu-generate")
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self._jobs: set = set()

    def check_capacity(self) -> None:
        with self._lock:
            if self.waiting >= self.max_queue:
                raise APIError(503, f"the server is busy: {self.waiting} requests are waiting; retry later",
                               code="server_busy")

    async def events(self, job: Job) -> AsyncIterator[tuple]:
        """Queue `job` and yield its events. Leaving the iteration early (the client went away)
        cancels the job."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed: the server is shutting down
                job.cancel.set()

        with self._lock:
            self.waiting += 1
            self._jobs.add(job)
        try:
            self._pool.submit(self._work, job, emit)
        except RuntimeError:  # the pool was shut down
            with self._lock:
                self.waiting -= 1
                self._jobs.discard(job)
            raise APIError(503, "the server is shutting down", code="server_shutting_down") from None
        try:
            while True:
                event = await queue.get()
                if event[0] == "done":
                    return
                yield event
        finally:
            job.cancel.set()

    def _work(self, job: Job, emit: Callable[[tuple], None]) -> None:
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            for index, ids in enumerate(job.prompts):
                if job.cancel.is_set():
                    return
                stats = GenerationStats()
                tokens = generate_tokens(self.model, ids, job.params, job.max_tokens, stats)
                stream = TextStream(self.model, _until_cancelled(tokens, job.cancel), job.stops, stats)
                try:
                    for piece in (_lstripped(stream) if job.lstrip else stream):
                        emit(("text", index, piece))
                finally:
                    stream.close()
                if job.cancel.is_set():
                    return
                emit(("end", index, _finish_reason(stats.stop_reason), stats.prompt_tokens,
                      stats.generated_tokens))
        except Exception as e:  # reported to the client; the worker lives on
            emit(("error", e))
        finally:
            with self._lock:
                self.running -= 1
                self._jobs.discard(job)
            emit(("done",))

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancel.set()
        self._pool.shutdown(wait=True)


# --- responses -------------------------------------------------------------------------------

def _sse(obj: object) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _error_event(e: BaseException) -> dict:
    if isinstance(e, Phi2Error):
        return APIError(500, str(e)).body()
    return APIError(500, f"internal error: {type(e).__name__}: {e}").body()


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)


def _parse_body(raw: bytes) -> dict:
    """The request's JSON object. Its size and depth were bounded by RequestLimits."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise _bad("the request body nests arrays and objects too deep") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


# --- the app ---------------------------------------------------------------------------------

def _error_body(status: int, message: str, code: Optional[str] = None) -> dict:
    return APIError(status, message, code=code).body()


def create_app(model, model_name: str, max_queue: int = 64,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """A FastAPI app serving `model` (a loaded :class:`phi2cpu.Model`) under the id `model_name`.
    Request bodies over `max_body_bytes` are refused with 413."""
    engine = Engine(model, max_queue=max_queue)
    created = int(time.time())
    n_vocab = min(model.tokenizer.n_vocab, model.config.n_vocab)
    model.tokenizer.limit_word_cache(TOKENIZER_WORD_CACHE)
    # a prompt of more bytes than this cannot fit the context, so it is refused untokenized
    max_prompt_bytes = (model.n_ctx - 1) * model.tokenizer.max_token_bytes
    # parsing, validating and tokenizing a request: off the event loop, one request at a time
    prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi2cpu-prepare")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.shutdown()
        prepare_pool.shutdown(wait=True)

    app = FastAPI(title="phi2cpu", description="OpenAI-compatible API for a Phi-2 model", lifespan=lifespan)
    app.add_middleware(RequestLimits, error_body=_error_body, max_body_bytes=max_body_bytes)
    app.state.engine = engine
    app.state.model_name = model_name

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(_bad(str(e)).body(), status_code=400)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "phi2cpu"}

    def check_model(body: dict) -> None:
        name = _check_model_field(body)
        if name is None:
            return
        if name != model_name:
            raise APIError(404, f"the model {_short(name)} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def token_ids(prompt: str, param: str) -> List[int]:
        n_bytes = len(_text(prompt, param).encode("utf-8"))
        if n_bytes > max_prompt_bytes:
            raise _bad(f"the prompt is {n_bytes} bytes, more than {model.n_ctx - 1} tokens of at most "
                       f"{model.tokenizer.max_token_bytes} bytes each; the context holds {model.n_ctx} tokens "
                       f"and must leave room to generate", param, code="context_length_exceeded")
        return model.tokenizer.encode(prompt, release_gil=True) or [model.tokenizer.eos_id]

    def check_length(ids: List[int], param: str) -> None:
        if len(ids) + 1 > model.n_ctx:
            raise _bad(f"the prompt is {len(ids)} tokens; the context holds {model.n_ctx} tokens, so it "
                       f"leaves no room to generate (shorten the prompt or start the server with a larger "
                       f"--ctx-size)", param, code="context_length_exceeded")

    def completion_prompts(body: dict) -> List[List[int]]:
        if "prompt" not in body or body["prompt"] is None:
            raise _bad("prompt is required", "prompt")
        p = body["prompt"]
        if isinstance(p, str):
            items: List[Any] = [p]
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            items = [p]  # one prompt given as token ids
        elif isinstance(p, list) and p:
            items = p
        else:
            raise _bad("prompt must be a string, a list of strings, or token ids", "prompt")
        if len(items) > MAX_PROMPTS:
            raise _bad(f"at most {MAX_PROMPTS} prompts per request, got {len(items)}", "prompt")
        out = []
        for item in items:
            if isinstance(item, str):
                ids = token_ids(item, "prompt")
            elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in item):
                if not all(0 <= t < n_vocab for t in item):
                    raise _bad(f"prompt token ids must lie in 0..{n_vocab - 1}", "prompt")
                ids = list(item)
            else:
                raise _bad("prompt must be a string, a list of strings, or token ids", "prompt")
            check_length(ids, "prompt")
            out.append(ids)
        return out

    async def respond(request: Request, job: Job, chat: bool, stream: bool, include_usage: bool):
        engine.check_capacity()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        now = int(time.time())
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": now, "model": model_name}
        if stream:
            return StreamingResponse(_stream(head, job, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_watch_disconnect(request, job.cancel))
        texts = [[] for _ in job.prompts]
        finish = ["length"] * len(job.prompts)
        used = [0, 0]
        try:
            async for event in engine.events(job):
                if event[0] == "text":
                    texts[event[1]].append(event[2])
                elif event[0] == "end":
                    _, index, reason, n_prompt, n_gen = event
                    finish[index] = reason
                    used[0] += n_prompt
                    used[1] += n_gen
                else:
                    raise APIError(500, _error_event(event[1])["error"]["message"])
        finally:
            watcher.cancel()
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": "".join(t)},
                        "logprobs": None, "finish_reason": finish[i]} for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": "".join(t), "logprobs": None, "finish_reason": finish[i]}
                       for i, t in enumerate(texts)]
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": _usage(*used)}

    async def _stream(head: dict, job: Job, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        used = [0, 0]
        try:
            if chat:
                yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}
                                                for i in range(len(job.prompts))]})
            async for event in engine.events(job):
                if event[0] == "text":
                    choice = ({"index": event[1], "delta": {"content": event[2]}} if chat
                              else {"index": event[1], "text": event[2]})
                    yield _sse({**head, "choices": [{**choice, "logprobs": None, "finish_reason": None}]})
                elif event[0] == "end":
                    _, index, reason, n_prompt, n_gen = event
                    used[0] += n_prompt
                    used[1] += n_gen
                    choice = {"index": index, "delta": {}} if chat else {"index": index, "text": ""}
                    yield _sse({**head, "choices": [{**choice, "logprobs": None, "finish_reason": reason}]})
                else:
                    yield _sse(_error_event(event[1]))
                    return
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(*used)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()

    @app.get("/health")
    async def health() -> dict:
        """Liveness and load: answers while a generation runs."""
        return {"status": "ok", "model": model_name, "requests_running": engine.running,
                "requests_waiting": engine.waiting}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != model_name:
            raise APIError(404, f"the model {_short(model_id)} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        return model_card()

    def completion_job(raw: bytes) -> Tuple[Job, Tuple[bool, bool]]:
        body = _parse_body(raw)
        check_model(body)
        _reject_unsupported(body, chat=False)
        params = _sampling(body, n_vocab)
        max_tokens = _integer(body, "max_tokens", DEFAULT_COMPLETION_TOKENS, 1)
        stops, flags = _stop_strings(body), _stream_flags(body)
        return Job(completion_prompts(body), params, max_tokens, stops), flags

    def chat_job(raw: bytes) -> Tuple[Job, Tuple[bool, bool]]:
        body = _parse_body(raw)
        check_model(body)
        _reject_unsupported(body, chat=True)
        params = _sampling(body, n_vocab)
        max_tokens = _integer(body, "max_completion_tokens", None, 1)
        max_tokens = _integer(body, "max_tokens", max_tokens, 1)
        stops, flags = _stop_strings(body), _stream_flags(body)
        prompt, chat_stops = chat_prompt(body.get("messages"))
        ids = token_ids(prompt, "messages")
        check_length(ids, "messages")
        # no limit given: until the reply ends or the context is full
        return Job([ids], params, max_tokens or model.n_ctx, stops + chat_stops, lstrip=True), flags

    async def prepare(make_job: Callable[[bytes], Tuple[Job, Tuple[bool, bool]]], request: Request):
        engine.check_capacity()  # before the work of preparing a job that could not be queued
        raw = await request.body()
        return await asyncio.get_running_loop().run_in_executor(prepare_pool, make_job, raw)

    @app.post("/v1/completions")
    async def completions(request: Request):
        job, flags = await prepare(completion_job, request)
        return await respond(request, job, False, *flags)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        job, flags = await prepare(chat_job, request)
        return await respond(request, job, True, *flags)

    return app


def serve(model, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          max_queue: int = 64, on_listen: Optional[Callable[[str], None]] = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, read_timeout: float = DEFAULT_READ_TIMEOUT) -> None:
    """Serve `model` with uvicorn until interrupted. The socket is bound and listening before
    `on_listen(url)` is called (port 0 picks a free port), so the URL is usable at once. A
    connection whose request line, headers and body do not all arrive within `read_timeout` seconds
    is closed (after a 408 if the request had begun). The whole KV cache is made resident first,
    so requests do not grow the server's memory."""
    import socket

    import uvicorn

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise Phi2Error(f"cannot resolve host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise Phi2Error(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    app = create_app(model, model_name, max_queue=max_queue, max_body_bytes=max_body_bytes)
    fix_mmap_threshold()
    reserve_kv_cache(model)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                            http=timed_h11_protocol(read_timeout, _error_body),
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    server = uvicorn.Server(config)
    if on_listen is not None:
        on_listen(f"http://{shown}:{bound_port}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
