"""Reports over HTTP, for admin keys: usage by model, user, feature, session, team, key or tag;
by day and model; budgets against actual; and the audit trail. JSON or CSV (numbers as
numbers). Every read is itself audited."""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import msgspec
from litestar import Response, get, post

from budgetd.api.admin import admin_only
from budgetd.api.deps import AnyRequest, caller, engine_of
from budgetd.api.openapi import Operation
from budgetd.api.validation import convert_query, decode
from budgetd.contract import OrgName
from budgetd.engine import Engine
from budgetd.errors import InvalidRequest
from budgetd.policy.loader import PRICING_FILE, PolicyError, load_policy_dir
from budgetd.reports import anthropic_bill, audit, plan, query
from budgetd.reports.budgets import BudgetsReport, today
from budgetd.reports.budgets import budgets as budgets_report
from budgetd.reports.fold import View
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from budgetd.yaml_errors import describe_pattern

Format = Literal["json", "csv"]
if TYPE_CHECKING:
    Sort = str
else:
    Sort = Literal[query.SORTABLE]  # the report's numeric columns, from one list

CSV = {
    "text/csv": {"schema": {"type": "string", "description": "The rows as CSV, a header first."}}
}

REPORT_DATE_WORDS = "a date YYYY-MM-DD from 1970-01-01 to 2999-12-31"
# Text, not a date: msgspec's dates run to 9999-12-31, where a report's month arithmetic
# overflows (a 500). Month lengths and leap days are in the pattern, so every match is a day.
ReportDate = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(
            r"^((19[7-9][0-9]|2[0-9]{3})-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
            r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
            r"|(19(7[26]|8[048]|9[26])|2[0-9](0[48]|[2468][048]|[13579][26])|2[048]00)-02-29)$",
            REPORT_DATE_WORDS,
        ),
    ),
]
Since = Annotated[
    ReportDate,
    msgspec.Meta(
        description=f"First day, {REPORT_DATE_WORDS}, in the org's time zone (default: the "
        "first of this month).",
        examples=["2026-11-01"],
    ),
]
Until = Annotated[
    ReportDate,
    msgspec.Meta(
        description=f"The day after the last, {REPORT_DATE_WORDS} (default: tomorrow); after "
        "`since`, at most 400 days on.",
        examples=["2026-12-01"],
    ),
]
ReportFormat = Annotated[
    Format, msgspec.Meta(description="`json`, or `csv`: the rows only, with a header line.")
]


class UsageQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    by: Annotated[View, msgspec.Meta(description="What one row totals.")] = "model"
    since: Since | None = None
    until: Until | None = None
    top: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, le=10_000, description="Only the first rows by `sort` (default: all)."
            ),
        ]
        | None
    ) = None
    sort: Annotated[
        Sort, msgspec.Meta(description="The column rows are ordered by, largest first.")
    ] = "cost_micros"
    format: ReportFormat = "json"


class DailyQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    since: Since | None = None
    until: Until | None = None
    format: ReportFormat = "json"


class BudgetsReportQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    top: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=1000,
            description="Per user or feature budget: the entities that spent most this month.",
        ),
    ] = 20
    format: ReportFormat = "json"


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=1000, description="The most recent entries, newest first.")
    ] = 100


POLICY_FILE_WORDS = (
    "a file name of up to 128 letters, digits, '_', '.' or '-', starting with a letter or "
    "digit and ending in .yaml or .yml"
)
PolicyFileName = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\.ya?ml$", POLICY_FILE_WORDS),
        description=f"Policy file name: {POLICY_FILE_WORDS} (not pricing.yaml).",
    ),
]


class PlanRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    files: Annotated[dict[PolicyFileName, str], msgspec.Meta(min_length=1, max_length=100)]
    """Policy files by name (``acme.yaml``) → their YAML text; the live price table is used."""


def _respond(body: Any, rows: list[Any], fmt: Format) -> Response[Any]:
    if fmt == "csv":
        return Response(query.csv_text(rows), media_type="text/csv")
    return Response(msgspec.json.encode(body), media_type="application/json")


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text is not None else None  # the pattern made it a day


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


def _store(request: AnyRequest) -> ScriptStore:
    queue: EventQueue = request.app.state.queue
    return queue.store


class _OrgRead(Protocol):
    @property
    def org(self) -> str: ...


Q = TypeVar("Q", bound=_OrgRead)


async def _admin(request: AnyRequest, type_: type[Q]) -> tuple[Engine, Q]:
    """The query of an org's admin read, checked in the order every route uses (the key, then
    the query, then the key's rights, then the org), and the read audited."""
    principal = caller(request)
    q = convert_query(request.query_params.items(), type_)
    admin_only(principal, q.org)
    engine = engine_of(request)
    engine.policy(q.org)  # an unknown org is 404, not an empty report
    await audit.admin_read(
        _store(request), q.org, principal, request.url.path, request.url.query or ""
    )
    return engine, q


@get(
    "/v1/admin/reports/usage",
    summary="Spend, calls and tokens by model, user, feature, session, team, key or tag",
)
async def usage_report(request: AnyRequest) -> Response[Any]:
    engine, q = await _admin(request, UsageQuery)
    start, end = range_of(engine, q.org, _day(q.since), _day(q.until))
    tomorrow = today(engine, q.org) + timedelta(days=1)
    report = await query.usage(_store(request), q.org, q.by, start, end, q.top, q.sort, tomorrow)
    return _respond(report, report.rows, q.format)


@get("/v1/admin/reports/daily", summary="Spend, calls and tokens by day and model")
async def daily_report(request: AnyRequest) -> Response[Any]:
    engine, q = await _admin(request, DailyQuery)
    start, end = range_of(engine, q.org, _day(q.since), _day(q.until))
    report = await query.daily(_store(request), q.org, start, end)
    return _respond(report, report.rows, q.format)


@get("/v1/admin/reports/budgets", summary="Each budget's limit, spent, held and projection")
async def budgets(request: AnyRequest) -> Response[Any]:
    engine, q = await _admin(request, BudgetsReportQuery)
    report = await budgets_report(engine, _store(request), q.org, q.top)
    return _respond(report, report.rows, q.format)


@get("/v1/admin/audit", summary="The org's audit trail: admin reads; policy reloads")
async def audit_trail(request: AnyRequest) -> list[audit.AuditEntry]:
    principal = caller(request)
    q = convert_query(request.query_params.items(), AuditQuery)
    # No 404 for an org without a policy: the trail outlives it (a removed org's last reload)
    # and precedes it (a plan for a new org is audited under that org).
    admin_only(principal, q.org)
    return await audit.recent(_store(request), keys.audit(q.org), q.limit)


@post("/v1/admin/policy/plan", status_code=200, summary="What these policy files would change now")
async def policy_plan(request: AnyRequest) -> plan.Plan:
    principal = caller(request)
    admin_only(principal)
    data = decode(await request.body(), PlanRequest)
    engine = engine_of(request)
    if PRICING_FILE in data.files:
        raise InvalidRequest(
            f"files: {PRICING_FILE!r} is the price table's name; the plan prices with the live "
            "table, give policy files only",
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


RECONCILE_MAX_BODY_BYTES = 8 * 1024 * 1024
"""A bill is a file, not a call: a month of a mid-sized org's Console CSV is ~250 KB, past the
64 KiB every other route takes. 8 MiB is a year or more of most orgs' bills; a larger one is
compared a month at a time (docs/decisions.md, "Body bounds")."""


class AnthropicBillQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    workspace: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    """Only this workspace's rows of the bill (``default``: rows without a workspace)."""
    tolerance_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] = 1.0
    tolerance_micros: Annotated[int, msgspec.Meta(ge=0, le=10**15)] = 10_000


@post(
    "/v1/admin/reconcile/anthropic",
    status_code=200,
    request_max_body_size=RECONCILE_MAX_BODY_BYTES,
    summary="Compare Anthropic's cost report (API JSON or Console CSV body) with the ledger",
)
async def reconcile_anthropic(request: AnyRequest) -> anthropic_bill.Reconciliation:
    engine, q = await _admin(request, AnthropicBillQuery)
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
_RANGE = (
    "`until` must be after `since`, at most 400 days on (422 naming the field); days are the "
    "org's (its policy's time zone). "
)
_AUDITED = "The read is written to the org's audit trail (`GET /v1/admin/audit`)."
OPERATIONS = [
    Operation(
        "GET",
        "/v1/admin/reports/usage",
        "Spend, calls and tokens by model, user, feature, session, team, key or tag",
        "admin_report_usage",
        ok=(200, query.Report),
        ok_media=CSV,
        query=UsageQuery,
        problems=(403, 404, 422, 503),
        tags=("reports",),
        description=_RANGE + "`format=csv` answers the rows as CSV. " + _AUDITED,
    ),
    Operation(
        "GET",
        "/v1/admin/reports/daily",
        "Spend, calls and tokens by day and model",
        "admin_report_daily",
        ok=(200, query.Report),
        ok_media=CSV,
        query=DailyQuery,
        problems=(403, 404, 422, 503),
        tags=("reports",),
        description=_RANGE + "`format=csv` answers the rows as CSV. " + _AUDITED,
    ),
    Operation(
        "GET",
        "/v1/admin/reports/budgets",
        "Each budget's limit, spent, held and projection",
        "admin_report_budgets",
        ok=(200, BudgetsReport),
        ok_media=CSV,
        query=BudgetsReportQuery,
        problems=(403, 404, 422, 503),
        tags=("reports",),
        description="`format=csv` answers the rows as CSV. " + _AUDITED,
    ),
    Operation(
        "GET",
        "/v1/admin/audit",
        "The org's audit trail (admin reads, policy reloads and plans), newest first",
        "admin_audit",
        ok=(200, list[audit.AuditEntry]),
        query=AuditQuery,
        problems=(403, 422, 503),
        tags=("admin",),
        description="Any org the key may read, with or without a policy (the trail outlives "
        "an org's policy, and a plan for a new org is audited under it): no 404.",
    ),
    Operation(
        "POST",
        "/v1/admin/policy/plan",
        "What these policy files would change now, against live spend",
        "admin_policy_plan",
        ok=(200, plan.Plan),
        body=PlanRequest,
        problems=(403, 422, 503),
        tags=("admin",),
        description="Files that do not load are 422 with `field: files` and each mistake as "
        "`file:line: field: message`; `pricing.yaml` is refused (the live price table is used). "
        "The body is at most 64 KiB (larger policy sets: `budgetd policy plan`). An org admin "
        "sees its own org's plan; each planned org's audit trail records it.",
    ),
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
        "be read is 422 with `field: body` and where in the file. The body is at most 8 MiB "
        "(a larger bill: a month at a time).",
    ),
]
