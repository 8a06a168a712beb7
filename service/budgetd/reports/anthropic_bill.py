"""Reconciliation with Anthropic's bill: read the Admin API cost report (JSON as the API
returns it, one page or a list of pages) or the Console's cost CSV, and compare it day by day
(UTC, as Anthropic buckets) and model by model with the org's ledger.

Amounts: the API gives cents as decimal strings ("123.45" is $1.23), the CSV gives dollars;
both become integer micro-dollars, rounded half up once per row. Models are compared by their
priced id: a dated id or alias on either side resolves through the price table."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from budgetd.ledger import entries
from budgetd.pricing_table import PricingTable
from budgetd.store.scripted import ScriptStore

MICROS_PER_CENT = 10_000
NON_TOKEN = "(non-token)"
"""Where a cost row without a model goes (web search, code execution; or a report not grouped
by description, which has no model at all)."""

Status = Literal["matched", "differs", "budgetd_only", "anthropic_only"]


class BillError(ValueError):
    """The file is not a cost report this reader understands; the message says where."""


class BillRow(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    model: str
    workspace: str | None
    micros: int


class Line(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    model: str
    budgetd_micros: int
    anthropic_micros: int
    difference_micros: int
    """budgetd − Anthropic."""
    difference_pct: float | None
    """Of Anthropic's amount; None when Anthropic has nothing."""
    status: Status


class Reconciliation(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    since: date
    until: date
    """Exclusive."""
    tolerance_pct: float
    tolerance_micros: int
    budgetd_micros: int
    anthropic_micros: int
    counts: dict[str, int]
    lines: list[Line]

    @property
    def ok(self) -> bool:
        return all(line.status == "matched" for line in self.lines)


def _micros(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), ROUND_HALF_UP))


def _decimal(text: object, where: str) -> Decimal:
    try:
        return Decimal(str(text).strip())
    except InvalidOperation:
        raise BillError(f"{where}: amount {text!r} is not a decimal number") from None


def parse_json(text: str) -> list[BillRow]:
    """The cost report as ``GET /v1/organizations/cost_report`` returns it: one page
    ``{"data": [...], "has_more", "next_page"}``, a JSON list of pages, or one page a line."""
    try:
        decoded: Any = msgspec.json.decode(text)
        pages = decoded if isinstance(decoded, list) else [decoded]
    except msgspec.DecodeError:
        try:
            pages = [msgspec.json.decode(line) for line in text.splitlines() if line.strip()]
        except msgspec.DecodeError as exc:
            raise BillError(f"not JSON: {exc}") from None
    rows: list[BillRow] = []
    for p, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise BillError(f"page {p}: no 'data' list (is this a cost_report response?)")
        for b, bucket in enumerate(page["data"]):
            where = f"page {p} data[{b}]"
            try:
                day = datetime.fromisoformat(str(bucket["starting_at"])).astimezone(UTC).date()
            except (KeyError, ValueError):
                raise BillError(f"{where}: starting_at missing or not RFC 3339") from None
            for r, result in enumerate(bucket.get("results") or []):
                if (result.get("currency") or "USD") != "USD":
                    raise BillError(f"{where}.results[{r}]: currency {result['currency']!r}")
                cents = _decimal(result.get("amount"), f"{where}.results[{r}]")
                rows.append(
                    BillRow(
                        day=day,
                        model=result.get("model") or NON_TOKEN,
                        workspace=result.get("workspace_id"),
                        micros=_micros(cents * MICROS_PER_CENT),
                    )
                )
    return rows


CSV_DAY = ("usage_date_utc", "date", "day", "usage_date")
CSV_MODEL = ("model", "model_name", "model_version")
CSV_USD = ("cost_usd", "amount_usd", "cost", "amount", "total_cost_usd")
CSV_WORKSPACE = ("workspace", "workspace_id", "workspace_name")


def parse_csv(text: str) -> list[BillRow]:
    """The Console's cost CSV: one row per day (and model, and workspace), dollars as decimals.
    Columns are found by name (case-insensitive): a day, a model, a cost in USD, optionally a
    workspace; other columns are ignored."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = {name.strip().lower(): name for name in reader.fieldnames or []}

    def column(names: tuple[str, ...], required: bool) -> str | None:
        found = next((header[n] for n in names if n in header), None)
        if found is None and required:
            raise BillError(f"CSV header has no {names[0]!r} column (or {', '.join(names[1:])})")
        return found

    day_col, usd_col = column(CSV_DAY, True), column(CSV_USD, True)
    model_col, ws_col = column(CSV_MODEL, False), column(CSV_WORKSPACE, False)
    assert day_col is not None and usd_col is not None
    rows: list[BillRow] = []
    for n, row in enumerate(reader, start=2):
        try:
            day = date.fromisoformat(row[day_col].strip()[:10])
        except ValueError:
            raise BillError(f"CSV line {n}: {day_col} {row[day_col]!r} is not a date") from None
        usd = _decimal(row[usd_col].replace("$", "").replace(",", ""), f"CSV line {n}")
        rows.append(
            BillRow(
                day=day,
                model=(row[model_col].strip() if model_col else "") or NON_TOKEN,
                workspace=(row[ws_col].strip() or None) if ws_col else None,
                micros=_micros(usd * 1_000_000),
            )
        )
    return rows


def parse(text: str) -> list[BillRow]:
    """JSON (the API) or CSV (the Console), by content."""
    return parse_json(text) if text.lstrip().startswith(("{", "[")) else parse_csv(text)


def _canonical(pricing: PricingTable, model: str) -> str:
    found = pricing.models.get(model)
    return found.id if found is not None else model


async def ledger_by_day_model(
    store: ScriptStore, org: str, pricing: PricingTable, since: date, until: date
) -> dict[tuple[date, str], int]:
    """The org's ledger spend per UTC day and priced model in [since, until): a scan of that
    range, which a reconciliation (a batch job against a bill) may do; reports never do."""
    start = int(datetime(since.year, since.month, since.day, tzinfo=UTC).timestamp() * 1000)
    end = int(datetime(until.year, until.month, until.day, tzinfo=UTC).timestamp() * 1000)
    out: dict[tuple[date, str], int] = defaultdict(int)
    async for entry_id, fields in entries(store, org, start, end):
        if fields.get("kind") == "adjustment":
            continue  # an admin's correction of a budget, not a call Anthropic billed
        day = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC).date()
        model = _canonical(pricing, fields.get("model", "") or NON_TOKEN)
        out[(day, model)] += int(fields.get("cost_micros", "0") or 0)
    return dict(out)


def compare(
    org: str,
    bill: list[BillRow],
    ours: dict[tuple[date, str], int],
    pricing: PricingTable,
    since: date,
    until: date,
    tolerance_pct: float,
    tolerance_micros: int,
) -> Reconciliation:
    theirs: dict[tuple[date, str], int] = defaultdict(int)
    for row in bill:
        if since <= row.day < until:
            theirs[(row.day, _canonical(pricing, row.model))] += row.micros
    lines: list[Line] = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = ours.get(key, 0), theirs.get(key, 0)
        diff = a - b
        pct = round(100 * diff / b, 3) if b else None
        allowed = max(tolerance_micros, abs(b) * tolerance_pct / 100)
        status: Status
        if key not in theirs:
            status = "budgetd_only"
        elif key not in ours:
            status = "anthropic_only"
        else:
            status = "matched" if abs(diff) <= allowed else "differs"
        lines.append(
            Line(
                day=key[0],
                model=key[1],
                budgetd_micros=a,
                anthropic_micros=b,
                difference_micros=diff,
                difference_pct=pct,
                status=status,
            )
        )
    counts = {
        s: sum(1 for line in lines if line.status == s)
        for s in ("matched", "differs", "budgetd_only", "anthropic_only")
    }
    return Reconciliation(
        org=org,
        since=since,
        until=until,
        tolerance_pct=tolerance_pct,
        tolerance_micros=tolerance_micros,
        budgetd_micros=sum(ours.values()),
        anthropic_micros=sum(theirs.values()),
        counts=counts,
        lines=lines,
    )


async def reconcile(
    store: ScriptStore,
    org: str,
    pricing: PricingTable,
    text: str,
    *,
    workspace: str | None = None,
    tolerance_pct: float = 1.0,
    tolerance_micros: int = 10_000,
) -> Reconciliation:
    """Compare the bill in ``text`` with the ledger over the bill's days (``workspace``: only
    that workspace's rows of the bill; ``default`` for rows with no workspace)."""
    # A month's CSV parses in ~30 ms, a few MiB in a fraction of a second: off the event loop,
    # so the reserves and commits this replica serves meanwhile do not wait for it.
    bill = await asyncio.to_thread(parse, text) if text.strip() else []
    if workspace is not None:
        wanted = None if workspace == "default" else workspace
        bill = [r for r in bill if r.workspace == wanted]
    if not bill:
        # Nothing billed (an empty body, or no rows for the workspace): nothing to compare.
        return compare(
            org, [], {}, pricing, date.today(), date.today(), tolerance_pct, tolerance_micros
        )
    since = min(r.day for r in bill)
    until = max(r.day for r in bill) + timedelta(days=1)
    ours = await ledger_by_day_model(store, org, pricing, since, until)
    return compare(org, bill, ours, pricing, since, until, tolerance_pct, tolerance_micros)
