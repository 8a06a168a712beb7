"""The degraded-grant id namespace is budgetd's own (issue 9, item 5): commit and release route
ids starting with ``deg.`` to the degraded path (nothing held, spend recorded), so a client's
reservation in that namespace was held but never charged. Such ids are refused at reserve."""

from __future__ import annotations

from tests.api.conftest import Client

BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 100}


async def test_a_client_id_in_the_degraded_namespace_is_refused(acme_client: Client) -> None:
    r = await acme_client.post(
        "/v1/reservations", json={**BODY, "user": "bob", "reservation_id": "deg.abc.123"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith("/invalid-request")
    assert r.json()["field"] == "reservation_id"
    budgets = await acme_client.get("/v1/budgets", params={"org": "acme", "user": "bob"})
    assert all(s.get("held_micros") in (0, None) for s in budgets.json()["scopes"])
    # Elsewhere in an id, the letters are a client's to use.
    ok = await acme_client.post("/v1/reservations", json={**BODY, "reservation_id": "my.deg.1"})
    assert ok.status_code == 201
