"""Sessions (issue 14) over HTTP: a call names its session (an agent run, a conversation) in
``session``, on reserve, usage and the budgets view."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

from budgetd.jobs.channels import describe
from budgetd.store import keys
from budgetd.store.base import Store
from budgetd.store.connect import embedded_store, redis_store
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import ClientFactory
from tests.servers import free_port

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
"""
CALL = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 10}


async def test_a_session_is_a_field_of_reserve_usage_and_budgets(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(POLICY, store=store) as client:
        granted = await client.post("/v1/reservations", json={**CALL, "session": "run-1"})
        assert granted.status_code == 201, granted.text
        usage = {"org": "acme", "model": "claude-haiku-test", "usage": {"input_tokens": 1}}
        recorded = await client.post("/v1/usage", json={**usage, "session": "run-1"})
        assert recorded.status_code == 201, recorded.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        assert view.status_code == 200, view.text
        for bad in ("", "has spaces", "x" * 129):
            refused = await client.post("/v1/reservations", json={**CALL, "session": bad})
            assert refused.status_code == 422
            assert refused.json()["field"] == "session", refused.text


MANAGER = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 60}
teams:
  platform: {users: [alice, bob]}
budgets:
  - {name: claude-code-daily, scope: user, feature: claude-code, limit_usd: 30, period: day}
  - {name: platform-monthly, scope: team, limit_usd: 2000, period: month}
  - {name: agent-run, scope: session, limit_usd: 5, period: session, idle: 30m}
"""
# claude-opus-test: $5 per million input tokens, $25 per million output (tests/data/pricing.yaml).
OPUS = {"org": "acme", "model": "claude-opus-test", "max_tokens": 1}
THREE = {**OPUS, "input_tokens": 600_000}  # a hold of $3.000025
FOUR = {**OPUS, "input_tokens": 800_000}  # a hold of $4.000025


def denied_by(answer: Any) -> list[tuple[str, str]]:
    assert answer.status_code == 429, answer.text
    return [(s["name"], s["entity"]) for s in answer.json()["scopes"]]


async def test_one_agent_run_is_capped_while_the_user_and_team_have_room(
    client_for: ClientFactory, store: ScriptStore
) -> None:
    async with client_for(MANAGER, store=store) as client:
        run = {**THREE, "user": "alice", "feature": "claude-code", "session": "run-1"}
        first = await client.post("/v1/reservations", json=run)
        assert first.status_code == 201, first.text
        denied = await client.post("/v1/reservations", json=run)
        assert denied_by(denied) == [("agent-run", "run-1")]
        # A full session stays full: no Retry-After (waiting is the session going idle).
        assert denied.json()["scopes"][0]["retry_after_s"] is None
        assert "retry-after" not in denied.headers
        # Another run of the same developer has its own $5.
        other = await client.post("/v1/reservations", json={**run, "session": "run-2"})
        assert other.status_code == 201, other.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        (state,) = [s for s in view.json()["scopes"] if s["name"] == "agent-run"]
        assert (state["scope"], state["entity"], state["period"]) == ("session", "run-1", "session")
        assert (state["held_micros"], state["period_end"]) == (3_000_025, None)
        # The hard-limit event names the session, and no period end.
        events = [fields for _, fields in await store.client.xrange(keys.events("acme"))]
        (blocked,) = [e for e in events if e["type"] == "hard_limit"]
        assert (blocked["scope"], blocked["entity"], blocked["period"]) == (
            "session",
            "run-1",
            "s:run-1",
        )
        assert describe(blocked, ZoneInfo("UTC")) == (
            "budgetd [] session run-1 hit the hard limit of budget 'agent-run' ($3.000025 of "
            "$5.000000); calls are blocked"
        )


async def test_each_developer_is_capped_in_claude_code_while_run_and_team_have_room(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(MANAGER, store=store) as client:
        code = {**FOUR, "user": "alice", "feature": "claude-code"}
        for i in range(7):  # $28 of $30, each in its own run
            answer = await client.post("/v1/reservations", json={**code, "session": f"r{i}"})
            assert answer.status_code == 201, answer.text
        denied = await client.post("/v1/reservations", json={**code, "session": "r7"})
        assert denied_by(denied) == [("claude-code-daily", "alice")]
        # Her calls outside Claude Code, and another developer's, still go through.
        chat = await client.post("/v1/reservations", json={**code, "feature": "chat"})
        assert chat.status_code == 201, chat.text
        bob = await client.post("/v1/reservations", json={**code, "user": "bob"})
        assert bob.status_code == 201, bob.text


async def test_the_team_is_capped_while_its_members_runs_and_days_have_room(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(MANAGER, store=store) as client:
        # $1,996 of the team's month, recorded for bob's batch jobs (outside Claude Code).
        for i, tokens in enumerate((100_000_000, 100_000_000, 100_000_000, 99_200_000)):
            usage = {"input_tokens": tokens}
            recorded = await client.post(
                "/v1/usage",
                json={
                    "org": "acme",
                    "model": "claude-opus-test",
                    "user": "bob",
                    "feature": "batch",
                    "usage": usage,
                    "record_id": f"b{i}",
                },
            )
            assert recorded.status_code == 201, recorded.text
        call = {**THREE, "user": "alice", "feature": "claude-code", "session": "run-1"}
        first = await client.post("/v1/reservations", json=call)
        assert first.status_code == 201, first.text
        denied = await client.post("/v1/reservations", json={**call, "session": "run-2"})
        assert denied_by(denied) == [("platform-monthly", "platform")]
        # Someone outside the team is not held back by it.
        erin = await client.post(
            "/v1/reservations", json={**call, "user": "erin", "session": "run-3"}
        )
        assert erin.status_code == 201, erin.text


IDLE = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 60}
budgets:
  - {name: agent-run, scope: session, limit_usd: 5, period: session, idle: 30m}
"""
IDLE_MS = 30 * 60 * 1000


async def test_a_sessions_counter_lives_idle_after_its_last_call_then_starts_over(
    client_for: ClientFactory, store: ScriptStore
) -> None:
    redis = store.client
    key = keys.session_counters("acme", "run-1")
    async with client_for(IDLE, store=store) as client:
        run = {**THREE, "session": "run-1"}
        first = await client.post("/v1/reservations", json=run)
        assert first.status_code == 201, first.text
        assert IDLE_MS - 60_000 < await redis.pttl(key) <= IDLE_MS
        # As if 29 idle minutes had passed: the commit is a call, and moves the expiry again.
        await redis.pexpire(key, 60_000)
        done = await client.post(
            f"/v1/reservations/{first.json()['reservation_id']}/commit",
            params={"org": "acme"},
            json={"usage": {"input_tokens": 600_000}},
        )
        assert done.status_code == 200, done.text
        assert IDLE_MS - 60_000 < await redis.pttl(key) <= IDLE_MS
        # A denial is not activity: it changes nothing, the expiry included.
        await redis.pexpire(key, 60_000)
        assert denied_by(await client.post("/v1/reservations", json=run)) == [
            ("agent-run", "run-1")
        ]
        assert await redis.pttl(key) <= 60_000
        # Idle for its whole idle time: the counter is gone, and the same id is a new session.
        await redis.pexpire(key, 1)
        deadline = asyncio.get_running_loop().time() + 10
        while await redis.exists(key):
            assert asyncio.get_running_loop().time() < deadline, "the counter never expired"
            await asyncio.sleep(0.01)
        again = await client.post("/v1/reservations", json=run)
        assert again.status_code == 201, again.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        (state,) = view.json()["scopes"]
        assert (state["spent_micros"], state["held_micros"]) == (0, 3_000_025)


async def _idle_out(store: ScriptStore, key: str) -> None:
    """The session's counter idles out (its expiry passes), as if `idle` went by unused."""
    await store.client.pexpire(key, 1)
    deadline = asyncio.get_running_loop().time() + 10
    while await store.client.exists(key):
        assert asyncio.get_running_loop().time() < deadline, "the counter never expired"
        await asyncio.sleep(0.01)


async def test_a_hold_voided_after_its_session_idled_out_frees_nothing_there(
    client_for: ClientFactory, store: ScriptStore
) -> None:
    """A release of a hold whose session counter idled out (and whose id is used again since)
    frees nothing on the new session: no negative `held`, no room past the budget."""
    redis = store.client
    key = keys.session_counters("acme", "run-1")
    async with client_for(IDLE, store=store) as client:
        run = {**THREE, "session": "run-1"}
        old = await client.post("/v1/reservations", json=run)
        assert old.status_code == 201, old.text
        await _idle_out(store, key)
        # Gone: releasing the old hold does not bring the counter back with a negative `held`.
        freed = await client.post(
            f"/v1/reservations/{old.json()['reservation_id']}/release", params={"org": "acme"}
        )
        assert freed.status_code == 200, freed.text
        assert not await redis.exists(key)
        late = await client.post("/v1/reservations", json=run)
        assert late.status_code == 201, late.text
        await _idle_out(store, key)
        # The id used again: a new session, whose hold the old one must not free.
        new = await client.post("/v1/reservations", json=run)
        assert new.status_code == 201, new.text
        done = await client.post(
            f"/v1/reservations/{late.json()['reservation_id']}/commit",
            params={"org": "acme"},
            json={"usage": {"input_tokens": 0}},
        )
        assert done.status_code == 200, done.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        (state,) = view.json()["scopes"]
        assert (state["spent_micros"], state["held_micros"]) == (0, 3_000_025)
        # Still full for a second $3 hold: the late commit freed nothing of the new one.
        assert denied_by(await client.post("/v1/reservations", json=run)) == [
            ("agent-run", "run-1")
        ]


VELOCITY = """
org: acme
timezone: UTC
defaults: {hold_ttl_s: 60}
rate_limits:
  - {name: run-velocity, scope: session, cost_usd_per_minute: 5}
"""


async def test_cost_velocity_denies_a_session_with_a_retry_time(
    client_for: ClientFactory, store: Store
) -> None:
    async with client_for(VELOCITY, store=store) as client:
        run = {**THREE, "session": "run-1"}
        first = await client.post("/v1/reservations", json=run)
        assert first.status_code == 201, first.text
        denied = await client.post("/v1/reservations", json=run)
        assert denied_by(denied) == [("run-velocity", "run-1")]
        (scope,) = denied.json()["scopes"]
        assert (scope["kind"], scope["limit"], scope["requested"]) == ("rate", 5_000_000, 3_000_025)
        # $1.000050 short at $5 a minute: about 12 s (less the refill since the first call).
        assert 1 <= scope["retry_after_s"] <= 13
        assert denied.headers["retry-after"] == str(denied.json()["retry_after_s"])
        # Velocity is per session.
        other = await client.post("/v1/reservations", json={**run, "session": "run-2"})
        assert other.status_code == 201, other.text
        # The commit settles the bucket to the real cost ($0.50): the rest comes back.
        done = await client.post(
            f"/v1/reservations/{first.json()['reservation_id']}/commit",
            params={"org": "acme"},
            json={"usage": {"input_tokens": 100_000}},
        )
        assert done.status_code == 200, done.text
        after = await client.post("/v1/reservations", json=run)
        assert after.status_code == 201, after.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        (state,) = view.json()["scopes"]
        assert (state["rate_kind"], state["limit"]) == ("cost_micros", 5_000_000)


async def test_a_fail_open_grants_commit_counts_on_its_session(client_for: ClientFactory) -> None:
    policy = IDLE.replace("idle: 30m}", "idle: 30m, failure: fail_open}")
    dead = redis_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    async with client_for(policy, store=dead) as client:
        r = await client.post("/v1/reservations", json={**CALL, "session": "run-1"})
        assert r.status_code == 201 and r.json()["degraded"] is True, r.text
        rid = r.json()["reservation_id"]
    # Redis is back (here: another store): the degraded id still names the session.
    async with client_for(policy, store=embedded_store()) as client:
        done = await client.post(
            f"/v1/reservations/{rid}/commit?org=acme", json={"usage": {"input_tokens": 7}}
        )
        assert done.status_code == 200, done.text
        view = await client.get("/v1/budgets", params={"org": "acme", "session": "run-1"})
        assert view.json()["scopes"][0]["spent_micros"] == 7
