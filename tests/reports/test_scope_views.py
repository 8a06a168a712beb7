"""Teams, keys and tags in the ledger and the reports (issue 14): each entry records the teams,
key and tags it was charged under, and the admin reports group by them, on a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

from budgetd.app import create_app
from budgetd.policy.loader import load_policy_dir
from budgetd.reports import follower, plan
from budgetd.store.connect import redis_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.conftest import TEST_PRICING
from tests.reports.conftest import real_range

POLICY = """
org: acme
timezone: UTC
teams:
  platform: {users: [alice], match: "plat-*"}
  search: {users: [alice, bob]}
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - {name: team-day, scope: team, limit_usd: 100, period: day}
  - {name: key-day, scope: key, limit_usd: 50, period: day}
  - {name: project-day, scope: tag, match: "project:*", limit_usd: 20, period: day}
  - {name: code-day, scope: user, feature: claude-code, limit_usd: 5, period: day}
  - {name: run, scope: session, limit_usd: 5, period: session, idle: 30m}
"""
MOVED = POLICY.replace("platform: {users: [alice]", "platform: {users: []")
CALL = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 100}
USAGE = {"input_tokens": 80, "output_tokens": 30}


async def test_reports_group_by_team_key_and_tag_as_charged(tmp_path: Path, redis_url: str) -> None:
    directory = tmp_path / "policies"
    policy = write_policy(directory, POLICY)
    keys_file = tmp_path / "keys.yaml"
    app_key, admin = write_keys(keys_file, ("acme", "app", "search-app"), ("acme", "admin", "ops"))
    store = redis_store(redis_url, timeout_s=5.0)
    await store.client.flushall()
    app = create_app(settings_for(directory, keys_file=keys_file), store=store)
    as_app = {"Authorization": f"Bearer {app_key}"}
    as_admin = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(app) as client:
        reserve = {
            **CALL,
            "user": "alice",
            "tags": ["project:search", "env:prod"],
            "session": "run-1",
        }
        granted = await client.post(
            "/v1/reservations", json={**reserve, "reservation_id": "r1"}, headers=as_app
        )
        assert granted.status_code == 201, granted.text
        first = await client.post(
            "/v1/reservations/r1/commit?org=acme", json={"usage": USAGE}, headers=as_app
        )
        recorded = await client.post(
            "/v1/usage",
            json={
                "org": "acme",
                "model": "claude-haiku-test",
                "user": "bob",
                "tags": ["project:chat"],
                "usage": USAGE,
            },
            headers=as_app,
        )
        assert recorded.status_code == 201, recorded.text
        untagged = await client.post(
            "/v1/reservations",
            json={**CALL, "user": "carol", "reservation_id": "r3"},
            headers=as_app,
        )
        assert untagged.status_code == 201
        third = await client.post(
            "/v1/reservations/r3/commit?org=acme", json={"usage": USAGE}, headers=as_app
        )
        alice, bob, carol = (
            first.json()["cost_micros"],
            recorded.json()["cost_micros"],
            third.json()["cost_micros"],
        )
        # Alice leaves the platform team after her call: the bill keeps the membership the call
        # was charged under (the team budgets its reserve checked).
        policy.write_text(MOVED)
        assert app.state.engine.registry.reload().ok

        await follower.follow(store, "acme", app.state.engine.policy("acme").tz)
        since, until = real_range()

        async def report(by: str) -> dict[str, int]:
            got = await client.get(
                f"/v1/admin/reports/usage?org=acme&by={by}&since={since}&until={until}",
                headers=as_admin,
            )
            assert got.status_code == 200, got.text
            return {r["entity"]: r["cost_micros"] for r in got.json()["rows"]}

        assert await report("team") == {"platform": alice, "search": alice + bob}
        assert await report("key") == {"search-app": alice + bob + carol}
        assert await report("tag") == {
            "project:search": alice,
            "env:prod": alice,
            "project:chat": bob,
        }

        # The budgets report lists the team, key and tag budgets of this month's top spenders
        # (and a user budget for one feature, which a subject with no feature never sees).
        got = await client.get("/v1/admin/reports/budgets?org=acme", headers=as_admin)
        rows = {(r["budget"], r["entity"]): r["spent_micros"] for r in got.json()["rows"]}
        assert {k: v for k, v in rows.items() if k[0] != "org-month"} == {
            ("team-day", "search"): alice + bob,
            ("team-day", "platform"): alice,
            ("key-day", "search-app"): alice + bob + carol,
            ("project-day", "project:search"): alice,
            ("project-day", "project:chat"): bob,
            ("code-day", "alice"): 0,
            ("code-day", "carol"): 0,
            ("code-day", "bob"): 0,
            ("run", "run-1"): alice,
        }

        # A plan that lowers the team budget below what the teams spent names both.
        lowered = MOVED.replace(
            "team-day, scope: team, limit_usd: 100", "team-day, scope: team, limit_usd: 0.000001"
        )
        (tmp_path / "new").mkdir()
        write_policy(tmp_path / "new", lowered)
        new = load_policy_dir(tmp_path / "new", TEST_PRICING)
        engine = app.state.engine
        planned = await plan.plan(store, engine.clock, engine.registry.current, new)
        [acme] = planned.orgs
        by_name = {b.budget: b for b in acme.budgets}
        assert {o.entity: o.used_micros for o in by_name["team-day"].over} == {
            "search": alice + bob,
            "platform": alice,
        }

        ledger = await client.get("/v1/admin/ledger?org=acme", headers=as_admin)
        entries = [json.loads(line) for line in ledger.text.splitlines()]
        assert [(e["teams"], e["key"], e["tags"]) for e in entries] == [
            (["platform", "search"], "search-app", ["project:search", "env:prod"]),
            (["search"], "search-app", ["project:chat"]),
            ([], "search-app", []),
        ]
    await store.close()
