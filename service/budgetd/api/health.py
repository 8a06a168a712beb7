"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from budgetd.api.deps import AnyRequest, engine_of


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
    return Response(body, status_code=200 if ready else 503)


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
