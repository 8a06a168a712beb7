"""The ledger over HTTP, for admin keys: export it and check conservation, the same functions as
``budgetd ledger export`` and ``budgetd ledger reconcile`` (for operators who reach budgetd but
not its Redis)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, get
from litestar.response import Stream

from budgetd import ledger
from budgetd.api.admin import admin_only
from budgetd.api.deps import caller
from budgetd.api.openapi import Operation
from budgetd.api.validation import convert_query
from budgetd.contract import OrgName
from budgetd.errors import InvalidRequest
from budgetd.reports import audit
from budgetd.store.events import EventQueue

MEDIA_TYPES: dict[ledger.Format, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


class ReconcileResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    """Every counter equals its ledger entries (plus the trimmed archive) and open holds."""
    report: ledger.Reconciliation


class ExportQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    since: datetime | None = None
    """Entries at or after this time (ISO 8601; UTC without a zone), 1970 or later."""
    until: datetime | None = None
    """Entries before this time."""
    format: ledger.Format = "jsonl"


class OrgOnlyQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName


def _bound_ms(name: str, when: datetime | None) -> int | None:
    try:
        return ledger.bound_ms(when)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", field=name) from None


@get("/v1/admin/ledger", summary="Export the org's ledger (JSON lines or CSV), oldest first")
async def export_ledger(request: Request[Any, Any, Any]) -> Stream:
    principal = caller(request)
    q = convert_query(request.query_params.multi_items(), ExportQuery)
    # Every bound is checked before the first byte: a refusal after the 200 would be a broken
    # stream, not a problem.
    since, until = _bound_ms("since", q.since), _bound_ms("until", q.until)
    admin_only(principal, q.org)
    request.app.state.engine.policy(q.org)  # an unknown org is 404, not an empty export
    queue: EventQueue = request.app.state.queue
    await audit.admin_read(queue.store, q.org, principal, request.url.path, request.url.query or "")
    chunks = ledger.export(queue.store, q.org, q.format, since or 0, until)
    return Stream(chunks, media_type=MEDIA_TYPES[q.format])


@get("/v1/admin/reconcile", summary="Check that every counter equals its ledger and open holds")
async def reconcile(request: Request[Any, Any, Any]) -> ReconcileResult:
    principal = caller(request)
    org = convert_query(request.query_params.multi_items(), OrgOnlyQuery).org
    admin_only(principal, org)
    request.app.state.engine.policy(org)
    queue: EventQueue = request.app.state.queue
    await audit.admin_read(queue.store, org, principal, request.url.path, request.url.query or "")
    report = await ledger.reconcile(queue.store, org)
    request.app.state.metrics.reconcile_differences.labels(org).set(len(report.differences))
    return ReconcileResult(ok=report.ok, report=report)


ROUTES = [export_ledger, reconcile]
OPERATIONS = [
    Operation(
        "GET",
        "/v1/admin/ledger",
        "Export the org's ledger (JSON lines or CSV), oldest first",
        "admin_ledger",
        ok=(200, None),
        ok_media={media: {"schema": {"type": "string"}} for media in MEDIA_TYPES.values()},
        query=ExportQuery,
        problems=(403, 404, 422, 503),
        tags=("admin",),
    ),
    Operation(
        "GET",
        "/v1/admin/reconcile",
        "Check that every counter equals its ledger and open holds",
        "admin_reconcile",
        ok=(200, ReconcileResult),
        query=OrgOnlyQuery,
        problems=(403, 404, 422, 503),
        tags=("admin",),
    ),
]
