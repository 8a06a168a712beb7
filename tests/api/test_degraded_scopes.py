"""A fail-open grant's commit (issue 14) is charged like any call: to the committing key's
budgets and to the tags the call was granted with, not to the user and feature only."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.store.connect import embedded_store, redis_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.servers import free_port

POLICY = """
org: acme
timezone: UTC
defaults: {failure: fail_open}
budgets:
  - {name: per-key, scope: key, limit_usd: 10, period: day}
  - {name: per-project, scope: tag, match: "project:*", limit_usd: 10, period: day}
"""
BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}


async def test_a_degraded_commit_counts_on_its_key_and_tags(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, POLICY)
    keys_file = tmp_path / "keys.yaml"
    (key,) = write_keys(keys_file, ("acme", "app", "search-app"))
    as_key = {"Authorization": f"Bearer {key}"}
    settings = settings_for(directory, keys_file=keys_file)
    dead = redis_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    async with asgi_client(create_app(settings, store=dead)) as client:
        r = await client.post(
            "/v1/reservations", json={**BODY, "tags": ["project:search"]}, headers=as_key
        )
        assert r.status_code == 201, r.text
        assert r.json()["degraded"] is True
    rid = r.json()["reservation_id"]
    async with asgi_client(create_app(settings, store=embedded_store())) as client:
        done = await client.post(
            f"/v1/reservations/{rid}/commit?org=acme",
            json={"usage": {"input_tokens": 7}},
            headers=as_key,
        )
        assert done.status_code == 200, done.text
        view = await client.get(
            "/v1/budgets", params={"org": "acme", "tags": "project:search"}, headers=as_key
        )
        spent = {(s["name"], s["entity"]): s["spent_micros"] for s in view.json()["scopes"]}
        assert spent == {("per-key", "search-app"): 7, ("per-project", "project:search"): 7}
