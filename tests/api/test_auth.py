"""API keys: an app key acts on its own org only; every other org is 403 on every endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.auth import KeyEntry, KeyRing, digest, new_key
from budgetd.errors import Unauthorized
from budgetd.store.connect import embedded_store
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME

OTHER = ACME.replace("org: acme", "org: globex")
RESERVE = {"model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}
USAGE = {"usage": {"input_tokens": 1}}


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    app, admin, globex = write_keys(
        path, ("acme", "app"), ("acme", "admin", "ops"), ("globex", "app")
    )
    return path, {"app": app, "admin": admin, "globex": globex}


def _app(tmp_path: Path, keys: Path):  # type: ignore[no-untyped-def]
    directory = tmp_path / "policies"
    write_policy(directory, ACME, "acme.yaml")
    write_policy(directory, OTHER, "globex.yaml")
    return create_app(settings_for(directory, keys_file=keys), store=embedded_store())


async def test_cross_org_is_403_on_every_endpoint(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys_file
    auth = {"Authorization": f"Bearer {made['app']}"}
    async with asgi_client(_app(tmp_path, path)) as client:
        # Own org works.
        ok = await client.post("/v1/reservations", json={"org": "acme", **RESERVE}, headers=auth)
        assert ok.status_code == 201
        rid = ok.json()["reservation_id"]
        attempts = [
            client.post("/v1/reservations", json={"org": "globex", **RESERVE}, headers=auth),
            client.post(f"/v1/reservations/{rid}/commit?org=globex", json=USAGE, headers=auth),
            client.post(f"/v1/reservations/{rid}/release?org=globex", headers=auth),
            client.post(
                "/v1/usage",
                json={"org": "globex", "model": "claude-haiku-test", **USAGE},
                headers=auth,
            ),
            client.post(
                "/v1/cost",
                json={"org": "globex", "model": "claude-haiku-test", **USAGE},
                headers=auth,
            ),
            client.get("/v1/budgets?org=globex", headers=auth),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 403, response.text
            body = response.json()
            assert body["type"].endswith("/forbidden")
            assert body["field"] == "org"
        # The hold in acme is untouched by the refused commit and release.
        view = await client.get("/v1/budgets?org=acme", headers=auth)
        assert view.json()["scopes"][0]["held_micros"] == 60


async def test_missing_and_unknown_keys_are_401(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, _ = keys_file
    async with asgi_client(_app(tmp_path, path)) as client:
        none = await client.get("/v1/budgets?org=acme")
        wrong = await client.get(
            "/v1/budgets?org=acme", headers={"Authorization": "Bearer bdk_nope"}
        )
        assert (none.status_code, wrong.status_code) == (401, 401)
        assert none.headers["content-type"].startswith("application/problem+json")
        assert (await client.get("/healthz")).status_code == 200


async def test_admin_key_reads_its_own_org_only(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys_file
    admin = {"Authorization": f"Bearer {made['admin']}"}
    async with asgi_client(_app(tmp_path, path)) as client:
        assert (await client.get("/v1/budgets?org=acme", headers=admin)).status_code == 200
        assert (await client.get("/v1/budgets?org=globex", headers=admin)).status_code == 403


async def test_path_only_calls_take_the_org_from_the_key(
    tmp_path: Path, keys_file: tuple[Path, dict[str, str]]
) -> None:
    path, made = keys_file
    auth = {"Authorization": f"Bearer {made['app']}"}
    async with asgi_client(_app(tmp_path, path)) as client:
        rid = (
            await client.post("/v1/reservations", json={"org": "acme", **RESERVE}, headers=auth)
        ).json()["reservation_id"]
        done = await client.post(f"/v1/reservations/{rid}/commit", json=USAGE, headers=auth)
        assert done.status_code == 200
        assert done.json()["cost_micros"] == 1


def test_a_ring_remembers_its_own_keys_only() -> None:
    """The hot path does not hash a known key on every request (issue 13): a ring remembers the
    principal of each key it has accepted, and nothing of the keys it refused, so a stream of
    made-up keys grows nothing."""
    good = new_key()
    ring = KeyRing([KeyEntry(sha256=digest(good), org="acme", role="app", name="ci")])
    for _ in range(200):
        with pytest.raises(Unauthorized, match="unknown API key"):
            ring.authenticate(f"Bearer {new_key()}")
    first = ring.authenticate(f"Bearer {good}")
    assert (first.org, first.role, first.key) == ("acme", "app", "ci")
    assert ring.authenticate(f"Bearer {good}") is first
    with pytest.raises(Unauthorized, match="whitespace"):
        ring.authenticate(f"Bearer {good} ")
    assert len(ring.remembered) == 1
