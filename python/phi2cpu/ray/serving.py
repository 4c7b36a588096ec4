"""The app of ``phi2cpu serve`` as a Ray Serve deployment: N replicas, each one phi2cpu engine.

Each replica loads the model itself (a path or a store name that must resolve on every node, or
None for the bundled demo model), with `threads` engine threads and as many Ray CPUs reserved, and
serves :func:`phi2cpu.server.create_app`'s FastAPI app unchanged: the same routes, validation,
errors and answers. Serve's proxy spreads requests over the replicas; within a replica they run one
at a time, each from an empty cache, as in ``phi2cpu serve``. Every response carries the header
``x-phi2cpu-replica`` naming the replica that made it.

Entry points: ``phi2cpu serve --ray --replicas N`` (:func:`run`), ``serve run phi2cpu.ray:app
model=... threads=1 replicas=2``, or a Serve config file / KubeRay RayService whose application has
``import_path: phi2cpu.ray:app`` and ``args`` as :class:`AppArgs`.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from phi2cpu.cliargs import MAX_THREADS
from phi2cpu.errors import Phi2Error
from phi2cpu.sampling import SamplingParams, sampling_params
from phi2cpu.server_limits import DEFAULT_MAX_BODY_BYTES

DEPLOYMENT = "phi2cpu"   # the ingress; ENGINE is the engine replicas' deployment
ENGINE = "phi2cpu-engine"
APP_NAME = "phi2cpu"
REPLICA_HEADER = b"x-phi2cpu-replica"
RETRIES_HEADER = b"x-phi2cpu-retries"  # on an answer that came from another replica after one was lost


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica loads and serves (sent to each replica, so plain picklable values)."""
    model: Optional[str] = None          # path or store name on each node; None: the bundled demo model
    threads: int = 1                     # engine threads per replica (and Ray CPUs reserved for it)
    n_ctx: int = 2048
    aliases: Tuple[str, ...] = ()        # as `serve --alias`; the first is the id /v1/models lists
    defaults: Optional[SamplingParams] = None
    api_key: Optional[str] = None        # None: $PHI2CPU_API_KEY in the replica's environment, else none
    cors_origins: Tuple[str, ...] = ()
    chat_template: Optional[str] = None  # a built-in name or a template file on each node
    max_queue: int = 64
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def served_name(path: str, aliases: Tuple[str, ...]) -> str:
    """The model id, as ``phi2cpu serve`` picks it: the first alias, else the store name, else the
    file name without .gguf."""
    from phi2cpu.store import name_of

    if aliases:
        return aliases[0]
    name = name_of(path) or os.path.basename(path)
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


class _NameReplica:
    """ASGI middleware: every HTTP response names the replica that made it."""

    def __init__(self, app, replica: bytes):
        self.app, self.replica = app, replica

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, named)


def build_replica_app(settings: ReplicaSettings):
    """Load the model and build the server app, in a replica (Serve calls this as it starts one)."""
    import phi2cpu
    from phi2cpu.chat_template import for_model
    from phi2cpu.server import create_app
    from phi2cpu.server_limits import fix_mmap_threshold, reserve_kv_cache

    model = phi2cpu.load(settings.model, threads=settings.threads, n_ctx=settings.n_ctx)
    api_key = settings.api_key if settings.api_key is not None else os.environ.get("PHI2CPU_API_KEY") or None
    app = create_app(model, served_name(model.path, settings.aliases), max_queue=settings.max_queue,
                     max_body_bytes=settings.max_body_bytes, aliases=settings.aliases or None,
                     defaults=settings.defaults, api_key=api_key, cors_origins=settings.cors_origins or None,
                     chat_template=for_model(model, settings.chat_template))
    fix_mmap_threshold()
    reserve_kv_cache(model)
    replica = serve.get_replica_context().replica_id.unique_id
    app.add_middleware(_NameReplica, replica=replica.encode())
    return app


class EngineReplica:
    """One phi2cpu engine serving the app; the ingress hands it whole HTTP requests."""

    def __init__(self, settings: ReplicaSettings):
        self.app = build_replica_app(settings)

    def describe(self) -> Dict[str, Any]:
        """This replica's engine: its id, model file, threads and context."""
        model = self.app.state.server.model
        return {"replica": serve.get_replica_context().replica_id.unique_id, "model": str(model.path),
                "threads": model.threads, "n_ctx": model.n_ctx}

    async def http(self, scope: Dict[str, Any], body: bytes) -> AsyncIterator[Dict[str, Any]]:
        """Run one request through the app; yield its ASGI response messages. Cancelling the
        iteration (the client went away) cancels the request."""
        messages: asyncio.Queue = asyncio.Queue()
        sent = False
        hang = asyncio.Event()

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await hang.wait()  # the client is there until this request is cancelled

        async def send(message):
            await messages.put(message)

        task = asyncio.create_task(self.app(scope, receive, send))
        task.add_done_callback(lambda _: messages.put_nowait(None))
        try:
            while True:
                message = await messages.get()
                if message is None:
                    break
                yield message
            task.result()  # an exception escaping the app is the request's error
        finally:
            task.cancel()


_COPIED = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
           "root_path", "headers", "client", "server")


def _error(status: int, message: str, code: str) -> List[Dict[str, Any]]:
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body.encode(), "more_body": False}]


class Ingress:
    """The deployment's HTTP entry: forwards each request to an engine replica, and sends it to
    another one when the replica is lost before its answer is out. An answer that is not a stream
    is held until it is whole, so it is sent whole or retried; a stream is relayed as it comes, and
    one cut by a lost replica ends with an error event. When every try is lost: a 503."""

    def __init__(self, retries: int, max_body_bytes: int):
        self.retries, self.max_body_bytes = retries, max_body_bytes
        self.engine = None

    def _handle(self):
        if self.engine is None:
            app_name = serve.get_replica_context().app_name
            self.engine = serve.get_deployment_handle(ENGINE, app_name=app_name).options(stream=True)
        return self.engine

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more and len(body) <= self.max_body_bytes:  # the engine app answers 413 to what is over
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        forward = asyncio.create_task(self._forward({k: scope[k] for k in _COPIED if k in scope}, body, send))
        watch = asyncio.create_task(self._until_disconnect(receive))
        done, _ = await asyncio.wait({forward, watch}, return_when=asyncio.FIRST_COMPLETED)
        if forward not in done:
            forward.cancel()  # the client went away: the engine's request is cancelled with it
        watch.cancel()
        await asyncio.gather(forward, watch, return_exceptions=True)

    async def _until_disconnect(self, receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def _forward(self, scope: Dict[str, Any], body: bytes, send) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        lost = None
        for attempt in range(self.retries + 1):
            streaming, held = False, []  # an answer that is not a stream is held until it is whole
            responses = self._handle().http.remote(scope, body)
            try:
                async for message in responses:
                    if message["type"] == "http.response.start":
                        headers = list(message.get("headers", []))
                        streaming = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                        for k, v in headers)
                        if attempt:
                            message = {**message, "headers": headers + [(RETRIES_HEADER, str(attempt).encode())]}
                    if streaming:
                        await send(message)
                    else:
                        held.append(message)
                for message in held:
                    await send(message)
                return
            except asyncio.CancelledError:
                responses.cancel()
                raise
            except (RayActorError, ActorUnavailableError) as e:
                lost = e
                if streaming:  # part of the answer is out: it cannot be sent again
                    note = {"error": {"message": f"the replica serving this request was lost: {_why(e)}",
                                      "type": "server_error", "param": None, "code": "replica_lost"}}
                    await send({"type": "http.response.body", "more_body": False,
                                "body": f"data: {json.dumps(note)}\n\n".encode()})
                    return
        for message in _error(503, f"the replica serving this request was lost, {self.retries + 1} times: "
                                   f"{_why(lost)}; retry later", "replica_lost"):
            await send(message)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _ingress_builder(retries: int, max_body_bytes: int) -> Callable[[], Any]:
    def build():  # a function, as serve.ingress requires for an app built on the replica
        return Ingress(retries, max_body_bytes)
    return build


def _check(name: str, value: Any, low: float, high: Optional[float] = None, kind: type = int) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise Phi2Error(f"{name} must be {'an integer' if kind is int else 'a number'} {span}, got {value!r}")


def deployment(model: Optional[str] = None, *, threads: int = 1, replicas: int = 1,
               max_replicas: Optional[int] = None, target_ongoing_requests: float = 2.0,
               max_ongoing_requests: int = 4, retries: int = 2, ingress_replicas: int = 1, **settings: Any):
    """A Serve application of `replicas` phi2cpu engine replicas with `threads` engine threads
    each (each reserves `threads` Ray CPUs), behind `ingress_replicas` ingress replicas (no CPUs
    reserved) that relay requests and send one to another engine replica, up to `retries` times,
    when its replica is lost before answering. With `max_replicas` above `replicas`, Serve
    autoscales the engines between the two, aiming at `target_ongoing_requests` per replica.
    `max_ongoing_requests`: requests Serve hands one engine replica at once (it runs them one at a
    time; the rest wait at Serve's router, where an idle replica can take them). `settings` are
    the other :class:`ReplicaSettings` fields."""
    _check("threads", threads, 1, MAX_THREADS)
    _check("max_ongoing_requests", max_ongoing_requests, 1)
    _check("target_ongoing_requests", target_ongoing_requests, 0.001, kind=(int, float))
    _check("retries", retries, 0)
    _check("ingress_replicas", ingress_replicas, 1)
    if max_replicas is None:
        _check("replicas", replicas, 1)
        scaling: Dict[str, Any] = {"num_replicas": replicas}
    else:
        _check("replicas", replicas, 0)
        _check("max_replicas", max_replicas, max(1, replicas))
        scaling = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                          "initial_replicas": max(1, replicas),
                                          "target_ongoing_requests": target_ongoing_requests}}
    for key in ("aliases", "cors_origins"):
        if settings.get(key) is not None:
            settings[key] = tuple(settings[key])
    unknown = sorted(set(settings) - set(ReplicaSettings.__dataclass_fields__) - {"model", "threads"})
    if unknown:
        raise Phi2Error(f"unknown replica setting {unknown[0]!r}")
    replica = ReplicaSettings(model=None if model is None else str(model), threads=threads, **settings)
    engine = serve.deployment(EngineReplica, name=ENGINE, max_ongoing_requests=max_ongoing_requests,
                              ray_actor_options={"num_cpus": threads}, **scaling).bind(replica)
    ingress = serve.ingress(_ingress_builder(retries, replica.max_body_bytes))()
    return serve.deployment(ingress, name=DEPLOYMENT, num_replicas=ingress_replicas, max_ongoing_requests=10_000,
                            ray_actor_options={"num_cpus": 0}).bind(engine)


class AppArgs(BaseModel):
    """The ``args`` of ``import_path: phi2cpu.ray:app`` (a Serve config file, a RayService, or
    ``serve run phi2cpu.ray:app key=value ...``)."""
    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = None
    threads: int = Field(1, ge=1, le=MAX_THREADS)
    replicas: int = Field(1, ge=0)
    max_replicas: Optional[int] = Field(None, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_ongoing_requests: int = Field(4, ge=1)
    n_ctx: int = Field(2048, ge=1)
    aliases: List[str] = []
    cors_origins: List[str] = []
    chat_template: Optional[str] = None
    max_queue: int = Field(64, ge=1)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    # sampling settings for fields a request leaves out (temperature, top_k, ...): `serve --temp` etc.
    defaults: Dict[str, Any] = {}


def app(args: Union[AppArgs, Dict[str, Any], None] = None):
    """The Serve application builder named by ``import_path: phi2cpu.ray:app``. The API key comes
    from ``PHI2CPU_API_KEY`` in the replicas' environment (a config's ``runtime_env.env_vars`` or a
    Kubernetes secret), never from the config file."""
    try:
        a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise Phi2Error(f"phi2cpu.ray:app: bad args: {why}") from None
    return deployment(a.model, threads=a.threads, replicas=a.replicas, max_replicas=a.max_replicas,
                      target_ongoing_requests=a.target_ongoing_requests,
                      max_ongoing_requests=a.max_ongoing_requests, n_ctx=a.n_ctx, aliases=a.aliases,
                      cors_origins=a.cors_origins, chat_template=a.chat_template, max_queue=a.max_queue,
                      max_body_bytes=a.max_body_bytes,
                      defaults=sampling_params(**a.defaults) if a.defaults else None)


def run(application, *, host: str = "127.0.0.1", port: int = 8000, address: Optional[str] = None,
        on_listen: Optional[Callable[[str], None]] = None, blocking: bool = True) -> str:
    """Deploy `application` under the name ``phi2cpu`` at route ``/`` on a Ray cluster (`address`,
    else $RAY_ADDRESS, else a local one started here), with Serve's HTTP proxy on host:port. Waits
    until every replica is up, calls `on_listen(url)`, then (`blocking`) serves until Ctrl-C or
    SIGTERM, and shuts Serve down. Returns the URL."""
    import ray

    if not 1 <= port <= 65535:
        raise Phi2Error(f"--port must be in 1..65535 with --ray (Serve's proxy cannot pick one), got {port}")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, logging_level="warning",
                 log_to_driver=False)
    stop = threading.Event()
    saved = {}
    if blocking and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ray's driver set-up replaces the SIGINT default
            saved[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application, name=APP_NAME, route_prefix="/")
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        if on_listen is not None:
            on_listen(url)
        if not blocking:
            return url
        while not stop.wait(0.5):
            pass
    except BaseException:
        serve.shutdown()
        raise
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    serve.shutdown()
    return url


def serve_from_cli(args, path, *, defaults: SamplingParams, api_key: Optional[str],
                   origins: Optional[List[str]]) -> int:
    """``phi2cpu serve --ray``: `args` are serve's parsed options, `path` the resolved MODEL."""
    import sys

    if not args.ray:
        raise Phi2Error("--replicas, --max-replicas and --ray-address need --ray")
    replicas = args.replicas or 1
    if args.max_replicas is not None and args.max_replicas < replicas:
        raise Phi2Error(f"--max-replicas ({args.max_replicas}) must be at least --replicas ({replicas})")
    from phi2cpu.server_limits import DEFAULT_READ_TIMEOUT

    if args.read_timeout != DEFAULT_READ_TIMEOUT:
        print("phi2cpu: warning: --read-timeout has no effect with --ray: Serve's HTTP proxy reads the requests",
              file=sys.stderr, flush=True)
    threads = args.threads or 1
    aliases = tuple(args.aliases or ())
    application = deployment(str(path), threads=threads, replicas=replicas, max_replicas=args.max_replicas,
                             n_ctx=args.ctx, aliases=aliases, defaults=defaults, api_key=api_key,
                             cors_origins=origins, chat_template=args.chat_template, max_queue=args.max_queue,
                             max_body_bytes=args.max_body_bytes)
    name = served_name(str(path), aliases)
    count = f"{replicas}..{args.max_replicas}" if args.max_replicas else str(replicas)

    def listening(url: str) -> None:
        print(f"phi2cpu: serving {name} at {url}/v1 on Ray ({count} replicas of {threads} "
              f"thread{'s' if threads > 1 else ''}, context "
              f"{args.ctx} tokens); Ctrl-C stops", file=sys.stderr, flush=True)

    run(application, host=args.host, port=args.port, address=args.ray_address, on_listen=listening)
    return 0
