"""Admin views: the scheduler's jobs and recent events, for admin keys of their own org."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.store.connect import embedded_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME


async def test_admin_endpoints_need_an_admin_key(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    admin, app_key = write_keys(keys_file, ("acme", "admin"), ("acme", "app"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    settings = settings_for(
        directory, keys_file=keys_file, sweep_interval_s=5, delivery_interval_s=1
    )
    async with asgi_client(create_app(settings, store=embedded_store())) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        as_app = {"Authorization": f"Bearer {app_key}"}
        jobs = await client.get("/v1/admin/scheduler", headers=as_admin)
        assert jobs.status_code == 200
        by_id = {job["id"]: job for job in jobs.json()}
        assert {
            "sweep",
            "delivery",
            "forecast",
            "spike",
            "close:acme:day",
            "close:acme:month",
        } <= set(by_id)
        assert by_id["sweep"]["next_run"] is not None
        events = await client.get("/v1/admin/events?org=acme", headers=as_admin)
        assert events.status_code == 200
        assert events.json() == {"org": "acme", "events": [], "dead_letters": []}
        for path in ("/v1/admin/scheduler", "/v1/admin/events?org=acme"):
            denied = await client.get(path, headers=as_app)
            assert denied.status_code == 403
            assert denied.json()["type"].endswith("/forbidden")


async def test_adjustments_over_http_admin_keys_of_the_org_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    admin, app_key, other = write_keys(
        keys_file, ("acme", "admin", "ops"), ("acme", "app"), ("globex", "admin")
    )
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    settings = settings_for(directory, keys_file=keys_file, sweep_interval_s=5)
    body = {
        "org": "acme",
        "budget": "user-day",
        "entity": "alice",
        "amount_micros": 250_000,
        "reason": "support ticket 4411: usage billed outside budgetd",
        "adjustment_id": "t-4411",
    }
    async with asgi_client(create_app(settings, store=embedded_store())) as client:
        for key in (app_key, other):
            refused = await client.post(
                "/v1/admin/adjustments", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert refused.status_code == 403, refused.text
        as_admin = {"Authorization": f"Bearer {admin}"}
        made = await client.post("/v1/admin/adjustments", json=body, headers=as_admin)
        assert made.status_code == 201, made.text
        assert (made.json()["spent_micros"], made.json()["replayed"]) == (250_000, False)
        replay = await client.post("/v1/admin/adjustments", json=body, headers=as_admin)
        assert replay.json()["replayed"] and replay.json()["ledger_id"] == made.json()["ledger_id"]
        budgets = await client.get("/v1/budgets?org=acme&user=alice", headers=as_admin)
        user_day = next(s for s in budgets.json()["scopes"] if s["name"] == "user-day")
        assert user_day["spent_micros"] == 250_000

        too_much = await client.post(
            "/v1/admin/adjustments",
            json={**body, "amount_micros": -300_000, "adjustment_id": "t-2"},
            headers=as_admin,
        )
        assert too_much.status_code == 422
        problem = too_much.json()
        assert problem["type"].endswith("/invalid-request")
        assert problem["field"] == "amount_micros"
        clash = await client.post(
            "/v1/admin/adjustments", json={**body, "amount_micros": 1}, headers=as_admin
        )
        assert clash.status_code == 409


async def test_the_retention_job_runs_only_when_configured(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    plain = settings_for(directory)
    kept = settings_for(directory, ledger_retention_days=90, ledger_export_dir=tmp_path / "out")
    for settings, expected in ((plain, False), (kept, True)):
        async with asgi_client(create_app(settings, store=embedded_store())) as client:
            jobs = await client.get("/v1/admin/scheduler")
            assert jobs.status_code == 200
            assert ("ledger-retention" in {job["id"] for job in jobs.json()}) is expected


async def test_the_scheduler_view_shows_an_admin_only_their_own_orgs_jobs(tmp_path: Path) -> None:
    """Per-org jobs are named after their org: another org's admin must not see them."""
    keys_file = tmp_path / "keys.yaml"
    acme_admin, globex_admin = write_keys(keys_file, ("acme", "admin"), ("globex", "admin"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    write_policy(directory, GLOBEX, name="globex.yaml")
    settings = settings_for(directory, keys_file=keys_file, sweep_interval_s=5)
    async with asgi_client(create_app(settings, store=embedded_store())) as client:
        seen = {}
        for org, key in (("acme", acme_admin), ("globex", globex_admin)):
            answer = await client.get(
                "/v1/admin/scheduler", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200
            seen[org] = {job["id"] for job in answer.json()}
        assert {"sweep", "close:acme:day", "close:acme:month"} <= seen["acme"]
        assert not any("globex" in job for job in seen["acme"])
        assert {"sweep", "close:globex:week"} <= seen["globex"]
        assert not any("acme" in job for job in seen["globex"])


GLOBEX = """
org: globex
timezone: UTC
budgets:
  - {name: org-week, scope: org, limit_usd: 100, period: week}
"""
