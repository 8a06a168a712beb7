"""Notifications carry the picture: threshold and period-close messages name the top spenders
and split the spend by model (webhook fields, Slack text), and a channel may ask for a daily
digest. On a real Redis, delivered to a real loopback receiver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec

from budgetd.engine import Engine
from budgetd.jobs.channels import describe
from budgetd.jobs.delivery import Deliverer, DeliveryConfig
from budgetd.metrics import Metrics
from budgetd.policy.model import DIGEST
from budgetd.reports import follower, picture
from budgetd.store.events import EventQueue
from tests.engine.conftest import ACME, make_registry
from tests.jobs.receiver import Receiver
from tests.reports.conftest import Call, traffic


def spend_by(calls: list[Call], key: str) -> list[list[object]]:
    totals: dict[str, int] = {}
    for c in calls:
        totals[getattr(c, key)] = totals.get(getattr(c, key), 0) + c.cost
    return [[n, v] for n, v in sorted(totals.items(), key=lambda kv: -kv[1])]


async def test_threshold_events_carry_the_picture(report_engine: Engine) -> None:
    calls = await traffic(report_engine)
    policy = report_engine.policy("acme")
    await follower.follow(report_engine.store, "acme", policy.tz)  # type: ignore[arg-type]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    event = {
        "type": "threshold",
        "budget": "org-month",
        "scope": "org",
        "entity": "acme",
        "threshold": "80",
        "used_micros": "80",
        "limit_micros": "100",
        "at_ms": str(now_ms),
        "org": "acme",
    }
    enriched = await picture.enrich(report_engine.store, policy, event)  # type: ignore[arg-type]
    assert msgspec.json.decode(enriched["top_users"]) == spend_by(calls, "user")
    assert msgspec.json.decode(enriched["top_models"]) == spend_by(calls, "model")
    text = describe(enriched, policy.tz)
    first_user, first_cost = spend_by(calls, "user")[0]
    assert f"Top users: {first_user} ${first_cost / 1e6:,.6f}" in text
    assert "By model: claude-" in text and " %)" in text
    # Other events pass unchanged.
    assert await picture.enrich(report_engine.store, policy, {"type": "overrun"}) == {  # type: ignore[arg-type]
        "type": "overrun"
    }


def test_period_close_slack_text_keeps_the_top_lists() -> None:
    fields = {
        "type": "period_close",
        "org": "acme",
        "summary": "org budget 'm' closed",
        "top_users": '[["alice", 2000000], ["bob", 500000]]',
        "top_models": '[["claude-sonnet-4-5", 3000000], ["claude-haiku-4-5", 1000000]]',
    }
    text = describe(fields, ZoneInfo("UTC"))
    assert "• Top users: alice $2.000000, bob $0.500000" in text
    assert (
        "• By model: claude-sonnet-4-5 $3.000000 (75 %), claude-haiku-4-5 $1.000000 (25 %)" in text
    )


async def test_daily_digest_is_delivered_once(report_engine: Engine, tmp_path: Path) -> None:
    calls = await traffic(report_engine)
    store = report_engine.store
    async with Receiver().running() as receiver:
        text = ACME.replace(
            "defaults:\n",
            f"channels:\n  finance: {{webhook: '{receiver.url}', digest: true}}\n"
            "  ops: {log: info}\ndefaults:\n",
        )
        (tmp_path / "p").mkdir()
        registry = make_registry(tmp_path / "p", text)
        policy = registry.org("acme")
        assert policy is not None and policy.notify_for(DIGEST) == ("finance",)
        await follower.follow(store, "acme", policy.tz)  # type: ignore[arg-type]
        queue = EventQueue(store)  # type: ignore[arg-type]
        tomorrow = datetime.now(policy.tz) + timedelta(days=1)
        assert await picture.emit_digest(queue, policy, tomorrow)
        assert not await picture.emit_digest(queue, policy, tomorrow)  # once per day
        deliverer = Deliverer(
            queue,
            registry,
            Metrics(),
            "test",
            DeliveryConfig(max_attempts=2, backoff_base_s=0.01, timeout_s=2),
        )
        try:
            await deliverer.run_once()
        finally:
            await deliverer.close()
        [got] = [r.json() for r in receiver.received]
        assert got["type"] == "digest"
        assert got["period"] == datetime.now(policy.tz).date().isoformat()
        assert int(got["used_micros"]) == sum(c.cost for c in calls)
        assert int(got["calls"]) == len(calls)
        assert msgspec.json.decode(got["top_users"]) == spend_by(calls, "user")


def test_no_digest_unless_a_channel_asks(tmp_path: Path) -> None:
    policy = make_registry(tmp_path, ACME).org("acme")
    assert policy is not None and policy.notify_for(DIGEST) == ()
