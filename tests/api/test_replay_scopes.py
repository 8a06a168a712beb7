"""A reservation id retried (issue 14, found by the model test): from another key it is another
request (409, as another body is); after a policy reload that changed which limits apply, the
replay still answers (the hold it made stands), without a per-scope detail it cannot rebuild."""

from __future__ import annotations

from pathlib import Path

from budgetd.app import create_app
from budgetd.store.base import Store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy

POLICY = """
org: acme
timezone: UTC
budgets:
  - {name: org-month, scope: org, limit_usd: 1000, period: month}
  - {name: per-key, scope: key, limit_usd: 25, period: day}
"""
MORE = POLICY + "  - {name: user-day, scope: user, limit_usd: 25, period: day}\n"
CALL = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100,
    "user": "alice",
    "reservation_id": "r1",
}


async def test_a_retry_from_another_key_or_after_a_reload(tmp_path: Path, store: Store) -> None:
    directory = tmp_path / "policies"
    policy = write_policy(directory, POLICY)
    keys = tmp_path / "keys.yaml"
    first, second = write_keys(keys, ("acme", "app", "app-a"), ("acme", "app", "app-b"))
    app = create_app(settings_for(directory, keys_file=keys), store=store)
    as_a = {"Authorization": f"Bearer {first}"}
    async with asgi_client(app) as client:
        url = "/v1/reservations?detail=scopes"
        granted = await client.post(url, json=CALL, headers=as_a)
        assert granted.status_code == 201, granted.text
        other = await client.post(url, json=CALL, headers={"Authorization": f"Bearer {second}"})
        assert other.status_code == 409, other.text
        again = await client.post(url, json=CALL, headers=as_a)
        assert (again.status_code, again.json()["replayed"]) == (201, True)
        assert again.json()["scopes"] == granted.json()["scopes"]

        policy.write_text(MORE)
        assert app.state.engine.registry.reload().ok
        after = await client.post(url, json=CALL, headers=as_a)
        assert after.status_code == 201, after.text
        body = after.json()
        assert (body["replayed"], body["held_micros"]) == (True, granted.json()["held_micros"])
        assert body["expires_at"] == granted.json()["expires_at"]
