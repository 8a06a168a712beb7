"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from budgetd.api.deps import AnyRequest, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.problems import RETRY_UNAVAILABLE_S


@get("/healthz", summary="Liveness", include_in_schema=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: store reachable and a policy loaded")
async def readyz(request: AnyRequest) -> Response[dict[str, Any]]:
    engine = engine_of(request)
    store_ok = await engine.store.ping()
    policy = engine.registry.last_status
    ready = store_ok and engine.registry.loaded
    body = {
        "ready": ready,
        "store": {"ok": store_ok, "backend": engine.store.description},
        "policy": {
            "loaded": engine.registry.loaded,
            "last_reload_ok": policy.ok,
            "errors": list(policy.errors),
        },
    }
    if ready:
        return Response(body, status_code=200)
    return Response(body, status_code=503, headers={"Retry-After": str(RETRY_UNAVAILABLE_S)})


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
_READY = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["ready", "store", "policy"],
            "properties": {
                "ready": {"type": "boolean"},
                "store": {"type": "object"},
                "policy": {"type": "object"},
            },
        }
    }
}
OPERATIONS = [
    Operation(
        "GET",
        "/healthz",
        "Liveness",
        "healthz",
        ok=(200, None),
        ok_media={
            "application/json": {
                "schema": {"type": "object", "properties": {"status": {"const": "ok"}}}
            }
        },
        problems=(),
        auth=False,
        tags=("operations",),
    ),
    Operation(
        "GET",
        "/readyz",
        "Readiness: store reachable and a policy loaded",
        "readyz",
        ok=(200, None),
        ok_media=_READY,
        problems=(),
        auth=False,
        tags=("operations",),
        description="503 (with Retry-After and the same body) while not ready.",
    ),
    Operation(
        "GET",
        "/metrics",
        "Prometheus metrics",
        "metrics",
        ok=(200, None),
        ok_media={"text/plain": {"schema": {"type": "string"}}},
        problems=(),
        auth=False,
        tags=("operations",),
    ),
]
