"""Optional OpenTelemetry traces (``BUDGETD_TRACING=otlp``; off by default): one server span per
HTTP request, started by ``observe.Observed`` outside the raw-ASGI fast path, so the hot routes
are traced like every other, continuing the caller's ``traceparent``. Needs the ``otel`` extra
(``pip install 'budgetd[otel]'``); the exporter reads the standard ``OTEL_EXPORTER_OTLP_*``
variables. OpenTelemetry is imported only when tracing is on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from budgetd.settings import ConfigError, Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer


class Tracing:
    """Server spans from one tracer."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace  # noqa: PLC0415

        self.tracer = tracer
        self._extract = propagate.extract
        self._server = trace.SpanKind.SERVER

    @contextmanager
    def server_span(self, scope: Any, route: str, request_id: str) -> Iterator[Span]:
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self.tracer.start_as_current_span(
            f"{scope['method']} {route}",
            context=self._extract(carrier),
            kind=self._server,
            attributes={
                "http.request.method": scope["method"],
                "http.route": route,
                "url.path": scope["path"],
                "budgetd.request_id": request_id,
            },
        ) as span:
            yield span


def tracing_from(settings: Settings) -> Tracing | None:
    """The process's tracing: None when off; an OTLP exporter when ``otlp``."""
    if settings.tracing == "off":
        return None
    try:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "BUDGETD_TRACING=otlp needs OpenTelemetry: pip install 'budgetd[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": "budgetd"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return Tracing(trace.get_tracer("budgetd"))
