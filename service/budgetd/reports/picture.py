"""The picture a notification carries: the top spenders and the split by model, from the
report aggregates (this month so far, in the org's zone), and the daily digest built from
the same figures."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from budgetd.money import format_usd
from budgetd.policy.model import DIGEST, OrgPolicy
from budgetd.reports.fold import View
from budgetd.store import keys
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore

TOP = 5
PICTURED = ("threshold", "hard_limit", "over_limit", "forecast", "spike")
"""Event types that get the org's picture at delivery (a period close and a digest carry
their own period's)."""
DIGEST_KEEP = timedelta(days=8)
DIGEST_CHECK_S = 300
"""The digest job looks every 5 minutes whether yesterday's digest went out."""


async def _top(store: ScriptStore, org: str, view: View, bucket: str) -> list[list[Any]]:
    rows: Any = await store.client.zrevrange(
        keys.report_rank(org, view, bucket), 0, TOP - 1, withscores=True
    )
    return [[str(name), int(score)] for name, score in rows]


async def picture(store: ScriptStore, org: str, bucket: str) -> dict[str, str]:
    """``top_users``, ``top_features``, ``top_models`` of one day or month bucket, as the
    period-close event has them: JSON lists of [name, micros], biggest first."""
    return {
        f"top_{view}s": msgspec.json.encode(await _top(store, org, view, bucket)).decode()
        for view in ("user", "feature", "model")
    }


async def enrich(store: ScriptStore, policy: OrgPolicy, fields: dict[str, str]) -> dict[str, str]:
    """An event about to be delivered, with the org's picture this month added (webhooks get
    the fields, Slack and logs a line each); other events unchanged."""
    if fields.get("type") not in PICTURED or "top_models" in fields:
        return fields
    at_ms = int(fields.get("at_ms") or 0)
    when = datetime.fromtimestamp(at_ms / 1000).astimezone(policy.tz) if at_ms else None
    if when is None:
        return fields
    return {**fields, **await picture(store, policy.org, f"m:{when:%Y-%m}")}


def lines(fields: dict[str, str]) -> str:
    """The picture as text for Slack and logs: top users and features, spend by model with
    each model's share (empty when the event carries none)."""
    out: list[str] = []
    for name, label in (("top_users", "Top users"), ("top_features", "Top features")):
        rows = _decode(fields.get(name))
        if rows:
            out.append(f"{label}: " + ", ".join(f"{n} {format_usd(int(v))}" for n, v in rows))
    models = _decode(fields.get("top_models"))
    total = sum(int(v) for _, v in models)
    if models and total > 0:
        out.append(
            "By model: "
            + ", ".join(
                f"{n} {format_usd(int(v))} ({100 * int(v) / total:.0f} %)" for n, v in models
            )
        )
    return "".join(f"\n• {line}" for line in out)


def _decode(text: str | None) -> list[list[Any]]:
    if not text:
        return []
    try:
        rows = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return []
    return rows if isinstance(rows, list) else []


async def emit_digest(queue: EventQueue, policy: OrgPolicy, now: datetime) -> bool:
    """Yesterday's digest (in the org's zone) for the channels with ``digest: true``, once:
    the event id is the day, so every replica's every run after midnight emits it at most
    once. False when it was already emitted or no channel wants it."""
    if not policy.notify_for(DIGEST):
        return False
    day = (now.astimezone(policy.tz) - timedelta(days=1)).date()
    store = queue.store
    bucket = f"d:{day:%Y-%m-%d}"
    values: Any = await store.client.hgetall(keys.report_rows(policy.org, "model", bucket))
    spent = sum(int(v.split()[0]) for v in values.values())
    calls = sum(int(v.split()[1]) for v in values.values())
    fields = {
        "type": "digest",
        "budget": DIGEST,
        "scope": "org",
        "entity": policy.org,
        "period": day.isoformat(),
        "used_micros": str(spent),
        "calls": str(calls),
        **await picture(store, policy.org, bucket),
        "summary": f"daily digest for {day}: {format_usd(spent)} spent in {calls:,} calls",
        "at_ms": str(int(now.timestamp() * 1000)),
    }
    return await queue.emit(policy.org, f"digest|{day}", DIGEST_KEEP, fields)
