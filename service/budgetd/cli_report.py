"""``budgetd report``: the reports in the terminal, read from the live store
(``BUDGETD_REDIS_URL``) with the policy directory's orgs; hooked into :mod:`budgetd.cli` by
:func:`add_report_commands`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console
from rich.table import Table

from budgetd.clock import SystemClock
from budgetd.engine import Engine
from budgetd.errors import UnknownOrg
from budgetd.metrics import Metrics
from budgetd.money import MICROS_PER_USD
from budgetd.policy.loader import PolicyError, load_policy_dir
from budgetd.policy.registry import PolicyRegistry
from budgetd.reports import anthropic_bill, follower, plan, query
from budgetd.reports.budgets import budgets, today
from budgetd.reports.fold import VIEWS
from budgetd.settings import from_env
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

BY = (*VIEWS, "day", "budgets")


def usd(micros: int | None) -> str:
    """Dollars and cents for a table (the JSON and CSV keep exact micros)."""
    if micros is None:
        return "—"
    cents = (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return f"${cents:,}"


@contextlib.asynccontextmanager
async def live_engine() -> AsyncIterator[tuple[Engine, ScriptStore]]:
    """An engine over the live store and the policy directory, as the server would see them."""
    settings = from_env()
    if settings.redis_url is None:
        raise SystemExit("budgetd: set BUDGETD_REDIS_URL (the live store to read)")
    registry = PolicyRegistry(settings.policy_dir, settings.pricing_file)
    status = registry.reload()
    if not status.ok:
        raise SystemExit("budgetd: the policy does not load:\n" + "\n".join(status.errors))
    store = redis_store(settings.redis_url, timeout_s=10)
    try:
        yield Engine(registry, store, SystemClock(), Metrics()), store
    finally:
        await store.close()


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _usage_table(report: query.Report, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    first = ["day", "model"] if report.by == "day" else [report.by]
    for name in [
        *first,
        "spend",
        "calls",
        "$/call",
        "avg in",
        "avg out",
        "cache hit",
        "input",
        "cw 5m",
        "cw 1h",
        "cache read",
        "output",
    ]:
        table.add_column(name, justify="left" if name in first else "right")
    for r in [*report.rows, report.total]:
        lead = [r.day or "", r.entity] if report.by == "day" else [r.entity]
        table.add_row(
            *lead,
            usd(r.cost_micros),
            f"{r.calls:,}",
            usd(r.cost_per_call_micros),
            f"{r.avg_input_tokens:,.1f}",
            f"{r.avg_output_tokens:,.1f}",
            f"{r.cache_hit_rate:.1%}",
            f"{r.input_tokens:,}",
            f"{r.cache_write_5m_tokens:,}",
            f"{r.cache_write_1h_tokens:,}",
            f"{r.cache_read_tokens:,}",
            f"{r.output_tokens:,}",
            end_section=r is report.rows[-1] if report.rows else False,
        )
    return table


def _budget_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in [
        "budget",
        "scope",
        "entity",
        "period",
        "limit",
        "spent",
        "held",
        "remaining",
        "used",
        "projected",
        "mode",
    ]:
        table.add_column(name, justify="left" if name in ("budget", "scope", "entity") else "right")
    for r in rows:
        table.add_row(
            r.budget,
            r.scope,
            r.entity,
            r.period,
            usd(r.limit_micros),
            usd(r.spent_micros),
            usd(r.held_micros),
            usd(r.remaining_micros),
            f"{r.used_pct:.1f}%",
            usd(r.projected_micros),
            r.mode,
        )
    return table


async def _report(args: argparse.Namespace) -> int:
    async with live_engine() as (engine, store):
        try:
            policy = engine.policy(args.org)
        except UnknownOrg as exc:
            raise SystemExit(f"budgetd: {exc}") from None
        # Fold what the follower has not reached yet: the terminal answer is current.
        await follower.follow(store, args.org, policy.tz)
        now = today(engine, args.org)
        since = args.since or now.replace(day=1)
        until = args.until or now + dt.timedelta(days=1)
        if until <= since:
            raise SystemExit("budgetd: --until must be after --since")
        if args.by == "budgets":
            b = await budgets(engine, store, args.org, args.top or 20)
            rows: list[Any] = b.rows
            body: Any = b
            table = _budget_table(b.rows, f"{args.org}: budgets at {b.at:%Y-%m-%d %H:%M} UTC")
        else:
            if args.by == "day":
                report = await query.daily(store, args.org, since, until)
            else:
                report = await query.usage(
                    store,
                    args.org,
                    args.by,
                    since,
                    until,
                    args.top,
                    args.sort,
                    now + dt.timedelta(days=1),
                )
            rows, body = report.rows, report
            title = f"{args.org}: by {args.by}, {since} to {until - dt.timedelta(days=1)}"
            if report.entities is None:
                title += f" (top {len(report.rows)})"
            elif report.entities > len(report.rows):
                title += f" (top {len(report.rows)} of {report.entities:,})"
            table = _usage_table(report, title)
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
    elif args.format == "csv":
        sys.stdout.write(query.csv_text(rows))
    else:
        # Piped output is not cut to 80 columns: a report read by a script keeps every figure.
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def plan_table(result: plan.Plan) -> Table:
    table = Table(title=f"policy plan: {result.summary}", title_justify="left")
    for name in (
        "org",
        "budget",
        "change",
        "limits",
        "over the new limit now",
        "would cross",
        "shadow would-deny",
    ):
        table.add_column(name)
    for org in result.orgs:
        for b in org.budgets:
            limits = ", ".join(
                f"{'default' if c.entity == '*' else c.entity}: {usd(c.old_micros)} → "
                f"{usd(c.new_micros)}"
                for c in b.limits
            )
            over = ", ".join(f"{o.entity} by {usd(o.over_micros)}" for o in b.over[:10])
            if len(b.over) > 10:
                over += f" (+{len(b.over) - 10} more)"
            crossing = ", ".join(f"{c.entity} ≥{c.threshold_pct}%" for c in b.crossing[:10])
            if len(b.crossing) > 10:
                crossing += f" (+{len(b.crossing) - 10} more)"
            what = b.change + (f" ({', '.join(b.what)})" if b.change == "changed" else "")
            table.add_row(
                org.org,
                b.budget,
                what,
                limits,
                over,
                crossing,
                "" if b.shadow_would_deny is None else str(b.shadow_would_deny),
            )
    return table


WOULD_BLOCK = 2
"""``policy plan`` exit status when the new policy would block someone right now."""


async def _plan(args: argparse.Namespace) -> int:
    settings = from_env()
    try:
        new = load_policy_dir(args.directory, pricing_path=args.pricing or settings.pricing_file)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    async with live_engine() as (engine, store):
        result = await plan.plan(
            store, engine.clock, engine.registry.current, new, {args.org} if args.org else None
        )
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(plan_table(result))
    return WOULD_BLOCK if result.would_block else 0


def reconcile_table(result: anthropic_bill.Reconciliation) -> Table:
    title = (
        f"{result.org}: budgetd {usd(result.budgetd_micros)} vs Anthropic "
        f"{usd(result.anthropic_micros)}, {result.since} to {result.until - dt.timedelta(days=1)} "
        + " · ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.counts.items())
    )
    table = Table(title=title, title_justify="left")
    for name in ("day", "model", "budgetd", "anthropic", "difference", "%", "status"):
        table.add_column(
            name, justify="right" if name in ("budgetd", "anthropic", "difference", "%") else "left"
        )
    for line in result.lines:
        table.add_row(
            str(line.day),
            line.model,
            usd(line.budgetd_micros),
            usd(line.anthropic_micros),
            usd(line.difference_micros),
            "—" if line.difference_pct is None else f"{line.difference_pct:+.2f}",
            line.status,
        )
    return table


async def _reconcile(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"budgetd: {args.file}: {exc.strerror}") from None
    async with live_engine() as (engine, store):
        try:
            policy = engine.policy(args.org)
        except UnknownOrg as exc:
            raise SystemExit(f"budgetd: {exc}") from None
        try:
            result = await anthropic_bill.reconcile(
                store,
                args.org,
                policy.pricing,
                text,
                workspace=args.workspace,
                tolerance_pct=args.tolerance_pct,
                tolerance_micros=int(Decimal(args.tolerance_usd) * MICROS_PER_USD),
            )
        except anthropic_bill.BillError as exc:
            raise SystemExit(f"budgetd: {args.file}: {exc}") from None
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    elif args.format == "csv":
        sys.stdout.write(query.csv_text(result.lines))
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(reconcile_table(result))
    return 0 if result.ok else DIFFERENCES


DIFFERENCES = 2
"""``reconcile anthropic`` exit status when some day and model is not matched."""


def _policy_actions(subparsers: Subparsers) -> Subparsers:
    """The ``policy`` command's own subcommands (cli.py builds ``policy``; ``plan`` joins it)."""
    policy = subparsers.choices["policy"]
    return next(a for a in policy._actions if isinstance(a, argparse._SubParsersAction))


def add_report_commands(subparsers: Subparsers) -> None:
    """``report``, ``policy plan`` and ``reconcile anthropic``."""
    reconcile = subparsers.add_parser("reconcile", help="compare the ledger with a provider's bill")
    sources = reconcile.add_subparsers(dest="reconcile_source", required=True, metavar="SOURCE")
    bill = sources.add_parser(
        "anthropic",
        help="Anthropic's cost report (Admin API JSON or Console CSV) against the ledger, by "
        f"UTC day and model (exit {DIFFERENCES}: something is not matched)",
    )
    bill.add_argument("file", type=Path, metavar="FILE")
    bill.add_argument("--org", required=True)
    bill.add_argument("--workspace", help="only this workspace's rows ('default': no workspace)")
    bill.add_argument("--tolerance-pct", type=float, default=1.0, help="default 1 (%%)")
    bill.add_argument("--tolerance-usd", default="0.01", help="default 0.01 (either suffices)")
    bill.add_argument("--format", choices=("table", "json", "csv"), default="table")
    bill.set_defaults(handler=lambda args: asyncio.run(_reconcile(args)))

    parser = _policy_actions(subparsers).add_parser(
        "plan",
        help="what a policy directory would change against the live store "
        f"(exit {WOULD_BLOCK}: it would block someone now)",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--org", help="only this org")
    parser.add_argument("--pricing", type=Path, help="price table (default: the live one's)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(handler=lambda args: asyncio.run(_plan(args)))

    parser = subparsers.add_parser("report", help="spend, calls and tokens from the live store")
    parser.add_argument("--org", required=True)
    parser.add_argument("--by", choices=BY, default="model")
    parser.add_argument("--since", type=_date, help="first day (default: this month's first)")
    parser.add_argument("--until", type=_date, help="day after the last (default: tomorrow)")
    parser.add_argument("--top", type=int, help="only the N biggest spenders")
    parser.add_argument(
        "--sort", choices=query.SORTABLE, default="cost_micros", help="column to sort rows by"
    )
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.set_defaults(handler=lambda args: asyncio.run(_report(args)))
