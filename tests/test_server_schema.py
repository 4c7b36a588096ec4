"""schemathesis against `phi2cpu serve`'s own /openapi.json, over loopback: requests that fit the
schema and requests that break it, on every operation; none may get a 5xx or hang. Bounded to
about two minutes (a small context keeps each generation short; examples are derandomized, so
a run is repeatable)."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")
pytest.importorskip("prometheus_client", reason="the server needs prometheus-client: pip install \"phi2cpu[server]\"")
schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from serve_process import start_serve, stop_serve  # noqa: E402

BUDGET_S = 110        # for both modes together; the examples left when it is spent are skipped
EXAMPLES = 400        # per mode, over all operations
REQUEST_TIMEOUT = 30  # a response slower than this is a hang (the slowest valid request takes a few seconds)


@pytest.fixture(scope="module")
def server():
    proc, url = start_serve("--threads", "1", "--ctx-size", "32", "--max-queue", "4")
    yield url
    stop_serve(proc)


def test_schemathesis_finds_no_server_error_and_no_hang(server):
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/models/{model_id}"} <= paths
    deadline = time.monotonic() + BUDGET_S
    seen = {"positive": {}, "negative": {}}

    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        statuses = seen[str(mode)]

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
        @given(case=schema.as_strategy(generation_mode=mode))
        def check(case):
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=server, timeout=REQUEST_TIMEOUT)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (f"{case.method} {case.formatted_path} {case.body!r} -> "
                                                f"{response.status_code} {response.text[:500]}")

        check()
    print(f"\nschemathesis statuses: {seen}")
    assert sum(seen["positive"].values()) > 50 and sum(seen["negative"].values()) > 50
    assert 200 in seen["positive"]  # valid requests were served, not all refused
    assert set(seen["negative"]) <= {400, 404, 405, 413}
