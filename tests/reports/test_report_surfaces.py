"""The reports over HTTP (admin keys, JSON and CSV, audited) and in the terminal, on a real
Redis: the same figures as the engine charged."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.cli import main
from budgetd.reports import follower
from budgetd.store.connect import redis_store
from tests.api.conftest import asgi_client, settings_for, write_keys
from tests.reports.conftest import Call, real_range


async def test_http_reports_for_admins_only_audited(
    tmp_path: Path, redis_url: str, seeded: tuple[Path, list[Call]]
) -> None:
    directory, calls = seeded
    costs = [c.cost for c in calls]
    keys_file = tmp_path / "keys.yaml"
    admin, app_key, other = write_keys(
        keys_file, ("acme", "admin", "ops"), ("acme", "app"), ("globex", "admin")
    )
    store = redis_store(redis_url, timeout_s=5.0)
    app = create_app(settings_for(directory, keys_file=keys_file), store=store)
    since, until = real_range()
    window = f"since={since}&until={until}"
    as_admin = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(app) as client:
        await follower.follow(store, "acme", app.state.engine.policy("acme").tz)
        got = await client.get(
            f"/v1/admin/reports/usage?org=acme&by=user&{window}", headers=as_admin
        )
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["total"]["cost_micros"] == sum(costs)
        assert isinstance(body["rows"][0]["cost_micros"], int)
        assert {r["entity"] for r in body["rows"]} == {"alice", "bob", "carol"}

        top = await client.get(
            f"/v1/admin/reports/usage?org=acme&by=user&top=1&format=csv&{window}", headers=as_admin
        )
        assert top.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(top.text)))
        assert len(rows) == 1 and rows[0]["entity"] == body["rows"][0]["entity"]
        assert rows[0]["cost_micros"] == str(body["rows"][0]["cost_micros"])  # no quotes, no $

        daily = await client.get(f"/v1/admin/reports/daily?org=acme&{window}", headers=as_admin)
        assert sum(r["cost_micros"] for r in daily.json()["rows"]) == sum(costs)
        budgets = await client.get("/v1/admin/reports/budgets?org=acme", headers=as_admin)
        org_row = next(r for r in budgets.json()["rows"] if r["budget"] == "org-month")
        assert org_row["spent_micros"] == sum(costs)

        bad = await client.get("/v1/admin/reports/usage?org=acme&sort=nope", headers=as_admin)
        assert bad.status_code == 422 and bad.json()["field"] == "sort"
        backwards = await client.get(
            f"/v1/admin/reports/usage?org=acme&since={until}&until={since}", headers=as_admin
        )
        assert backwards.status_code == 422 and backwards.json()["field"] == "until"

        app_read = await client.get(
            "/v1/admin/reports/usage?org=acme", headers={"Authorization": f"Bearer {app_key}"}
        )
        assert app_read.status_code == 403
        cross = await client.get(
            "/v1/admin/reports/usage?org=acme", headers={"Authorization": f"Bearer {other}"}
        )
        assert cross.status_code == 403

        assert (await client.get("/v1/admin/ledger?org=acme", headers=as_admin)).status_code == 200
        trail = (await client.get("/v1/admin/audit?org=acme", headers=as_admin)).json()
        reads = [e["fields"] for e in trail if e["fields"]["action"] == "read"]
        assert {r["what"] for r in reads} == {
            "/v1/admin/reports/usage",
            "/v1/admin/reports/daily",
            "/v1/admin/reports/budgets",
            "/v1/admin/ledger",
        }
        assert all(r["who"] == "admin:ops" for r in reads)


def test_cli_report(
    seeded: tuple[Path, list[Call]],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory, calls = seeded
    costs = [c.cost for c in calls]
    monkeypatch.setenv("BUDGETD_REDIS_URL", redis_url)
    monkeypatch.setenv("BUDGETD_POLICY_DIR", str(directory))
    since, until = real_range()
    window = ["--since", str(since), "--until", str(until)]
    # The CLI folds what no follower has yet: its first answer is already current.
    assert main(["report", "--org", "acme", "--by", "user", "--format", "json", *window]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total"]["cost_micros"] == sum(costs)
    # This month so far is one month bucket: the top-N knows how many there were.
    assert main(["report", "--org", "acme", "--by", "feature", "--top", "1"]) == 0
    table = capsys.readouterr().out
    assert "by feature" in table and "top 1 of 2" in table and "total" in table
    assert main(["report", "--org", "acme", "--by", "budgets"]) == 0
    assert "org-month" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no policy defines org 'nope'"):
        main(["report", "--org", "nope"])
