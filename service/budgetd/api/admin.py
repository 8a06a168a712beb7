"""Admin endpoints (admin keys only): recent events with their delivery state, dead letters,
the scheduler's jobs, and adjustments of budget counters."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post

from budgetd.adjustments import adjust
from budgetd.api.deps import caller, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.validation import NoParameters, convert_query, decode
from budgetd.auth import Principal
from budgetd.contract import AdjustmentRequest, AdjustmentResult, OrgName
from budgetd.errors import Forbidden
from budgetd.jobs.scheduler import Jobs, JobStatus
from budgetd.store.events import EventQueue


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    stream_id: str
    fields: dict[str, str]
    delivery: dict[str, dict[str, str]]
    """Per channel: state (done, retry, dead), attempts, last error."""


class EventsResult(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    events: list[EventView]
    dead_letters: list[dict[str, Any]]


def admin_only(principal: Principal, org: str | None = None) -> None:
    """Admin keys only (of ``org``, when one is named); everything else is 403."""
    if org is not None:
        principal.require_org(org)
    if principal.role != "admin":
        raise Forbidden("admin endpoints need an admin key")


class EventsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    """Most recent events (and dead letters) to show."""


@get("/v1/admin/events", summary="Recent events and their delivery state")
async def events(request: Request[Any, Any, Any]) -> EventsResult:
    principal = caller(request)
    q = convert_query(request.query_params.items(), EventsQuery)
    org, count = q.org, q.limit
    admin_only(principal, org)
    queue: EventQueue = request.app.state.queue
    policy = request.app.state.engine.policy(org)
    views = []
    for event in await queue.recent(org, count):
        channels = policy.notify_for(event.fields.get("budget", ""))
        delivery = {ch: await queue.delivery_state(org, event.id, ch) for ch in channels}
        views.append(
            EventView(
                id=event.id, stream_id=event.stream_id, fields=event.fields, delivery=delivery
            )
        )
    return EventsResult(org=org, events=views, dead_letters=await queue.dead_letters(org, count))


@get("/v1/admin/scheduler", summary="Jobs of this replica: last run, next run, lag")
async def scheduler(request: Request[Any, Any, Any]) -> list[JobStatus]:
    principal = caller(request)
    convert_query(request.query_params.items(), NoParameters)
    admin_only(principal)
    jobs: Jobs = request.app.state.jobs
    return jobs.snapshot(principal.org)


@post(
    "/v1/admin/adjustments",
    status_code=201,
    summary="Adjust one budget's spend in its current period (refund, credit, outside charge)",
)
async def adjustments(request: Request[Any, Any, Any]) -> AdjustmentResult:
    principal = caller(request)
    data = decode(await request.body(), AdjustmentRequest)
    admin_only(principal, data.org)
    return await adjust(engine_of(request), data, actor=f"{principal.role}:{principal.name}")


ROUTES = [events, scheduler, adjustments]
OPERATIONS = [
    Operation(
        "GET",
        "/v1/admin/events",
        "Recent events and their delivery state",
        "admin_events",
        ok=(200, EventsResult),
        query=EventsQuery,
        problems=(403, 404, 422, 503),
        tags=("admin",),
    ),
    Operation(
        "GET",
        "/v1/admin/scheduler",
        "Jobs of this replica: last run, next run, lag",
        "admin_scheduler",
        ok=(200, list[JobStatus]),
        query=NoParameters,
        problems=(403,),
        tags=("admin",),
    ),
    Operation(
        "POST",
        "/v1/admin/adjustments",
        "Adjust one budget's spend in its current period (refund, credit, outside charge)",
        "admin_adjust",
        ok=(201, AdjustmentResult),
        body=AdjustmentRequest,
        problems=(403, 404, 409, 422, 503),
        tags=("admin",),
    ),
]
