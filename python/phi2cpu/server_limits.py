"""Limits that keep one hostile or broken client from costing the server time or memory.

- `RequestLimits`: an ASGI middleware that reads each request body up to a byte limit (413 above
  it: a Content-Length that declares more is refused before any byte is read, a chunked body as
  soon as it grows past the limit) and refuses JSON nested deeper than a small limit before
  anything parses it (400). The app then receives the body as one message.
- `timed_h11_protocol`: uvicorn's HTTP/1.1 protocol with a read deadline: a request's line,
  headers and body must all arrive within `read_timeout` seconds of the connection opening (or of
  the previous response ending), else the connection is closed (with a 408 if a request had
  begun). uvicorn alone closes idle keep-alive connections but waits forever for a request that
  trickles in.
- `fix_mmap_threshold`, `release_memory`: hand freed memory back to the OS after a large request.
- `reserve_kv_cache`: makes the model's whole KV cache (every slot) resident before the server listens;
  `default_parallel`: the slots `serve` makes unless told.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
from typing import Callable, Optional

from .errors import Phi2Error

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a full 2048-token context is tens of KB even as JSON
MAX_JSON_DEPTH = 32               # chat content parts need 5; json.loads recurses ~1000 deep
DEFAULT_READ_TIMEOUT = 20.0       # seconds for one request's line, headers and body
MAX_HEAD_BYTES = 16 << 10         # a request's line and headers (uvicorn's h11_max_incomplete_event_size)
LARGE_BODY_BYTES = 64 << 10       # after a body this large, freed memory goes back to the OS

ErrorBody = Callable[[int, str, Optional[str]], dict]  # (status, message, code) -> OpenAI's error object

_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `raw`, without parsing it. Exact for valid
    JSON; for invalid JSON it may count too deep past the first error, never too shallow before it,
    so a parser that recurses on the valid prefix never goes deeper than this says."""
    import numpy as np

    # Dropping escaped backslashes, then escaped quotes, leaves only the quotes that open and close
    # strings (in valid JSON: a backslash run starts at an escape, and replace pairs from the left),
    # so every other piece between quotes is outside all strings.
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(plain.split(b'"')[::2]).translate(_BRACKET_STEP, _NOT_BRACKET)
    if not brackets:
        return 0
    return int(np.frombuffer(brackets, np.int8).cumsum(dtype=np.int64).max(initial=0))


class RequestLimits:
    """ASGI middleware: body size and JSON depth limits, checked before the app sees the request."""

    def __init__(self, app, error_body: ErrorBody, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_json_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.error_body = error_body
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, 413, f"the request body is {declared} bytes; this server takes at most "
                                          f"{self.max_body_bytes} (--max-body-bytes)", "request_too_large")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away (or was timed out) before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(send, 413, f"the request body is over {self.max_body_bytes} bytes, the most "
                                              f"this server takes (--max-body-bytes)", "request_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if body:
            depth = json_depth(body)
            if depth > self.max_json_depth:
                await self._refuse(send, 400, f"the request body nests arrays and objects {depth} deep; at most "
                                              f"{self.max_json_depth} levels are allowed", "json_too_deep")
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later calls watch for a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, send)
        finally:
            if size >= LARGE_BODY_BYTES:
                del body
                await asyncio.get_running_loop().run_in_executor(None, release_memory)

    async def _refuse(self, send, status: int, message: str, code: str) -> None:
        data = json.dumps(self.error_body(status, message, code), separators=(",", ":")).encode()
        # Connection: close, as the rest of the body is not read
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


def _content_length(scope) -> Optional[int]:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP layer refuses malformed lengths itself
    return None


def _closing_response(status: int, reason: bytes, error: dict) -> bytes:
    payload = json.dumps(error, separators=(",", ":")).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(payload))) + payload


def timed_h11_protocol(read_timeout: float, error_body: ErrorBody) -> type:
    """uvicorn's h11 protocol class with a per-request read deadline of `read_timeout` seconds,
    whose answers to requests that are not valid HTTP have OpenAI's error shape too."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout_response = _closing_response(408, b"Request Timeout", error_body(
        408, f"the request did not arrive within {read_timeout:g} seconds (--read-timeout)", "request_timeout"))
    invalid_response = _closing_response(400, b"Bad Request", error_body(
        400, f"the request is not valid HTTP/1.1, or its line and headers exceed {MAX_HEAD_BYTES} bytes",
        "invalid_http_request"))

    class TimedH11Protocol(H11Protocol):
        _read_deadline: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the whole request is in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # uvicorn's is plain text
            self.transport.write(invalid_response)
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._read_deadline = self.loop.call_later(read_timeout, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _read_timed_out(self) -> None:
            self._read_deadline = None
            if self.transport.is_closing():
                return
            # a request begun and no response yet: say why. An idle connection is closed silently,
            # as keep-alive ones are: a client may be sending its next request on it right now
            started = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
            if started and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(timeout_response)
            self.transport.close()

    return TimedH11Protocol


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 << 10  # glibc's initial value


def _glibc(name: str):
    """A glibc function, or None elsewhere."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def fix_mmap_threshold() -> None:
    """Keep glibc serving every allocation over 128 KiB with its own mapping, which goes back to
    the OS when freed. By default the threshold rises to the size of each such block freed, up to
    32 MiB, after which a large request's buffers come from the heap, and fragments of it stay."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_trim = None


def release_memory() -> None:
    """Return free heap memory to the OS (glibc's malloc_trim; nothing elsewhere). Large requests
    leave freed pages in the allocator's arenas, which would keep the process's RSS high."""
    global _trim
    if _trim is None:
        _trim = _glibc("malloc_trim") or (lambda pad: 0)
    _trim(0)


MAX_DEFAULT_PARALLEL = 4      # slots `serve` makes unless told: see default_parallel


def available_memory() -> Optional[int]:
    """Bytes of memory the OS says are available (MemAvailable), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_parallel(config, n_ctx: int, kv_type: str, memory: Optional[int] = None) -> int:
    """`serve`'s slots when --parallel is not given: 4 (a 4-token decode step reads each weight
    once, at well under twice the cost of a 1-token step), fewer when the slots' KV caches would
    take more than half of the available memory, and at least 1."""
    from .modelinfo import kv_bytes_per_seq

    memory = available_memory() if memory is None else memory
    if memory is None:
        return MAX_DEFAULT_PARALLEL
    return max(1, min(MAX_DEFAULT_PARALLEL, memory // 2 // kv_bytes_per_seq(config, n_ctx, kv_type)))


def check_parallel(config, n_ctx: int, kv_type: str, parallel: int, memory: Optional[int] = None) -> None:
    """Refuse `serve --parallel N` beyond the engine's sequences, or with slots whose KV caches
    (reserved at start) exceed the available memory, where the OS says how much that is."""
    from .model import MAX_SEQ
    from .modelinfo import kv_bytes_per_seq

    if parallel > MAX_SEQ:
        raise Phi2Error(f"--parallel must be at most {MAX_SEQ}, got {parallel}")
    memory = available_memory() if memory is None else memory
    per = kv_bytes_per_seq(config, n_ctx, kv_type)
    if memory is not None and parallel * per > memory:
        gib = 2 ** 30
        raise Phi2Error(f"--parallel {parallel} with --ctx-size {n_ctx} needs {parallel * per / gib:.2f} GiB of KV "
                        f"cache ({per / gib:.2f} GiB a slot), more than the {memory / gib:.2f} GiB of memory "
                        f"available: lower --parallel or --ctx-size")


def reserve_kv_cache(model) -> None:
    """Write every page of every sequence of `model`'s KV cache once. The engine allocates a
    sequence's cache on first use, untouched, so without this the first requests that fill the
    slots add n_seq x modelinfo.kv_bytes_per_seq (2 x n_layer x n_ctx x n_embd x 2 bytes in f16, 4 in f32)
    to the RSS for good; with it the server's memory is all there when it starts listening, and a
    request never grows it."""
    import numpy as np

    c = model.config
    dtype = np.float16 if model.kv_type == "f16" else np.float32
    for seq in range(model.n_seq):
        zeros = np.zeros((c.n_layer, model.n_ctx, c.n_embd), dtype)  # a fresh mapping: reading it costs no RSS
        model._engine.set_state(zeros, zeros, seq)
        del zeros
    model.reset(None)
