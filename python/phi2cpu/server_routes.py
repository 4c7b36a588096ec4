"""The server's routes, on APIRouters; the engine and the settings come from ``app.state`` through
``Depends``. Request bodies are read whole by :class:`phi2cpu.server_limits.RequestLimits`, then
parsed, validated and tokenized on a thread of their own, so ``/health`` answers meanwhile: that
is why the bodies are not declared as FastAPI parameters (their schemas are added to the OpenAPI
document by :func:`phi2cpu.server.create_app`)."""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, FrozenSet, List, Optional, Tuple, Type, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from . import grammar
from .chat_template import ChatTemplate, builtin as builtin_template
from .errors import GrammarError, Phi2Error, TemplateError
from .sampling import SAMPLING_OPTIONS, SamplingParams
from .server_engine import EndEvent, Engine, ErrorEvent, Job, TextEvent, TokenLogprob
from .server_errors import APIError, bad, from_validation, short
from .server_models import (MAX_CHOICES, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
                            ChatCompletionResponse, ChatLogprobs, ChatMessage, ChatTokenLogprob, CompletionChoice,
                            CompletionLogprobs, CompletionRequest, CompletionResponse, Delta, DetokenizeRequest,
                            DetokenizeResponse, ErrorResponse, GenerationFields, Health, ModelCard, ModelList,
                            TokenizeRequest, TokenizeResponse, TokenPiece, TopLogprob, Usage, AssistantMessage)
from .tokenizer import check_text

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


@dataclass
class ServerState:
    """What the routes need, kept in ``app.state.server``."""
    model: Any                           # a loaded phi2cpu.Model
    engine: Engine
    model_name: str                      # the id /v1/models lists and responses carry
    aliases: Optional[FrozenSet[str]]    # the names `model` may take; None: any name
    defaults: SamplingParams             # for the sampling fields a request leaves out
    api_key: Optional[str]
    metrics: Any
    prepare_pool: ThreadPoolExecutor     # parsing, validating, tokenizing: one request at a time
    created: int
    n_vocab: int
    max_prompt_bytes: int                # a prompt of more bytes cannot fit the context
    chat_template: Optional[ChatTemplate] = None  # None: Phi-2's Alice: / Bob: format


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def require_api_key(request: Request) -> None:
    """With --api-key, a request must carry ``Authorization: Bearer KEY`` (compared in constant time)."""
    key = get_state(request).api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "a valid API key is required: send the header Authorization: Bearer KEY",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)

M = TypeVar("M", bound=BaseModel)


def body_schema(model: Type[BaseModel]) -> dict:
    """openapi_extra for a route that reads `model` from its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


# --- parsing and validating (on the prepare thread) -------------------------------------------

def parse_body(raw: bytes, model: Type[M]) -> M:
    """The request's JSON object as `model`. Its size and depth were bounded by RequestLimits."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("the request body nests arrays and objects too deep") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation(e.errors(include_url=False), model) from None


def _text(v: str, param: str) -> str:
    try:
        return check_text(v, param)
    except Phi2Error as e:
        raise bad(str(e), param) from None


def check_model(st: ServerState, name: Optional[str]) -> None:
    if name is None or st.aliases is None or name in st.aliases:
        return
    raise APIError(404, f"the model {short(name)} does not exist; this server serves "
                        f"{', '.join(repr(a) for a in sorted(st.aliases))}", param="model", code="model_not_found")


def sampling(st: ServerState, req: GenerationFields) -> SamplingParams:
    """SamplingParams from the request's fields, the server's defaults for those it leaves out."""
    d = st.defaults
    kwargs: Dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty", "seed"):
        v = getattr(req, name)
        kwargs[name] = getattr(d, name) if v is None else v
    last_n = req.penalty_last_n if req.penalty_last_n is not None else req.repeat_last_n
    kwargs["penalty_last_n"] = d.penalty_last_n if last_n is None else (st.model.n_ctx if last_n == -1 else last_n)
    bias = dict(d.logit_bias)
    for tok, b in (req.logit_bias or {}).items():
        if not 0 <= tok < st.n_vocab:
            raise bad(f"logit_bias token id {tok} is outside 0..{st.n_vocab - 1}", "logit_bias")
        bias[tok] = b
    if req.ignore_eos:
        bias[st.model.tokenizer.eos_id] = -math.inf
    kwargs["logit_bias"] = bias
    try:
        return SamplingParams(**kwargs).validate()
    except Phi2Error as e:  # its messages start with the field's name
        name = str(e).split(" ", 1)[0]
        raise bad(str(e), name if name in SAMPLING_OPTIONS else None) from None


def stream_flags(req: GenerationFields) -> Tuple[bool, bool]:
    """(stream, include_usage). OpenAI refuses stream_options without stream; so does this."""
    if req.stream_options is not None and not req.stream:
        raise bad("stream_options is only allowed when stream is true", "stream_options")
    return bool(req.stream), bool(req.stream_options and req.stream_options.include_usage)


def token_ids(st: ServerState, prompt: str, param: str) -> List[int]:
    model = st.model
    n_bytes = len(_text(prompt, param).encode("utf-8"))
    if n_bytes > st.max_prompt_bytes:
        raise bad(f"the prompt is {n_bytes} bytes, more than {model.n_ctx - 1} tokens of at most "
                  f"{model.tokenizer.max_token_bytes} bytes each; the context holds {model.n_ctx} tokens "
                  f"and must leave room to generate", param, code="context_length_exceeded")
    return model.tokenizer.encode(prompt, release_gil=True) or [model.tokenizer.eos_id]


def check_length(st: ServerState, ids: List[int], param: str) -> None:
    n_ctx = st.model.n_ctx
    if len(ids) + 1 > n_ctx:
        raise bad(f"the prompt is {len(ids)} tokens; the context holds {n_ctx} tokens, so it leaves no room "
                  f"to generate (shorten the prompt or start the server with a larger --ctx-size)", param,
                  code="context_length_exceeded")


def constraint(st: ServerState, req: GenerationFields) -> Optional[grammar.Constraint]:
    """The output constraint of `response_format` (chat), llama.cpp's `json_schema` or `grammar`
    (at most one), compiled and checked against the tokenizer here, before the job is queued."""
    given = [(name, getattr(req, name, None)) for name in ("response_format", "json_schema", "grammar")]
    given = [(name, v) for name, v in given
             if v is not None and not (name == "response_format" and v.type == "text")
             and not (name == "grammar" and v == "")]  # llama.cpp's clients send "" for none
    if not given:
        return None
    if len(given) > 1:
        raise bad(f"give one of response_format, json_schema and grammar, not {' and '.join(n for n, _ in given)}",
                  given[1][0])
    name, v = given[0]
    try:
        if name == "grammar":
            c = grammar.gbnf(v)
        elif name == "json_schema":
            c = grammar.json_schema(v)
        elif v.type == "json_schema" and v.json_schema.schema_ is not None:
            c = grammar.json_schema(v.json_schema.schema_)
        else:
            c = grammar.json_object()
        c.matcher(st.model.tokenizer, st.n_vocab)
    except GrammarError as e:
        raise bad(str(e), name) from None
    return c


def _choices(n_prompts: int, n: int, param: str) -> None:
    if n_prompts * n > MAX_CHOICES:
        raise bad(f"{n_prompts} prompts x {param} {n} is more than the {MAX_CHOICES} choices one request may ask "
                  f"for", param)


@dataclass
class Prepared:
    job: Job
    stream: bool
    include_usage: bool
    n: int                               # choices per prompt returned (best_of may sample more)


def completion_job(st: ServerState, raw: bytes) -> Prepared:
    req = parse_body(raw, CompletionRequest)
    check_model(st, req.model)
    params = sampling(st, req)
    stream, include_usage = stream_flags(req)
    max_tokens = req.max_tokens
    if max_tokens is None and req.n_predict is not None:
        max_tokens = st.model.n_ctx if req.n_predict == -1 else req.n_predict
    if max_tokens is None:
        max_tokens = DEFAULT_COMPLETION_TOKENS
    if max_tokens == 0 and not req.echo:
        raise bad("max_tokens must be an integer >= 1 (0 only with echo: true)",
                  "max_tokens" if req.max_tokens is not None else "n_predict")
    n = 1 if req.n is None else req.n
    sampled = n if req.best_of is None else req.best_of
    if sampled < n:
        raise bad(f"best_of must be at least n ({n}), got {sampled}", "best_of")
    if stream and sampled > n:
        raise bad("best_of greater than n cannot stream: the best choices are known only at the end", "best_of")
    _choices(len(req.prompt), sampled, "best_of" if req.best_of is not None else "n")
    prompts, echo = [], []
    for item in req.prompt:
        if isinstance(item, str):
            ids = token_ids(st, item, "prompt")
            echo.append(item)
        else:
            if not all(0 <= t < st.n_vocab for t in item):
                raise bad(f"prompt token ids must lie in 0..{st.n_vocab - 1}", "prompt")
            ids = list(item)
            echo.append(st.model.tokenizer.decode(ids))
        check_length(st, ids, "prompt")
        prompts.append(ids)
    stops = [_text(s, "stop") for s in req.stop or []]
    job = Job(prompts, params, max_tokens, stops, n=sampled, prompt_texts=echo, echo=bool(req.echo),
              logprobs=req.logprobs, constraint=constraint(st, req))
    return Prepared(job, stream, include_usage, n)


def chat_prompt(messages: Any, template: Optional[ChatTemplate] = None) -> Tuple[str, List[str]]:
    """The prompt `template` (default: Phi-2's Alice: / Bob: format) renders for OpenAI-style
    `messages` (dicts or ChatMessage), ending with the reply's cue or inside a final assistant
    message, which is continued; and the stop strings that end the template's turn."""
    if not (isinstance(messages, list) and messages):
        raise bad("messages must be a non-empty list", "messages")
    plain = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, ChatMessage):
            try:
                msg = ChatMessage.model_validate(msg)
            except ValidationError as e:
                raise from_validation([{**err, "loc": ("messages", i, *err["loc"])}
                                       for err in e.errors(include_url=False)]) from None
        content = _text(msg.content, f"messages[{i}].content")
        plain.append({"role": "system" if msg.role == "developer" else msg.role, "content": content})
    template = template or builtin_template("phi2")
    try:
        prompt = template.render(plain)
    except TemplateError as e:
        raise bad(str(e), "messages") from None
    return prompt, list(template.stop)


def chat_job(st: ServerState, raw: bytes) -> Prepared:
    req = parse_body(raw, ChatCompletionRequest)
    check_model(st, req.model)
    params = sampling(st, req)
    stream, include_usage = stream_flags(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    max_tokens = next((v for v in (req.max_tokens, req.max_completion_tokens) if v is not None), None)
    if max_tokens is None and req.n_predict not in (None, -1):
        max_tokens = req.n_predict
    if max_tokens == 0:
        raise bad("n_predict must be -1 or an integer >= 1", "n_predict")
    n = 1 if req.n is None else req.n
    _choices(1, n, "n")
    stops = [_text(s, "stop") for s in req.stop or []]
    prompt, chat_stops = chat_prompt(req.messages, st.chat_template)
    ids = token_ids(st, prompt, "messages")
    check_length(st, ids, "messages")
    c = constraint(st, req)
    # no limit given: until the reply ends or the context is full. A constraint decides itself where
    # the reply ends and what it begins with: no turn stops, no stripping
    job = Job([ids], params, max_tokens or st.model.n_ctx, stops + (chat_stops if c is None else []), n=n,
              lstrip=c is None, logprobs=(req.top_logprobs or 0) if req.logprobs else None, constraint=c)
    return Prepared(job, stream, include_usage, n)


async def prepare(st: ServerState, request: Request, make: Callable[[ServerState, bytes], Prepared]) -> Prepared:
    st.engine.check_capacity()  # before the work of preparing a job that could not be queued
    raw = await request.body()
    return await asyncio.get_running_loop().run_in_executor(st.prepare_pool, make, st, raw)


# --- log-probs in OpenAI's two shapes ----------------------------------------------------------

def token_text(tokenizer, tok: int) -> str:
    """A token as text; one whose bytes are not UTF-8 by themselves as ``bytes:\\xNN...`` (as OpenAI)."""
    b = tokenizer.token_bytes(tok)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def completion_logprobs(tokenizer, entries: List[TokenLogprob], offset: List[int]) -> CompletionLogprobs:
    """`offset[0]` is the character (of prompt + text) where the first entry begins; it moves on."""
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(token_text(tokenizer, e.token_id))
        lps.append(e.logprob)
        if e.logprob is None:
            tops.append(None)
        else:
            top: Dict[str, float] = {}
            for i, lp in e.top:
                top.setdefault(token_text(tokenizer, i), lp)
            tops.append(top)
        offsets.append(offset[0])
        offset[0] += _chars(tokenizer.token_bytes(e.token_id))
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)


def _chars(b: bytes) -> int:
    return len(b) - sum(1 for x in b if x & 0xC0 == 0x80)


def _top(tokenizer, tok: int, lp: float) -> TopLogprob:
    b = tokenizer.token_bytes(tok)
    return TopLogprob(token=b.decode("utf-8", errors="replace"), logprob=lp, bytes=list(b))


def chat_logprobs(tokenizer, entries: List[TokenLogprob]) -> ChatLogprobs:
    content = []
    for e in entries:
        t = _top(tokenizer, e.token_id, e.logprob)
        content.append(ChatTokenLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes,
                                        top_logprobs=[_top(tokenizer, i, lp) for i, lp in e.top]))
    return ChatLogprobs(content=content)


# --- responses ---------------------------------------------------------------------------------

def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _error_message(e: BaseException) -> str:
    return str(e) if isinstance(e, Phi2Error) else f"internal error: {type(e).__name__}: {e}"


def _sse(obj: BaseModel) -> str:
    return f"data: {obj.model_dump_json()}\n\n"


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)


def _base_offset(job: Job, index: int) -> int:
    """Where a choice's own text begins in prompt + text: 0 when the prompt is echoed."""
    return 0 if job.echo else len(job.prompt_texts[index // job.n])


async def respond(st: ServerState, request: Request, prep: Prepared, chat: bool):
    st.engine.check_capacity()
    job = prep.job
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = dict(id=rid, created=int(time.time()), model=st.model_name)
    if prep.stream:
        gen = _stream_chat(st, head, prep) if chat else _stream_completion(st, head, prep)
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(_watch_disconnect(request, job.cancel))
    texts: Dict[int, List[str]] = defaultdict(list)
    lps: Dict[int, List[TokenLogprob]] = defaultdict(list)
    ends: Dict[int, EndEvent] = {}
    try:
        async for event in st.engine.events(job):
            if isinstance(event, TextEvent):
                texts[event.index].append(event.text)
                lps[event.index].extend(event.logprobs)
            elif isinstance(event, EndEvent):
                ends[event.index] = event
            elif isinstance(event, ErrorEvent):
                raise APIError(500, _error_message(event.error))
    finally:
        watcher.cancel()
    order = _best(job, ends, prep.n)
    used = _usage(sum(e.prompt_tokens for e in ends.values()), sum(e.completion_tokens for e in ends.values()))
    tok = st.model.tokenizer
    want_lp = job.logprobs is not None
    if chat:
        choices = [ChatChoice(index=out, message=AssistantMessage(content="".join(texts[i])),
                              logprobs=chat_logprobs(tok, lps[i]) if want_lp else None,
                              finish_reason=ends[i].finish_reason if i in ends else "length")
                   for out, i in enumerate(order)]
        return ChatCompletionResponse(**head, choices=choices, usage=used)
    choices = [CompletionChoice(index=out, text="".join(texts[i]),
                                logprobs=completion_logprobs(tok, lps[i], [_base_offset(job, i)]) if want_lp else None,
                                finish_reason=ends[i].finish_reason if i in ends else "length")
               for out, i in enumerate(order)]
    return CompletionResponse(**head, choices=choices, usage=used)


def _best(job: Job, ends: Dict[int, EndEvent], n: int) -> List[int]:
    """The choices to return, in order: all of them, or with best_of the n of highest mean log-prob
    of each prompt's candidates."""
    if job.n == n:
        return list(range(len(job.prompts) * n))
    order = []
    for p in range(len(job.prompts)):
        cand = range(p * job.n, (p + 1) * job.n)
        ranked = sorted(cand, key=lambda i: -(ends[i].mean_logprob if i in ends else -math.inf))
        order += ranked[:n]
    return order


async def _stream_completion(st: ServerState, head: dict, prep: Prepared) -> AsyncIterator[str]:
    job, tok = prep.job, st.model.tokenizer
    offsets = {i: [_base_offset(job, i)] for i in range(len(job.prompts) * job.n)}
    prompt_used = completion_used = 0
    want_lp = job.logprobs is not None
    try:
        async for event in st.engine.events(job):
            if isinstance(event, TextEvent):
                lp = completion_logprobs(tok, event.logprobs, offsets[event.index]) if want_lp else None
                choice = CompletionChoice(index=event.index, text=event.text, logprobs=lp)
                yield _sse(CompletionResponse(**head, choices=[choice]))
            elif isinstance(event, EndEvent):
                prompt_used += event.prompt_tokens
                completion_used += event.completion_tokens
                choice = CompletionChoice(index=event.index, text="", finish_reason=event.finish_reason)
                yield _sse(CompletionResponse(**head, choices=[choice]))
            else:
                yield f"data: {json.dumps(APIError(500, _error_message(event.error)).body())}\n\n"
                return
        if prep.include_usage:
            yield _sse(CompletionResponse(**head, choices=[], usage=_usage(prompt_used, completion_used)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


async def _stream_chat(st: ServerState, head: dict, prep: Prepared) -> AsyncIterator[str]:
    job, tok = prep.job, st.model.tokenizer
    prompt_used = completion_used = 0
    try:
        yield _sse(ChatCompletionChunk(**head, choices=[
            ChatChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(job.n)]))
        async for event in st.engine.events(job):
            if isinstance(event, TextEvent):
                lp = chat_logprobs(tok, event.logprobs) if job.logprobs is not None else None
                yield _sse(ChatCompletionChunk(**head, choices=[
                    ChatChunkChoice(index=event.index, delta=Delta(content=event.text), logprobs=lp)]))
            elif isinstance(event, EndEvent):
                prompt_used += event.prompt_tokens
                completion_used += event.completion_tokens
                yield _sse(ChatCompletionChunk(**head, choices=[
                    ChatChunkChoice(index=event.index, delta=Delta(), finish_reason=event.finish_reason)]))
            else:
                yield f"data: {json.dumps(APIError(500, _error_message(event.error)).body())}\n\n"
                return
        if prep.include_usage:
            yield _sse(ChatCompletionChunk(**head, choices=[], usage=_usage(prompt_used, completion_used)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


# --- routes ------------------------------------------------------------------------------------

SSE = {"text/event-stream": {"schema": {"type": "string"}, "description": "with stream: true"}}


@public.get("/health", response_model=Health)
async def health(st: ServerState = Depends(get_state)) -> Health:
    """Liveness and load: answers while a generation runs."""
    return Health(model=st.model_name, requests_running=st.engine.running, requests_waiting=st.engine.waiting)


def _card(st: ServerState) -> ModelCard:
    return ModelCard(id=st.model_name, created=st.created)


@protected.get("/v1/models", response_model=ModelList)
async def list_models(st: ServerState = Depends(get_state)) -> ModelList:
    return ModelList(data=[_card(st)])


@protected.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, st: ServerState = Depends(get_state)) -> ModelCard:
    if model_id != st.model_name and not (st.aliases and model_id in st.aliases):
        raise APIError(404, f"the model {short(model_id)} does not exist; this server serves {st.model_name!r}",
                       param="model", code="model_not_found")
    return _card(st)


@protected.post("/v1/completions", response_model=CompletionResponse, openapi_extra=body_schema(CompletionRequest),
                responses={200: {"content": SSE}})
async def completions(request: Request, st: ServerState = Depends(get_state)):
    """OpenAI's legacy completions: one or more prompts, n choices each, log-probs, echo, best_of."""
    return await respond(st, request, await prepare(st, request, completion_job), chat=False)


@protected.post("/v1/chat/completions", response_model=ChatCompletionResponse,
                openapi_extra=body_schema(ChatCompletionRequest), responses={200: {"content": SSE}})
async def chat_completions(request: Request, st: ServerState = Depends(get_state)):
    """OpenAI's chat completions: messages rendered by the chat template; structured output through
    response_format, json_schema or grammar."""
    return await respond(st, request, await prepare(st, request, chat_job), chat=True)


def _tokenize(st: ServerState, raw: bytes) -> TokenizeResponse:
    req = parse_body(raw, TokenizeRequest)
    text = _text(req.content, "content")
    tok = st.model.tokenizer
    ids = tok.encode(text, release_gil=True)
    if not req.with_pieces:
        return TokenizeResponse(tokens=ids)
    pieces = []
    for i in ids:
        b = tok.token_bytes(i)
        try:
            piece: Any = b.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(b)
        pieces.append(TokenPiece(id=i, piece=piece))
    return TokenizeResponse(tokens=pieces)


def _detokenize(st: ServerState, raw: bytes) -> DetokenizeResponse:
    req = parse_body(raw, DetokenizeRequest)
    if not all(0 <= t < st.n_vocab for t in req.tokens):
        raise bad(f"token ids must lie in 0..{st.n_vocab - 1}", "tokens")
    return DetokenizeResponse(content=st.model.tokenizer.decode(req.tokens))


@protected.post("/tokenize", response_model=TokenizeResponse, openapi_extra=body_schema(TokenizeRequest))
async def tokenize(request: Request, st: ServerState = Depends(get_state)):
    """Text to token ids, as llama.cpp's server."""
    raw = await request.body()
    return await asyncio.get_running_loop().run_in_executor(st.prepare_pool, _tokenize, st, raw)


@protected.post("/detokenize", response_model=DetokenizeResponse, openapi_extra=body_schema(DetokenizeRequest))
async def detokenize(request: Request, st: ServerState = Depends(get_state)):
    """Token ids to text, as llama.cpp's server."""
    raw = await request.body()
    return await asyncio.get_running_loop().run_in_executor(st.prepare_pool, _detokenize, st, raw)


@protected.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(st: ServerState = Depends(get_state)) -> Response:
    """Prometheus metrics: requests, tokens, queue depth, time to first token, time per token."""
    return Response(st.metrics.render(), media_type=st.metrics.content_type)


BODY_MODELS = (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest)
