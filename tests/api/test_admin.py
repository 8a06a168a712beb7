"""Admin views: the scheduler's jobs and recent events, for admin keys of their own org."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.auth import key_line, new_key
from budgetd.store.connect import embedded_store
from tests.api.conftest import asgi_client, settings_for, write_policy
from tests.engine.conftest import ACME


async def test_admin_endpoints_need_an_admin_key(tmp_path: Path) -> None:
    admin, app_key = new_key(), new_key()
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "keys:\n"
        + key_line(admin, "acme", "admin")
        + "\n"
        + key_line(app_key, "acme", "app")
        + "\n"
    )
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
