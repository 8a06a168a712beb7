"""The keys file is live configuration: reloaded like the policies, last good set kept on a
broken or deleted file (and shown in /readyz and a metric), errors as one located line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.auth import LiveKeys
from budgetd.settings import ConfigError
from budgetd.store.connect import embedded_store
from tests.api.conftest import Client, asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME

BODY = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 10, "max_tokens": 10}


def _setup(tmp_path: Path, **settings: object) -> tuple[object, Path, list[str]]:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    keys = tmp_path / "keys.yaml"
    made = write_keys(keys, ("acme", "app", "one"), ("acme", "admin", "two"))
    app = create_app(settings_for(directory, keys_file=keys, **settings), store=embedded_store())
    return app, keys, made


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_removed_key_stops_working_after_a_reload(tmp_path: Path) -> None:
    app, keys, (one, two) = _setup(tmp_path)
    live: LiveKeys = app.state.api_keys  # type: ignore[attr-defined]
    async with asgi_client(app) as client:  # type: ignore[arg-type]
        assert (
            await client.post("/v1/reservations", json=BODY, headers=_auth(one))
        ).status_code == 201
        text = keys.read_text()
        keys.write_text(text[: text.index("  - sha256", 10)])  # keep only the first entry
        keys.touch()
        assert live.reload_if_changed() is not None
        assert (
            await client.post("/v1/reservations", json=BODY, headers=_auth(two))
        ).status_code == 401
        assert (
            await client.post("/v1/reservations", json=BODY, headers=_auth(one))
        ).status_code == 201


async def _keys_status(client: Client, errors: list[str]) -> dict[str, object]:
    """/readyz's keys section once it shows ``errors`` (the poll runs every 50 ms)."""
    deadline = time.monotonic() + 10
    while True:
        keys: dict[str, object] = (await client.get("/readyz")).json()["keys"]
        if keys["errors"] == errors:
            return keys
        assert time.monotonic() < deadline, f"/readyz never showed {errors}: {keys}"
        await asyncio.sleep(0.05)


async def test_a_broken_or_deleted_file_keeps_the_last_good_keys(tmp_path: Path) -> None:
    # Through the poll and HTTP only: a broken file used to go unseen (nothing reloaded it, and
    # nothing said it was broken).
    app, keys, (one, _) = _setup(tmp_path, policy_poll_s=0.05)
    async with asgi_client(app) as client:  # type: ignore[arg-type]
        keys.write_text("keys:\n  - sha256: nothex\n    org: acme\n")
        broken = (
            f"{keys}:2: keys[0].sha256: has the wrong format: expected 64 lowercase hex digits "
            "(a SHA-256) (got 'nothex')"
        )
        ready = await _keys_status(client, [broken])
        assert ready == {"loaded": True, "last_reload_ok": False, "errors": [broken]}
        assert (
            await client.post("/v1/reservations", json=BODY, headers=_auth(one))
        ).status_code == 201
        assert "budgetd_config_load_error_total 1.0" in (await client.get("/metrics")).text
        keys.unlink()
        await _keys_status(client, [f"{keys}: keys file not found"])
        assert (
            await client.post("/v1/reservations", json=BODY, headers=_auth(one))
        ).status_code == 201


async def test_the_poll_picks_up_a_change(tmp_path: Path) -> None:
    app, keys, (one, _) = _setup(tmp_path, policy_poll_s=0.05)
    async with asgi_client(app) as client:  # type: ignore[arg-type]
        keys.write_text("keys: []\n")
        deadline = time.monotonic() + 10
        while True:
            r = await client.post("/v1/reservations", json=BODY, headers=_auth(one))
            if r.status_code == 401:
                break
            assert time.monotonic() < deadline, "the removed key still works"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "keys:\n  - sha256: " + "a" * 64 + "\n    org: bad org!\n",
            ":3: keys[0].org: has the wrong format",
        ),
        (
            "keys:\n  - sha256: " + "a" * 64 + "\n    org: acme\n    colour: red\n",
            ":4: keys[0].colour: unknown key",
        ),
        ("keys: [\n", ":2: (YAML syntax)"),
        (
            "keys:\n  - sha256: " + "a" * 64 + "\n    org: acme\n    name: k\n"
            "  - sha256: " + "b" * 64 + "\n    org: acme\n    name: k\n",
            ":7: keys[1].name: 'k' names another key already",
        ),
    ],
)
def test_a_bad_keys_file_at_start_is_one_located_line(
    tmp_path: Path, text: str, message: str
) -> None:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    keys = tmp_path / "keys.yaml"
    keys.write_text(text)
    with pytest.raises(ConfigError) as raised:
        create_app(settings_for(directory, keys_file=keys), store=embedded_store())
    assert str(raised.value).startswith(f"{keys}{message}"), str(raised.value)
    assert "\n" not in str(raised.value)
