"""A call that cannot apply changes nothing, so its retries cannot repeat half of it (issue 9,
item 3: a commit voided its hold, then failed in charge()'s HINCRBY; each retry voided the hold
again, and ``held`` went negative, which is free room)."""

from __future__ import annotations

import pytest

from budgetd import bounds
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import Client

BODY = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 1000,
    "user": "bob",
    "feature": "chat",
}


async def budgets(client: Client) -> list[tuple[str, int, int]]:
    r = await client.get("/v1/budgets", params={"org": "acme", "user": "bob", "feature": "chat"})
    scopes = r.json()["scopes"]
    return [
        (s["name"], s["spent_micros"], s["held_micros"]) for s in scopes if s["kind"] == "budget"
    ]


async def user_counter(store: ScriptStore) -> str:
    """The counter hash that holds bob's user-day budget (its held field, after a reserve)."""
    pattern = keys.org_prefix("acme") + "c:*"
    found = [
        str(k)
        async for k in store.client.scan_iter(match=pattern)
        if await store.client.hexists(k, "user-day|bob|h")
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("spent", "status"),
    [
        # Near 2^63: HINCRBY would overflow; the script refuses before writing (a server error).
        ("9223372036854775800", 500),
        # In range, but this commit would take it past 2^53 - 1: refused, 422 naming the field.
        (str(bounds.MAX_COUNTER_MICROS - 10), 422),
    ],
)
async def test_a_commit_that_cannot_apply_writes_nothing_however_often_retried(
    acme_client: Client, store: ScriptStore, spent: str, status: int
) -> None:
    grant = await acme_client.post("/v1/reservations", json=BODY)
    assert grant.status_code == 201
    rid, held = grant.json()["reservation_id"], grant.json()["held_micros"]
    before = await budgets(acme_client)
    assert [h for _, _, h in before] == [held, held, held]
    counter = await user_counter(store)
    await store.client.hset(counter, "user-day|bob|s", spent)
    for _ in range(3):
        r = await acme_client.post(
            f"/v1/reservations/{rid}/commit",
            params={"org": "acme"},
            json={"usage": {"input_tokens": 100, "output_tokens": 500}},
        )
        assert r.status_code == status, r.text
        if status == 422:
            assert r.json()["field"] == "usage"
    await store.client.hset(counter, "user-day|bob|s", "0")
    assert await budgets(acme_client) == before
    release = await acme_client.post(f"/v1/reservations/{rid}/release", params={"org": "acme"})
    assert release.json()["state"] == "released"
