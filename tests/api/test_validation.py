"""One strict validation layer (api/validation.py) on every route: integers are integers, names
and ids are explained in words, bodies are bounded, and every refusal is a problem naming the
field."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.api.validation import MAX_BODY_BYTES, MAX_URL_CHARS
from budgetd.app import create_app
from budgetd.store.connect import embedded_store
from tests.api.conftest import Client, asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME

BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 100, "max_tokens": 100}
PROBLEM = "application/problem+json"


def _problem(r: object, status: int, field: str | None) -> dict[str, object]:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    assert r.headers["content-type"].startswith(PROBLEM)  # type: ignore[attr-defined]
    body: dict[str, object] = r.json()  # type: ignore[attr-defined]
    assert body.get("field") == field, body
    return body


@pytest.mark.parametrize("raw", [b'"1200"', b"1200.0", b"1e3", b"true"])
async def test_integers_are_json_integers(acme_client: Client, raw: bytes) -> None:
    body = b'{"org":"acme","model":"claude-haiku-test","max_tokens":10,"input_tokens":%s}' % raw
    r = await acme_client.post("/v1/reservations", content=body)
    problem = _problem(r, 422, "input_tokens")
    assert "whole number" in str(problem["detail"])
    nested = await acme_client.post(
        "/v1/usage",
        content=b'{"org":"acme","model":"claude-haiku-test","usage":{"input_tokens":%s}}' % raw,
    )
    _problem(nested, 422, "usage.input_tokens")


async def test_names_are_explained_in_words_not_regexes(acme_client: Client) -> None:
    for field, value in [("org", "bad org!"), ("user", "*"), ("feature", "x" * 3000)]:
        r = await acme_client.post("/v1/reservations", json={**BODY, field: value})
        detail = str(_problem(r, 422, field)["detail"])
        assert "letters, digits" in detail and "starting with a letter or digit" in detail
        assert "^" not in detail and "[A-Za-z" not in detail
        assert len(detail) < 300  # a 3,000-character value is not echoed back whole


async def test_an_empty_body_says_what_is_missing(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", content=b"")
    detail = _problem(r, 422, None)["detail"]
    assert detail == (
        "the request body is empty: send a JSON object with org, model, input_tokens, max_tokens"
    )
    missing = await acme_client.post("/v1/reservations", json={"org": "acme"})
    assert _problem(missing, 422, "model")["detail"] == "field model is required"


async def test_unknown_fields_name_what_the_request_takes(acme_client: Client) -> None:
    r = await acme_client.post("/v1/reservations", json={**BODY, "colour": "red"})
    assert "this request takes org, model, input_tokens" in str(
        _problem(r, 422, "colour")["detail"]
    )


async def test_deep_and_large_bodies_are_problems(acme_client: Client) -> None:
    deep = b'{"usage":{"x":' + b"[" * 1000 + b"]" * 1000 + b"}}"
    for path in ("/v1/reservations/r1/commit?org=acme", "/v1/cost", "/v1/usage"):
        r = await acme_client.post(path, content=deep)
        assert r.status_code in (413, 422) and r.headers["content-type"].startswith(PROBLEM)
    nested = await acme_client.post(
        "/v1/reservations/r1/commit?org=acme", content=deep.replace(b'"x"', b'"server_tool_use"')
    )
    _problem(nested, 422, "usage.server_tool_use")
    skipped = await acme_client.post("/v1/reservations/r1/commit?org=acme", content=deep)
    assert "nests too deeply" in str(_problem(skipped, 422, None)["detail"])
    big = b'{"org":"acme","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    for path in ("/v1/reservations", "/v1/usage", "/v1/cost", "/v1/admin/adjustments"):
        r = await acme_client.post(path, content=big)
        assert _problem(r, 413, None)["type"] == "https://budgetd.dev/problems/payload-too-large"


async def test_a_huge_id_or_url_is_a_problem(acme_client: Client) -> None:
    rid = "r" * 10_000  # (through uvicorn: tests/test_serve.py)
    r = await acme_client.post(f"/v1/reservations/{rid}/commit", json={"usage": {}})
    assert "at most 4096" in str(_problem(r, 414, None)["detail"])
    r = await acme_client.get("/v1/budgets", params={"org": "acme", "user": "u" * MAX_URL_CHARS})
    _problem(r, 414, None)
    body = await acme_client.post("/v1/reservations", json={**BODY, "reservation_id": "r" * 300})
    assert "up to 128" in str(_problem(body, 422, "reservation_id")["detail"])


async def test_budgets_validates_like_reserve(acme_client: Client) -> None:
    star = await acme_client.get("/v1/budgets", params={"org": "acme", "user": "*"})
    assert "letters, digits" in str(_problem(star, 422, "user")["detail"])
    long = await acme_client.get("/v1/budgets", params={"org": "acme", "feature": "f" * 3000})
    _problem(long, 422, "feature")
    model = await acme_client.get("/v1/budgets", params={"org": "acme", "model": "gpt-4"})
    assert _problem(model, 422, "model")["type"] == "https://budgetd.dev/problems/unknown-model"
    unknown = await acme_client.get("/v1/budgets", params={"org": "acme", "colour": "red"})
    _problem(unknown, 422, "colour")
    ok = await acme_client.get("/v1/budgets", params={"org": "acme", "model": "claude-haiku-test"})
    assert ok.status_code == 200


async def test_405_names_the_allowed_methods(acme_client: Client) -> None:
    for path, allowed in [("/v1/reservations", "POST"), ("/v1/usage", "POST")]:
        r = await acme_client.get(path)
        assert _problem(r, 405, None)["type"] == "https://budgetd.dev/problems/method-not-allowed"
        assert allowed in r.headers["allow"].split(", ")


async def test_ledger_bounds_before_1970_are_a_problem_before_streaming(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    (admin,) = write_keys(keys, ("acme", "admin"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    app = create_app(settings_for(directory, keys_file=keys), store=embedded_store())
    auth = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(app) as client:
        for name in ("since", "until"):
            r = await client.get(
                "/v1/admin/ledger",
                params={"org": "acme", name: "1969-12-31T00:00:00Z"},
                headers=auth,
            )
            assert "from 1970 on" in str(_problem(r, 422, name)["detail"])


async def test_keys_are_sent_exactly_and_once(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    (key,) = write_keys(keys, ("acme", "app"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    app = create_app(settings_for(directory, keys_file=keys), store=embedded_store())
    async with asgi_client(app) as client:
        good = {"Authorization": f"Bearer {key}"}
        assert (await client.post("/v1/reservations", json=BODY, headers=good)).status_code == 201
        spaced = {"Authorization": f"Bearer  {key}"}
        r = await client.post("/v1/reservations", json=BODY, headers=spaced)
        assert "whitespace" in str(_problem(r, 401, None)["detail"])
        two = [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer bdk_other")]
        for path in ("/v1/reservations", "/v1/usage"):
            r = await client.post(path, json=BODY, headers=two)
            assert "2 Authorization headers" in str(_problem(r, 401, None)["detail"])
        cost = await client.post("/v1/cost", json={"model": "claude-haiku-test", "usage": {}})
        _problem(cost, 401, None)


async def test_ledger_bounds_are_rfc3339_and_until_the_epoch_is_empty(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    (admin,) = write_keys(keys, ("acme", "admin"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    app = create_app(settings_for(directory, keys_file=keys), store=embedded_store())
    auth = {"Authorization": f"Bearer {admin}"}
    async with asgi_client(app) as client:
        lax = await client.get(
            "/v1/admin/ledger", params={"org": "acme", "until": "0"}, headers=auth
        )
        assert "RFC 3339" in str(_problem(lax, 422, "until")["detail"])
        epoch = await client.get(
            "/v1/admin/ledger",
            params={"org": "acme", "until": "1970-01-01T00:00:00Z"},
            headers=auth,
        )
        assert (epoch.status_code, epoch.text) == (200, "")
