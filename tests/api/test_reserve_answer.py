"""The reserve answer, v2 (issue 13): a grant carries what a caller acts on; the per-scope
state of every applicable limit only when asked (``?detail=scopes``). Denials are unchanged:
429, the denying scopes, Retry-After. docs/decisions.md, "Reserve answer v2 (issue 13)"."""

from __future__ import annotations

from tests.api.conftest import Client

BODY = {
    "org": "acme",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 100_000,
    "user": "bob",
    "feature": "chat",
}
V1_SCOPE_FIELDS = {
    "kind",
    "name",
    "scope",
    "entity",
    "source",
    "limit",
    "remaining",
    "spent_micros",
    "held_micros",
    "period",
    "period_start",
    "period_end",
    "rate_kind",
    "mode",
}


async def test_a_grant_answers_without_the_per_scope_detail(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", json=BODY)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body.keys() == {
        "reservation_id",
        "held_micros",
        "expires_at",
        "scopes",
        "warnings",
        "replayed",
        "degraded",
        "durability",
    }
    assert body["held_micros"] == 500_100
    # Empty, as a degraded grant's always was: clients that require the field still decode it.
    assert body["scopes"] == []
    # What a caller acts on is all there: the crossed threshold still warns.
    assert [(w["kind"], w["name"], w["threshold_pct"]) for w in body["warnings"]] == [
        ("threshold", "user-day", 50)
    ]
    assert len(r.content) < 400


async def test_detail_scopes_lists_every_applicable_limit(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations?detail=scopes", json=BODY)
    assert r.status_code == 201, r.text
    scopes = r.json()["scopes"]
    assert {(s["kind"], s["name"]) for s in scopes} >= {("budget", "user-day")}
    user = next(s for s in scopes if s["name"] == "user-day")
    assert user.keys() == V1_SCOPE_FIELDS
    assert (user["entity"], user["remaining"]) == ("bob", 1_000_000 - 500_100)
    assert user["period_start"] < user["period_end"]


async def test_a_replay_answers_in_the_shape_asked_for(acme_client: Client) -> None:
    body = {**BODY, "reservation_id": "answer-replay"}
    first = await acme_client.post("/v1/reservations", json=body)
    assert first.json()["scopes"] == []
    again = await acme_client.post("/v1/reservations?detail=scopes", json=body)
    assert again.status_code == 201
    assert again.json()["replayed"] is True
    assert any(s["name"] == "user-day" for s in again.json()["scopes"])


async def test_a_denial_still_names_the_denying_scope_and_when_to_retry(
    acme_client: Client,
) -> None:
    await acme_client.post("/v1/reservations", json={**BODY, "max_tokens": 150_000})
    r = await acme_client.post("/v1/reservations", json={**BODY, "max_tokens": 150_000})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    (scope,) = r.json()["scopes"]
    assert (scope["name"], scope["entity"], scope["reason"]) == ("user-day", "bob", "full")
    assert scope["retry_after_s"] > 0


async def test_an_unknown_detail_is_422_naming_the_parameter(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations?detail=everything", json=BODY)
    assert r.status_code == 422
    assert r.json()["field"] == "detail"
    other = await acme_client.post("/v1/reservations?verbose=1", json=BODY)
    assert other.status_code == 422
