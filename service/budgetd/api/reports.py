"""Reports over HTTP, for admin keys: usage by model, user, feature or session; by day and
model; budgets against actual; and the audit trail. JSON or CSV (numbers as numbers). Every
read is itself audited."""

from __future__ import annotations

import re
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery

from budgetd.api.admin import admin_only
from budgetd.api.deps import caller, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.validation import convert_query
from budgetd.contract import OrgName
from budgetd.engine import Engine
from budgetd.errors import InvalidRequest
from budgetd.policy.loader import PRICING_FILE, PolicyError, load_policy_dir
from budgetd.reports import anthropic_bill, audit, plan, query
from budgetd.reports.budgets import budgets as budgets_report
from budgetd.reports.budgets import today
from budgetd.reports.fold import View
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore

Format = Literal["json", "csv"]


def _respond(body: Any, rows: list[Any], fmt: Format) -> Response[Any]:
    if fmt == "csv":
        return Response(query.csv_text(rows), media_type="text/csv")
    return Response(msgspec.json.encode(body), media_type="application/json")


def range_of(engine: Engine, org: str, since: date | None, until: date | None) -> tuple[date, date]:
    """[since, until): this month so far (in the org's zone) unless given."""
    now = today(engine, org)
    start = since or now.replace(day=1)
    end = until or now + timedelta(days=1)
    if end <= start:
        raise InvalidRequest("until must be after since", field="until")
    if (end - start).days > query.MAX_DAYS:
        raise InvalidRequest(f"a report covers at most {query.MAX_DAYS} days", field="since")
    return start, end


def _store(request: Request[Any, Any, Any]) -> ScriptStore:
    queue: EventQueue = request.app.state.queue
    return queue.store


async def _admin(request: Request[Any, Any, Any], org: str) -> Engine:
    principal = caller(request)
    admin_only(principal, org)
    engine = engine_of(request)
    engine.policy(org)  # an unknown org is 404, not an empty report
    await audit.admin_read(
        _store(request), org, principal, request.url.path, request.url.query or ""
    )
    return engine


@get(
    "/v1/admin/reports/usage",
    summary="Spend, calls and tokens by model, user, feature, session, team, key or tag",
)
async def usage_report(
    request: Request[Any, Any, Any],
    org: FromQuery[str],
    by: FromQuery[View] = "model",
    since: FromQuery[date | None] = None,
    until: FromQuery[date | None] = None,
    top: FromQuery[int | None] = None,
    sort: FromQuery[str] = "cost_micros",
    format: FromQuery[Format] = "json",
) -> Response[Any]:
    engine = await _admin(request, org)
    if sort not in query.SORTABLE:
        raise InvalidRequest(f"sort must be one of {', '.join(query.SORTABLE)}", field="sort")
    if top is not None and not 1 <= top <= 10_000:
        raise InvalidRequest("top must be between 1 and 10000", field="top")
    start, end = range_of(engine, org, since, until)
    tomorrow = today(engine, org) + timedelta(days=1)
    report = await query.usage(_store(request), org, by, start, end, top, sort, tomorrow)
    return _respond(report, report.rows, format)


@get("/v1/admin/reports/daily", summary="Spend, calls and tokens by day and model")
async def daily_report(
    request: Request[Any, Any, Any],
    org: FromQuery[str],
    since: FromQuery[date | None] = None,
    until: FromQuery[date | None] = None,
    format: FromQuery[Format] = "json",
) -> Response[Any]:
    engine = await _admin(request, org)
    start, end = range_of(engine, org, since, until)
    report = await query.daily(_store(request), org, start, end)
    return _respond(report, report.rows, format)


@get("/v1/admin/reports/budgets", summary="Each budget's limit, spent, held and projection")
async def budgets(
    request: Request[Any, Any, Any],
    org: FromQuery[str],
    top: FromQuery[int] = 20,
    format: FromQuery[Format] = "json",
) -> Response[Any]:
    engine = await _admin(request, org)
    if not 1 <= top <= 1000:
        raise InvalidRequest("top must be between 1 and 1000", field="top")
    report = await budgets_report(engine, _store(request), org, top)
    return _respond(report, report.rows, format)


@get("/v1/admin/audit", summary="The org's audit trail: admin reads; policy reloads")
async def audit_trail(
    request: Request[Any, Any, Any], org: FromQuery[str], limit: FromQuery[int] = 100
) -> list[audit.AuditEntry]:
    admin_only(caller(request), org)
    store = _store(request)
    count = min(max(limit, 1), 1000)
    return await audit.recent(store, keys.audit(org), count)


class PlanRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    files: dict[str, str]
    """Policy files by name (``acme.yaml``) → their YAML text; the live price table is used."""


FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\.ya?ml$")


@post("/v1/admin/policy/plan", status_code=200, summary="What these policy files would change now")
async def policy_plan(request: Request[Any, Any, Any], data: PlanRequest) -> plan.Plan:
    principal = caller(request)
    admin_only(principal)
    engine = engine_of(request)
    if not data.files:
        raise InvalidRequest("files: give at least one policy file", field="files")
    for name in data.files:
        if not FILE_NAME.match(name) or name == PRICING_FILE:
            raise InvalidRequest(
                f"files: {name!r} is not a policy file name (NAME.yaml, not pricing.yaml)",
                field="files",
            )
    registry = engine.registry
    pricing = registry.pricing_path or registry.directory / PRICING_FILE
    with tempfile.TemporaryDirectory(prefix="budgetd-plan-") as tmp:
        for name, text in data.files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        try:
            new = load_policy_dir(Path(tmp), pricing_path=pricing)
        except PolicyError as exc:
            detail = "; ".join(e.replace(tmp + "/", "") for e in exc.errors)
            raise InvalidRequest(detail, field="files") from None
    orgs = {principal.org} if principal.org is not None else None
    result = await plan.plan(
        _store(request), engine.clock, registry.current if registry.loaded else None, new, orgs
    )
    for org in (o.org for o in result.orgs):
        await audit.append(
            _store(request),
            keys.audit(org),
            {
                "action": "policy_plan",
                "who": f"{principal.role}:{principal.name}",
                "files": " ".join(sorted(data.files)),
                "summary": result.summary,
                "would_block": str(int(result.would_block)),
            },
        )
    return result


class AnthropicBillQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    workspace: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    """Only this workspace's rows of the bill (``default``: rows without a workspace)."""
    tolerance_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] = 1.0
    tolerance_micros: Annotated[int, msgspec.Meta(ge=0, le=10**15)] = 10_000


@post(
    "/v1/admin/reconcile/anthropic",
    status_code=200,
    summary="Compare Anthropic's cost report (API JSON or Console CSV body) with the ledger",
)
async def reconcile_anthropic(request: Request[Any, Any, Any]) -> anthropic_bill.Reconciliation:
    q = convert_query(request.query_params.multi_items(), AnthropicBillQuery)
    engine = await _admin(request, q.org)
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return await anthropic_bill.reconcile(
            _store(request),
            q.org,
            engine.policy(q.org).pricing,
            body,
            workspace=q.workspace,
            tolerance_pct=q.tolerance_pct,
            tolerance_micros=q.tolerance_micros,
        )
    except anthropic_bill.BillError as exc:
        raise InvalidRequest(str(exc), field="body") from None


ROUTES = [usage_report, daily_report, budgets, audit_trail, policy_plan, reconcile_anthropic]
OPERATIONS = [
    Operation(
        "POST",
        "/v1/admin/reconcile/anthropic",
        "Compare Anthropic's cost report with the ledger, by UTC day and model",
        "admin_reconcile_anthropic",
        ok=(200, anthropic_bill.Reconciliation),
        query=AnthropicBillQuery,
        problems=(403, 404, 413, 422, 503),
        tags=("admin",),
        description="The body is the cost report as the Admin API returns it "
        "(`GET /v1/organizations/cost_report`: one page, a JSON list of pages, or one page a "
        "line) or the Console's cost CSV; an empty body compares nothing. A bill that cannot "
        "be read is 422 with `field: body` and where in the file.",
    ),
]
