"""The ledger over HTTP, for admin keys: export it and check conservation, the same functions as
``budgetd ledger export`` and ``budgetd ledger reconcile`` (for operators who reach budgetd but
not its Redis)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Stream

from budgetd import ledger
from budgetd.api.admin import admin_only
from budgetd.api.deps import caller
from budgetd.reports import audit
from budgetd.store.events import EventQueue

MEDIA_TYPES: dict[ledger.Format, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


class ReconcileResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    """Every counter equals its ledger entries (plus the trimmed archive) and open holds."""
    report: ledger.Reconciliation


@get("/v1/admin/ledger", summary="Export the org's ledger (JSON lines or CSV), oldest first")
async def export_ledger(
    request: Request[Any, Any, Any],
    org: FromQuery[str],
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    format: FromQuery[ledger.Format] = "jsonl",
) -> Stream:
    principal = caller(request)
    admin_only(principal, org)
    request.app.state.engine.policy(org)  # an unknown org is 404, not an empty export
    queue: EventQueue = request.app.state.queue
    await audit.admin_read(queue.store, org, principal, request.url.path, request.url.query or "")

    chunks = ledger.export(
        queue.store, org, format, ledger.bound_ms(since) or 0, ledger.bound_ms(until)
    )
    return Stream(chunks, media_type=MEDIA_TYPES[format])


@get("/v1/admin/reconcile", summary="Check that every counter equals its ledger and open holds")
async def reconcile(request: Request[Any, Any, Any], org: FromQuery[str]) -> ReconcileResult:
    principal = caller(request)
    admin_only(principal, org)
    request.app.state.engine.policy(org)
    queue: EventQueue = request.app.state.queue
    await audit.admin_read(queue.store, org, principal, request.url.path, request.url.query or "")
    report = await ledger.reconcile(queue.store, org)
    return ReconcileResult(ok=report.ok, report=report)


ROUTES = [export_ledger, reconcile]
