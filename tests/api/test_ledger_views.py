"""The ledger over HTTP for admin keys: export (JSON lines, CSV) and the conservation check."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from budgetd.app import create_app
from budgetd.store.connect import embedded_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME

CALL = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100,
    "user": "alice",
    "reservation_id": "r1",
}


async def test_admins_export_the_ledger_and_reconcile_it(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    admin, app_key, other = write_keys(
        keys_file, ("acme", "admin"), ("acme", "app"), ("globex", "admin")
    )
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    settings = settings_for(directory, keys_file=keys_file)
    as_admin = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(create_app(settings, store=embedded_store())) as client:
        as_app = {"Authorization": f"Bearer {app_key}"}
        assert (await client.post("/v1/reservations", json=CALL, headers=as_app)).status_code == 201
        usage = {"usage": {"input_tokens": 80, "output_tokens": 30}}
        committed = await client.post(
            "/v1/reservations/r1/commit?org=acme", json=usage, headers=as_app
        )
        assert committed.status_code == 200
        adjusted = await client.post(
            "/v1/admin/adjustments",
            json={
                "org": "acme",
                "budget": "user-day",
                "entity": "alice",
                "amount_micros": -30,
                "reason": "goodwill",
            },
            headers=as_admin,
        )
        assert adjusted.status_code == 201

        jsonl = await client.get("/v1/admin/ledger?org=acme", headers=as_admin)
        assert jsonl.status_code == 200
        assert jsonl.headers["content-type"].startswith("application/x-ndjson")
        entries = [json.loads(line) for line in jsonl.text.splitlines()]
        assert [(e["kind"], e["cost_micros"]) for e in entries] == [
            ("commit", str(committed.json()["cost_micros"])),
            ("adjustment", "-30"),
        ]
        table = await client.get("/v1/admin/ledger?org=acme&format=csv", headers=as_admin)
        assert table.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(table.text)))
        assert [r["reservation_id"] for r in rows] == ["r1", adjusted.json()["adjustment_id"]]
        later = await client.get(
            "/v1/admin/ledger?org=acme&since=2999-01-01T00:00:00Z", headers=as_admin
        )
        assert later.text == ""

        check = await client.get("/v1/admin/reconcile?org=acme", headers=as_admin)
        assert check.status_code == 200
        assert check.json()["ok"] is True
        assert check.json()["report"]["entries"] == 2

        for key in (app_key, other):
            for path in ("/v1/admin/ledger?org=acme", "/v1/admin/reconcile?org=acme"):
                refused = await client.get(path, headers={"Authorization": f"Bearer {key}"})
                assert refused.status_code == 403, (path, refused.text)
        bad = await client.get("/v1/admin/ledger?org=acme&format=xml", headers=as_admin)
        assert (bad.status_code, bad.json()["field"]) == (422, "format")
        assert bad.headers["content-type"].startswith("application/problem+json")
