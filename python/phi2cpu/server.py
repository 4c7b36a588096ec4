"""An OpenAI-compatible HTTP server for one model: `phi2cpu serve`, or `create_app()` for ASGI.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming,
log-probs and n choices), ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /tokenize``,
``POST /detokenize``, ``GET /metrics`` (Prometheus), ``GET /health``, and ``/docs`` with
``/openapi.json`` describing every field.

The app is built the FastAPI way: the request and response bodies are pydantic models
(:mod:`phi2cpu.server_models`), requests become jobs in :mod:`phi2cpu.server_requests`, the
routes sit on APIRouters (:mod:`phi2cpu.server_routes`), and the engine
(:mod:`phi2cpu.server_engine`) and settings live in ``app.state.server``. The model's KV-cache
sequences are the server's slots: the requests in them are decoded together, one step at a time,
new ones join between steps (first come, first served), long prompts are fed in chunks, and a
freed slot keeps its tokens for the next prompt that begins the same way
(:mod:`phi2cpu.server_batch`). The event loop only relays text; a client that disconnects frees
its slot at the next step.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: invalid fields
are 400 (``param`` names the field, as ``messages[0].content``), a missing or wrong API key is 401,
an unknown model is 404 (only with ``--alias``), a body over the size limit is 413, a request that
does not arrive within the read timeout is 408, a full queue is 503 (limits:
:mod:`phi2cpu.server_limits`).
"""
from __future__ import annotations

import ipaddress
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat_template import ChatTemplate, for_model
from .errors import Phi2Error
from .lookup import LookupParams
from .sampling import SamplingParams
from .server_batch import DEFAULT_CHUNK
from .server_engine import Engine, Job  # noqa: F401  (the worker's types, for users of create_app)
from .server_errors import APIError, error_body, from_validation
from .server_limits import (DEFAULT_MAX_BODY_BYTES, DEFAULT_READ_TIMEOUT, MAX_HEAD_BYTES, RequestLimits,
                            fix_mmap_threshold, reserve_kv_cache, timed_h11_protocol)
from .server_metrics import CountRequests, Metrics
from .server_requests import ServerState, chat_prompt  # noqa: F401  (chat_prompt: for users of the module)
from .server_routes import BODY_MODELS, protected, public

TOKENIZER_WORD_CACHE = 1000   # words; the library's 10,000 kept ~25 MB after prompts of random words


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the request bodies the routes parse themselves."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                     ref_template="#/components/schemas/{model}")
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        for path in doc.get("paths", {}).values():  # invalid input is a 400 in OpenAI's shape, never a 422
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(model, model_name: str, max_queue: int = 64, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               aliases: Optional[Sequence[str]] = None, defaults: Optional[SamplingParams] = None,
               api_key: Optional[str] = None, cors_origins: Optional[Sequence[str]] = None,
               chat_template: Optional[ChatTemplate] = None, lookup: Optional[LookupParams] = None,
               batch_chunk: int = DEFAULT_CHUNK) -> FastAPI:
    """A FastAPI app serving `model` (a loaded :class:`phi2cpu.Model`) under the id `model_name`.

    Each of the model's `n_seq` sequences is a slot: that many requests (choices) are generated
    together; `batch_chunk` prompt tokens at most are evaluated per step, over all slots.

    `aliases`: the names requests may give as `model` (None: any name, for clients with a name of
    their own built in). `defaults`: the sampling settings for fields a request leaves out
    (None: `phi2cpu run`'s). `api_key`: required as a Bearer token on every route but /health and
    the docs. `cors_origins`: browser origins allowed to call the API ("*": any). `chat_template`
    renders chat messages (None: the model file's tokenizer.chat_template, else Phi-2's Alice: /
    Bob: format). `lookup`: prompt-lookup settings for requests that do not set `lookup` (None: off).
    Request bodies over `max_body_bytes` are refused with 413."""
    if api_key is not None and not api_key:
        raise Phi2Error("the API key must not be empty")
    model.tokenizer.limit_word_cache(TOKENIZER_WORD_CACHE)
    engine = Engine(model, max_queue=max_queue, chunk=batch_chunk)  # Phi2Error for a bad batch_chunk
    metrics = engine.metrics = Metrics(waiting=lambda: engine.waiting, running=lambda: engine.running,
                                       slots_busy=lambda: engine.slots_busy, slots_total=engine.slots_total)
    prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi2cpu-prepare")
    state = ServerState(
        model=model, engine=engine, model_name=model_name,
        aliases=frozenset(aliases) if aliases else None,
        defaults=(defaults or SamplingParams()).validate(), api_key=api_key, metrics=metrics,
        prepare_pool=prepare_pool, created=int(time.time()),
        n_vocab=min(model.tokenizer.n_vocab, model.config.n_vocab),
        max_prompt_bytes=(model.n_ctx - 1) * model.tokenizer.max_token_bytes,
        chat_template=chat_template or for_model(model), lookup=lookup.validate() if lookup else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.shutdown()
        prepare_pool.shutdown(wait=True)

    app = FastAPI(title="phi2cpu", description="OpenAI-compatible API for a Phi-2 model", lifespan=lifespan)
    app.state.server = state
    app.state.engine = engine
    app.state.model_name = model_name
    app.include_router(public)
    app.include_router(protected)
    app.openapi = lambda: _openapi(app)

    app.add_middleware(RequestLimits, error_body=error_body, max_body_bytes=max_body_bytes)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    app.add_middleware(CountRequests, metrics=metrics,
                       endpoints=[getattr(r, "path", "") for r in public.routes + protected.routes])

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        prefix = 1 if errors and errors[0].get("loc", ())[:1] in (("body",), ("query",), ("path",)) else 0
        return JSONResponse(from_validation(errors, drop_prefix=prefix).body(), status_code=400)

    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def serve(model, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          max_queue: int = 64, on_listen: Optional[Callable[[str], None]] = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, read_timeout: float = DEFAULT_READ_TIMEOUT,
          aliases: Optional[Sequence[str]] = None, defaults: Optional[SamplingParams] = None,
          api_key: Optional[str] = None, cors_origins: Optional[Sequence[str]] = None,
          chat_template: Optional[ChatTemplate] = None, lookup: Optional[LookupParams] = None,
          batch_chunk: int = DEFAULT_CHUNK) -> None:
    """Serve `model` with uvicorn until interrupted. The socket is bound and listening before
    `on_listen(url)` is called (port 0 picks a free port), so the URL is usable at once. A
    connection whose request line, headers and body do not all arrive within `read_timeout` seconds
    is closed (after a 408 if the request had begun). The whole KV cache is made resident first,
    so requests do not grow the server's memory. Binding beyond loopback without `api_key` warns.
    The other arguments are :func:`create_app`'s."""
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
    if api_key is None and not _is_loopback(bound_host):
        print(f"phi2cpu: warning: listening on {shown}, beyond this machine, without an API key: anyone who can "
              f"reach it can use the model (set --api-key or PHI2CPU_API_KEY)", file=sys.stderr, flush=True)
    app = create_app(model, model_name, max_queue=max_queue, max_body_bytes=max_body_bytes, aliases=aliases,
                     defaults=defaults, api_key=api_key, cors_origins=cors_origins, chat_template=chat_template,
                     lookup=lookup, batch_chunk=batch_chunk)
    fix_mmap_threshold()
    reserve_kv_cache(model)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                            http=timed_h11_protocol(read_timeout, error_body),
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    server = uvicorn.Server(config)
    if on_listen is not None:
        on_listen(f"http://{shown}:{bound_port}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
