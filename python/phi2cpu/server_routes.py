"""The server's routes, on APIRouters; the state (:class:`phi2cpu.server_requests.ServerState`)
comes from ``app.state.server`` through ``Depends``. Request bodies are read whole by
:class:`phi2cpu.server_limits.RequestLimits`, then parsed, validated and tokenized on a thread of
their own (:mod:`phi2cpu.server_requests`), so ``/health`` answers meanwhile: that is why the
bodies are not declared as FastAPI parameters (their schemas are added to the OpenAPI document by
:func:`phi2cpu.server.create_app`). The answers are built here, log-probs in OpenAI's two shapes."""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator, Callable, Dict, List, Type

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from .errors import ModelFileError, Phi2Error
from .server_batch import EngineError
from .server_engine import EndEvent, ErrorEvent, Job, TextEvent, TokenLogprob
from .server_errors import APIError, bad, short
from .server_models import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
                            ChatCompletionResponse, ChatLogprobs, ChatTokenLogprob, CompletionChoice,
                            CompletionLogprobs, CompletionRequest, CompletionResponse, Delta, DetokenizeRequest,
                            DetokenizeResponse, ErrorResponse, Health, ModelCard, ModelList, PromptTokensDetails,
                            TokenizeRequest, TokenizeResponse, TokenPiece, TopLogprob, Usage)
from .server_requests import Prepared, ServerState, chat_job, checked_text, completion_job, parse_body


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



def body_schema(model: Type[BaseModel]) -> dict:
    """openapi_extra for a route that reads `model` from its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


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

def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


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
    used = _usage(sum(e.prompt_tokens for e in ends.values()), sum(e.completion_tokens for e in ends.values()),
                  sum(e.cached_tokens for e in ends.values()))
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
    prompt_used = completion_used = cached = 0
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
                cached += event.cached_tokens
                choice = CompletionChoice(index=event.index, text="", finish_reason=event.finish_reason)
                yield _sse(CompletionResponse(**head, choices=[choice]))
            else:
                yield f"data: {json.dumps(APIError(500, _error_message(event.error)).body())}\n\n"
                return
        if prep.include_usage:
            yield _sse(CompletionResponse(**head, choices=[], usage=_usage(prompt_used, completion_used, cached)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


async def _stream_chat(st: ServerState, head: dict, prep: Prepared) -> AsyncIterator[str]:
    job, tok = prep.job, st.model.tokenizer
    prompt_used = completion_used = cached = 0
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
                cached += event.cached_tokens
                yield _sse(ChatCompletionChunk(**head, choices=[
                    ChatChunkChoice(index=event.index, delta=Delta(), finish_reason=event.finish_reason)]))
            else:
                yield f"data: {json.dumps(APIError(500, _error_message(event.error)).body())}\n\n"
                return
        if prep.include_usage:
            yield _sse(ChatCompletionChunk(**head, choices=[], usage=_usage(prompt_used, completion_used, cached)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


# --- routes ------------------------------------------------------------------------------------

SSE = {"text/event-stream": {"schema": {"type": "string"}, "description": "with stream: true"}}


@public.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(st: ServerState = Depends(get_state)) -> Any:
    """Liveness and load: answers while a generation runs, with the slots busy and the requests
    queued. 503 with status "error" once the model file was truncated or rewritten under the
    running server, or the engine thread failed (it must be restarted)."""
    e = st.engine
    h = Health(model=st.model_name, requests_running=e.running, requests_waiting=e.waiting,
               slots_busy=e.slots_busy, slots_total=e.slots_total, queue_length=e.queued)
    try:
        st.model.check_files()
        if e.error is not None:
            raise e.error
    except (ModelFileError, EngineError) as err:
        h.status, h.error = "error", str(err)
        return Response(h.model_dump_json(), status_code=503, media_type="application/json")
    return h


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
    text = checked_text(req.content, "content")
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
