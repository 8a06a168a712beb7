"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from budgetd.api.deps import AnyRequest, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.problems import RETRY_UNAVAILABLE_S


@get("/healthz", summary="Liveness", include_in_schema=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# A loop that takes longer than this to run a ready callback is too busy to decide in time.
LOOP_LAG_LIMIT_S = 1.0


async def _loop_lag_s() -> float:
    """How long a callback waits for its turn on this event loop right now."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0)
    return loop.time() - started


@get("/readyz", summary="Readiness: this pod can decide (policy and prices loaded, loop healthy)")
async def readyz(request: AnyRequest) -> Response[dict[str, Any]]:
    """Ready means this pod can decide a reservation: a policy set (with its price table) is
    loaded and the event loop is responsive. Store health is reported in the body and in
    ``budgetd_store_up`` but does not make the pod unready: Redis is shared by every replica,
    so an outage would take every pod out of the Service at once, and the per-rule
    ``failure: fail_open|fail_closed`` setting, which decides what callers get while Redis is
    down, would never be consulted (docs/decisions.md, "Readiness")."""
    engine = engine_of(request)
    store_ok = await engine.store.ping()
    engine.metrics.store_up.set(1 if store_ok else 0)
    lag_s = await _loop_lag_s()
    loop_ok = lag_s < LOOP_LAG_LIMIT_S
    policy = engine.registry.last_status
    ready = engine.registry.loaded and loop_ok
    keys = request.app.state.api_keys
    body: dict[str, Any] = {
        "ready": ready,
        "store": {
            "ok": store_ok,
            "backend": engine.store.description,
            "data_lost_at": request.app.state.jobs.data_lost_at(),
        },
        "policy": {
            "loaded": engine.registry.loaded,
            "last_reload_ok": policy.ok,
            "errors": list(policy.errors),
        },
        "event_loop": {"ok": loop_ok, "lag_s": round(lag_s, 6)},
    }
    if keys is not None:
        body["keys"] = {
            "loaded": keys.loaded,
            "last_reload_ok": keys.last_status.ok,
            "errors": list(keys.last_status.errors),
        }
    if ready:
        return Response(body, status_code=200)
    return Response(body, status_code=503, headers={"Retry-After": str(RETRY_UNAVAILABLE_S)})


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
_READY = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["ready", "store", "policy", "event_loop"],
            "properties": {
                "ready": {"type": "boolean"},
                "store": {"type": "object"},
                "policy": {"type": "object"},
                "event_loop": {"type": "object"},
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
        "Readiness: this pod can decide (policy and prices loaded, event loop responsive)",
        "readyz",
        ok=(200, None),
        ok_media=_READY,
        problems=(),
        auth=False,
        tags=("operations",),
        description="503 (with Retry-After and the same body) while not ready. Store health is "
        "in the body (store.ok), not in the status: a Redis outage is answered per rule "
        "(fail_open / fail_closed) by every ready pod.",
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
