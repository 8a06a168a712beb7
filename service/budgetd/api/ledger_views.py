"""The ledger over HTTP, for admin keys: export it and check conservation, the same functions as
``budgetd ledger export`` and ``budgetd ledger reconcile`` (for operators who reach budgetd but
not its Redis)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

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
from budgetd.expiry import counter_expiry
from budgetd.reports import audit
from budgetd.store.events import EventQueue
from budgetd.yaml_errors import describe_pattern

MEDIA_TYPES: dict[ledger.Format, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


class ReconcileResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    """Every counter equals its ledger entries (plus the trimmed archive) and open holds."""
    report: ledger.Reconciliation


LEDGER_BOUND_WORDS = "an RFC 3339 time from 1970 on, e.g. 2026-11-01T00:00:00Z"
# Text, not a datetime: a lax conversion would also read "0" as an epoch timestamp.
LedgerBound = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(
            # Month lengths are in the pattern (a 31st of November is not a date); 29 February
            # is left out, being a date only in leap years.
            r"^(19[7-9][0-9]|[2-9][0-9]{3})-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
            r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
            r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-][01][0-9]:[0-5][0-9])$",
            LEDGER_BOUND_WORDS,
        ),
        description=f"Ledger bound: {LEDGER_BOUND_WORDS}.",
    ),
]


class ExportQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    since: LedgerBound | None = None
    """Entries at or after this time (RFC 3339; a time without a zone is UTC), 1970 or later."""
    until: LedgerBound | None = None
    """Entries before this time."""
    format: ledger.Format = "jsonl"


class OrgOnlyQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName


def _bound_ms(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        ms = ledger.bound_ms(datetime.fromisoformat(text))
    except ValueError as exc:  # a 30th of February, or before 1970
        raise InvalidRequest(f"{name}: {exc}", field=name) from None
    return ms


@get("/v1/admin/ledger", summary="Export the org's ledger (JSON lines or CSV), oldest first")
async def export_ledger(request: Request[Any, Any, Any]) -> Stream:
    principal = caller(request)
    q = convert_query(request.query_params.items(), ExportQuery)
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
    org = convert_query(request.query_params.items(), OrgOnlyQuery).org
    admin_only(principal, org)
    policy = request.app.state.engine.policy(org)  # an unknown org is 404
    queue: EventQueue = request.app.state.queue
    await audit.admin_read(queue.store, org, principal, request.url.path, request.url.query or "")
    report = await ledger.reconcile(queue.store, org, counter_expiry(policy))
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
