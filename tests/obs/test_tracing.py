"""Optional OpenTelemetry traces: a server span per request, the raw-ASGI hot routes included,
continuing the caller's trace; off unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from budgetd.app import create_app
from budgetd.settings import ConfigError, from_env
from budgetd.store.connect import embedded_store
from budgetd.tracing import Tracing, tracing_from
from tests.api.conftest import asgi_client, settings_for, write_policy
from tests.engine.conftest import ACME

RESERVE = {
    "org": "acme",
    "user": "alice",
    "model": "claude-haiku-test",
    "input_tokens": 10,
    "max_tokens": 5,
}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_hot_and_litestar_routes_get_server_spans(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    write_policy(tmp_path / "policies", ACME)
    app = create_app(
        settings_for(tmp_path / "policies"),
        store=embedded_store(),
        tracing=Tracing(provider.get_tracer("test")),
    )
    async with asgi_client(app) as client:
        r = await client.post(
            "/v1/reservations", json=RESERVE, headers={"traceparent": TRACEPARENT}
        )
        assert r.status_code == 201
        rid = r.json()["reservation_id"]
        assert (await client.post(f"/v1/reservations/{rid}/release?org=acme")).status_code == 200
        assert (await client.get("/v1/budgets?org=acme")).status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"POST reserve", "POST release", "GET budgets"} <= set(spans)
    reserve = spans["POST reserve"]
    assert reserve.kind == SpanKind.SERVER
    assert format(reserve.context.trace_id, "032x") == TRACE_ID  # continues the caller's trace
    assert reserve.attributes is not None
    assert reserve.attributes["http.route"] == "reserve"
    assert reserve.attributes["http.response.status_code"] == 201
    assert reserve.attributes["budgetd.request_id"] == r.headers["x-request-id"]


def test_tracing_is_off_unless_asked() -> None:
    assert tracing_from(from_env({})) is None
    with pytest.raises(ConfigError, match="BUDGETD_TRACING='jaeger': must be one of off, otlp"):
        from_env({"BUDGETD_TRACING": "jaeger"})
