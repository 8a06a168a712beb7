"""``budgetd policy plan`` and ``POST /v1/admin/policy/plan`` against a real Redis with real
spend; and every applied reload in the org's audit stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.cli import main
from budgetd.engine import Engine
from budgetd.jobs.policy_reload import PolicyWatcher
from budgetd.policy.loader import load_policy_dir
from budgetd.reports import audit, plan
from budgetd.store import keys
from budgetd.store.connect import redis_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.conftest import TEST_PRICING
from tests.engine.conftest import ACME
from tests.reports.conftest import Call, traffic


def spent(calls: list[Call], user: str) -> int:
    return sum(c.cost for c in calls if c.user == user)


def new_policy(calls: list[Call]) -> str:
    """user-day: bob's limit below his spend; alice's at 1.5 × hers (past 50 %, not over);
    feature-day removed; a shadow budget added; the org budget unchanged."""
    bob_limit = spent(calls, "bob") // 2
    alice_limit = spent(calls, "alice") * 3 // 2
    return f"""
org: acme
timezone: America/New_York
defaults:
  hold_ttl_s: 60
budgets:
  - {{name: org-month, scope: org, limit_usd: 100, period: month}}
  - name: user-day
    scope: user
    limit_usd: 1
    period: day
    overrides: {{alice: {alice_limit / 1e6:.6f}, bob: {bob_limit / 1e6:.6f}}}
  - {{name: org-shadow, scope: org, limit_usd: 0.000001, period: day, mode: shadow}}
rate_limits:
  - name: user-rate
    scope: user
    requests_per_minute: 100000
    input_tokens_per_minute: 100000000
    output_tokens_per_minute: 100000000
"""


async def test_plan_against_live_spend(report_engine: Engine, tmp_path: Path) -> None:
    calls = await traffic(report_engine)
    directory = tmp_path / "new"
    write_policy(directory, new_policy(calls))
    new = load_policy_dir(directory, TEST_PRICING)
    store = report_engine.store
    result = await plan.plan(store, report_engine.clock, report_engine.registry.current, new)  # type: ignore[arg-type]

    [org] = result.orgs
    by_name = {b.budget: b for b in org.budgets}
    assert set(by_name) == {"user-day", "feature-day", "org-shadow"}  # org-month unchanged
    assert by_name["feature-day"].change == "removed"
    assert by_name["org-shadow"].change == "added"
    user_day = by_name["user-day"]
    assert user_day.change == "changed" and user_day.what == ["overrides"]
    assert {(c.entity, c.old_micros, c.new_micros) for c in user_day.limits} == {
        ("alice", 2_000_000, spent(calls, "alice") * 3 // 2),
        ("bob", None, spent(calls, "bob") // 2),
    }
    bob = spent(calls, "bob")
    assert [(o.entity, o.over_micros) for o in user_day.over] == [("bob", bob - bob // 2)]
    crossing = {c.entity: c.threshold_pct for c in user_day.crossing}
    assert crossing == {"alice": 50, "bob": 100}
    assert result.would_block
    assert "would block 1 in acme/user-day" in result.summary


def test_plan_cli(
    seeded: tuple[Path, list[Call]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
) -> None:
    live, calls = seeded
    new_dir = tmp_path / "new"
    write_policy(new_dir, new_policy(calls))
    monkeypatch.setenv("BUDGETD_REDIS_URL", redis_url)
    monkeypatch.setenv("BUDGETD_POLICY_DIR", str(live))
    assert main(["policy", "plan", str(new_dir)]) == 2
    table = capsys.readouterr().out
    assert "user-day" in table and "bob by" in table and "would block" in table
    assert main(["policy", "plan", str(live), "--format", "json"]) == 0  # the live policy: no-op
    assert json.loads(capsys.readouterr().out)["would_block"] is False
    bad = tmp_path / "bad"
    write_policy(bad, "org: acme\nbudgets: 3\n")
    assert main(["policy", "plan", str(bad)]) == 1
    assert "policy.yaml:2" in capsys.readouterr().err


async def test_plan_http(seeded: tuple[Path, list[Call]], tmp_path: Path, redis_url: str) -> None:
    live, calls = seeded
    keys_file = tmp_path / "keys.yaml"
    admin, app_key = write_keys(keys_file, ("acme", "admin", "ops"), ("acme", "app"))
    store = redis_store(redis_url, timeout_s=5.0)
    app = create_app(settings_for(live, keys_file=keys_file), store=store)
    as_admin = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(app) as client:
        body = {"files": {"acme.yaml": new_policy(calls)}}
        got = await client.post("/v1/admin/policy/plan", json=body, headers=as_admin)
        assert got.status_code == 200, got.text
        assert got.json()["would_block"] is True
        bad = await client.post(
            "/v1/admin/policy/plan",
            json={"files": {"acme.yaml": "org: acme\nbudgets: 3\n"}},
            headers=as_admin,
        )
        assert bad.status_code == 422 and bad.json()["field"] == "files"
        assert "acme.yaml:2" in bad.json()["detail"]
        sneaky = await client.post(
            "/v1/admin/policy/plan", json={"files": {"../x.yaml": "org: acme"}}, headers=as_admin
        )
        assert sneaky.status_code == 422
        app_call = await client.post(
            "/v1/admin/policy/plan", json=body, headers={"Authorization": f"Bearer {app_key}"}
        )
        assert app_call.status_code == 403
        trail = (await client.get("/v1/admin/audit?org=acme", headers=as_admin)).json()
        assert any(e["fields"]["action"] == "policy_plan" for e in trail)
        assert any(e["fields"]["action"] == "policy_reload" for e in trail)  # the app's start
    await store.close()


async def test_reloads_are_audited(report_engine: Engine, tmp_path: Path) -> None:
    store = report_engine.store
    directory = report_engine.registry.directory
    watcher = PolicyWatcher(report_engine)
    await watcher.reload_if_changed()
    policy_file = next(directory.glob("policy*.yaml"))
    policy_file.write_text(ACME.replace("limit_usd: 10, period: day", "limit_usd: 12, period: day"))
    assert await watcher.reload_if_changed()
    entries = await audit.recent(store, keys.audit("acme"), 10)  # type: ignore[arg-type]
    reloads = [e.fields for e in entries if e.fields["action"] == "policy_reload"]
    assert [r["trigger"] for r in reloads] == ["files", "start"]  # newest first
    assert reloads[0]["summary"] == "changed feature-day (limit)"
    assert reloads[0]["previous_digest"] == reloads[1]["digest"]
    assert reloads[0]["files"] == policy_file.name
    # Another replica reloading the same files writes nothing more.
    again = PolicyWatcher(report_engine)
    await again.reload_if_changed()
    assert len(await audit.recent(store, keys.audit("acme"), 10)) == len(entries)  # type: ignore[arg-type]
