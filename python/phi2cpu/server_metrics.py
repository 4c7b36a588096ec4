"""The server's Prometheus metrics (GET /metrics), in a registry of each app's own.

- ``phi2cpu_requests_total{endpoint, status}``: HTTP requests answered (refusals included).
- ``phi2cpu_prompt_tokens_total``, ``phi2cpu_completion_tokens_total``: tokens read and generated.
- ``phi2cpu_prompt_tokens_evaluated_total``: prompt tokens the model actually processed (the rest
  came from a slot's cache), including the last prompt token that each extra choice (n, best_of)
  evaluates again.
- ``phi2cpu_queue_depth``, ``phi2cpu_requests_running``: jobs waiting for the model, and running.
- ``phi2cpu_slots_busy``, ``phi2cpu_slots_total``: KV-cache slots generating, and all of them.
- ``phi2cpu_time_to_first_token_seconds``: from a job's arrival in the queue to its first token.
- ``phi2cpu_time_per_output_token_seconds``: between two generated tokens of one choice.
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, waiting: Callable[[], int], running: Callable[[], int],
                 slots_busy: Callable[[], int] = lambda: 0, slots_total: int = 1):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("phi2cpu_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("phi2cpu_prompt_tokens", "prompt tokens evaluated", registry=r)
        self.completion_tokens = Counter("phi2cpu_completion_tokens", "tokens generated", registry=r)
        self.evaluated = Counter("phi2cpu_prompt_tokens_evaluated",
                                 "prompt tokens the model processed (not taken from a slot's cache; each extra choice's re-evaluated "
                                 "last prompt token included)", registry=r)
        Gauge("phi2cpu_slots_busy", "KV-cache slots generating", registry=r).set_function(slots_busy)
        Gauge("phi2cpu_slots_total", "KV-cache slots (--parallel)", registry=r).set(slots_total)
        Gauge("phi2cpu_queue_depth", "requests waiting for the model", registry=r).set_function(waiting)
        Gauge("phi2cpu_requests_running", "requests the model is generating for", registry=r).set_function(running)
        self.ttft = Histogram("phi2cpu_time_to_first_token_seconds",
                              "seconds from a request joining the queue to its first generated token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("phi2cpu_time_per_output_token_seconds",
                              "seconds between two generated tokens", buckets=_TPOT_BUCKETS, registry=r)

    # called from the worker thread (prometheus_client's metrics are thread-safe)
    def prompt_evaluated(self, n: int) -> None:
        self.evaluated.inc(n)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token_interval(self, seconds: float) -> None:
        self.tpot.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: counts each HTTP response by route and status (paths that are no route
    count as "other", so a scan of random URLs cannot grow the label set)."""

    def __init__(self, app, metrics: Metrics, endpoints: Iterable[str]):
        self.app, self.metrics, self.endpoints = app, metrics, set(endpoints)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else ("/v1/models/{id}" if path.startswith("/v1/models/")
                                                        else "other")

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
