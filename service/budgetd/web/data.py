"""What the pages show, gathered from the aggregates, the live counters, the event stream and
the policy: no ledger scans."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import msgspec

from budgetd.engine import Engine
from budgetd.policy.model import OrgPolicy
from budgetd.reports import query
from budgetd.reports.budgets import BudgetRow, budgets, project, rows_for
from budgetd.reports.fold import METRICS, View
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore

SHOWN_EVENTS = (
    "threshold",
    "hard_limit",
    "overrun",
    "over_limit",
    "shadow_would_deny",
    "forecast",
    "spike",
)
"""Event types the page lists (warnings, blocks, overruns and the jobs' alerts)."""
SCOPE_VIEWS: tuple[View, ...] = ("team", "key", "tag", "session")


class Point(msgspec.Struct, frozen=True):
    day: str
    value: int


class BurnDown(msgspec.Struct, frozen=True, kw_only=True):
    """Remaining budget of one org budget through its period: actual to today, then the
    forecast to the period's end."""

    budget: str
    limit_micros: int
    days: list[str]
    """Every day of the period, as ``YYYY-MM-DD``."""
    remaining: list[int | None]
    """Remaining at the end of each day so far (None after today)."""
    forecast: list[int | None]
    """From today to the end: the period-to-date rate carried on (None before today)."""


class EventRow(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    budget: str
    entity: str
    used_micros: int
    limit_micros: int
    threshold: str
    at: datetime


class OrgPage(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    timezone: str
    since: date
    until: date
    budgets: list[BudgetRow]
    burndown: BurnDown | None
    daily: query.Report
    by_model: query.Report
    by_user: query.Report
    by_feature: query.Report
    by_scope: list[tuple[str, query.Report]]
    """Team, key, tag and session views that have spend this month (an org without teams,
    named keys, tags or sessions is not shown empty tables); sessions as the month's top
    ones, the expensive agent runs and conversations."""
    events: list[EventRow]
    policy: OrgPolicy


def days_of(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


async def burndown(
    store: ScriptStore, engine: Engine, org: str, rows: list[BudgetRow]
) -> BurnDown | None:
    """For the org budget with the longest calendar period of at least a day (a day's burn is
    read from day aggregates; an hourly budget has no day-level curve)."""
    policy = engine.policy(org)
    order = {"month": 0, "week": 1, "day": 2}
    rules = {r.name: r for r in policy.budgets if r.scope == "org" and r.period.calendar in order}
    candidates = [r for r in rows if r.budget in rules and r.period_start and r.period_end]
    if not candidates:
        return None
    row = min(candidates, key=lambda r: order[rules[r.budget].period.calendar or "day"])
    assert row.period_start is not None and row.period_end is not None
    tz = policy.tz
    start = row.period_start.astimezone(tz).date()
    end = (row.period_end - timedelta(microseconds=1)).astimezone(tz).date() + timedelta(days=1)
    now = engine.clock.now()
    today = now.astimezone(tz).date()
    days = days_of(start, end)
    daily = await query.daily(store, org, start, end) if start < end else None
    spent_by_day: dict[str, int] = {}
    for r in daily.rows if daily else []:
        assert r.day is not None
        spent_by_day[r.day] = spent_by_day.get(r.day, 0) + r.cost_micros
    remaining: list[int | None] = []
    forecast: list[int | None] = []
    used = 0
    projected_end = project(
        row.spent_micros, row.held_micros, row.period_start, row.period_end, now
    )
    left_days = max(1, (end - today).days)
    for d in days:
        used += spent_by_day.get(d.isoformat(), 0)
        remaining.append(row.limit_micros - used if d <= today else None)
        if d < today:
            forecast.append(None)
        else:
            # A straight line from today's remaining to the projected end-of-period remaining.
            done = (d - today).days + 1
            now_left = row.limit_micros - row.spent_micros - row.held_micros
            end_left = row.limit_micros - projected_end
            forecast.append(round(now_left + (end_left - now_left) * (done - 1) / left_days))
    return BurnDown(
        budget=row.budget,
        limit_micros=row.limit_micros,
        days=[d.isoformat() for d in days],
        remaining=remaining,
        forecast=forecast,
    )


async def recent_events(queue: EventQueue, org: str, count: int = 50) -> list[EventRow]:
    out: list[EventRow] = []
    for event in await queue.recent(org, count * 4):
        f = event.fields
        if f.get("type") not in SHOWN_EVENTS:
            continue
        out.append(
            EventRow(
                type=f.get("type", ""),
                budget=f.get("budget", ""),
                entity=f.get("entity", ""),
                used_micros=int(f.get("used_micros") or 0),
                limit_micros=int(f.get("limit_micros") or 0),
                threshold=f.get("threshold", ""),
                at=datetime.fromtimestamp(int(event.stream_id.split("-")[0]) / 1000).astimezone(),
            )
        )
        if len(out) >= count:
            break
    return out


async def org_page(engine: Engine, queue: EventQueue, org: str, top: int = 10) -> OrgPage:
    policy = engine.policy(org)
    store = queue.store
    today = engine.clock.now().astimezone(policy.tz).date()
    since, until = today.replace(day=1), today + timedelta(days=1)
    report = await budgets(engine, store, org, top)
    by_scope = [
        (view, await query.usage(store, org, view, since, until, top=top, tomorrow=until))
        for view in SCOPE_VIEWS
    ]
    return OrgPage(
        org=org,
        timezone=policy.timezone,
        since=since,
        until=until,
        budgets=report.rows,
        burndown=await burndown(store, engine, org, report.rows),
        daily=await query.daily(store, org, since, until),
        by_model=await query.usage(store, org, "model", since, until, tomorrow=until),
        by_user=await query.usage(store, org, "user", since, until, top=top, tomorrow=until),
        by_feature=await query.usage(store, org, "feature", since, until, top=top, tomorrow=until),
        by_scope=[(view, r) for view, r in by_scope if r.rows],
        events=await recent_events(queue, org),
        policy=policy,
    )


class UserPage(msgspec.Struct, frozen=True, kw_only=True):
    """One user's own spend and budgets: nothing of any other user, feature or the org."""

    org: str
    user: str
    since: date
    until: date
    spend: query.Row
    budgets: list[BudgetRow]


async def user_page(engine: Engine, store: ScriptStore, org: str, user: str) -> UserPage:
    policy = engine.policy(org)
    today = engine.clock.now().astimezone(policy.tz).date()
    since, until = today.replace(day=1), today + timedelta(days=1)
    value = await store.client.hget(keys.report_rows(org, "user", f"m:{today:%Y-%m}"), user)
    totals = [int(v) for v in str(value).split()] if value else [0] * len(METRICS)
    rows = await rows_for(engine, org, user, None, only_scope="user")
    return UserPage(
        org=org,
        user=user,
        since=since,
        until=until,
        spend=query.row(user, totals),
        budgets=rows,
    )
