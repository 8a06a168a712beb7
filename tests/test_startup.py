"""Start-up says what is wrong: a bad setting, a missing policy directory or price table, a
Redis that keeps nothing on disk, each in one line that names it."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from budgetd import logs
from budgetd.app import create_app
from budgetd.cli import main
from budgetd.settings import ConfigError, Settings, from_env
from tests.api.conftest import asgi_client, settings_for, write_keys, write_policy
from tests.engine.conftest import ACME
from tests.servers import start_redis


def test_a_bad_setting_is_one_named_line() -> None:
    with pytest.raises(ConfigError) as raised:
        from_env({"BUDGETD_REDIS_TIMEOUT_S": "half"})
    assert str(raised.value) == ("BUDGETD_REDIS_TIMEOUT_S='half': not a number (seconds, e.g. 0.5)")
    with pytest.raises(ConfigError, match=r"^BUDGETD_PORT='80a': not a whole number$"):
        from_env({"BUDGETD_PORT": "80a"})
    with pytest.raises(ConfigError, match=r"^BUDGETD_DURABILITY must be fast or strict"):
        from_env({"BUDGETD_DURABILITY": "safe"})


def test_serve_with_a_bad_setting_exits_with_the_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BUDGETD_REDIS_TIMEOUT_S", "half")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "budgetd: BUDGETD_REDIS_TIMEOUT_S='half': not a number (seconds, e.g. 0.5)\n"
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"BUDGETD_REDIS_TIMEOUT_S": "half"},
            "budgetd: BUDGETD_REDIS_TIMEOUT_S='half': not a number (seconds, e.g. 0.5)",
        ),
        ({"BUDGETD_POLICY_DIR": "nowhere"}, "budgetd: BUDGETD_POLICY_DIR=nowhere: not a directory"),
    ],
)
def test_uvicorn_on_the_asgi_entry_prints_the_same_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    # `uvicorn budgetd.asgi:app` run by hand printed the import's traceback.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    run = {**clean, "BUDGETD_POLICY_DIR": str(Path(__file__).parents[1] / "policies"), **env}
    uvicorn = str(Path(sys.executable).with_name("uvicorn"))
    budgetd = str(Path(sys.executable).with_name("budgetd"))
    for command in ([uvicorn, "budgetd.asgi:app", "--port", "0"], [budgetd, "serve"]):
        done = subprocess.run(
            command, check=False, env=run, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (command, done.stderr)
        (only,) = done.stderr.splitlines()
        assert only.startswith(line), (command, done.stderr)


def test_a_missing_policy_dir_or_price_table_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        create_app(Settings(policy_dir=tmp_path / "nowhere"))
    assert str(raised.value) == (
        f"BUDGETD_POLICY_DIR={tmp_path / 'nowhere'}: not a directory (policy files and "
        "pricing.yaml live there; it is relative to the working directory "
        f"{Path.cwd()})"
    )
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    (directory / "pricing.yaml").unlink()
    with pytest.raises(ConfigError, match=r"pricing.yaml: price table not found"):
        create_app(Settings(policy_dir=directory))
    with pytest.raises(ConfigError, match=r"BUDGETD_PRICING_FILE=.*: price table not found"):
        create_app(Settings(policy_dir=directory, pricing_file=tmp_path / "none.yaml"))


def _listen(name: str) -> list[logging.LogRecord]:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger(name).addHandler(handler)
    return seen


async def test_a_redis_without_persistence_is_a_warning_or_in_strict_an_error(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")  # --save "" --appendonly no
    try:
        directory = tmp_path / "policies"
        write_policy(directory, ACME)
        seen = _listen("budgetd")
        app = create_app(settings_for(directory, redis_url=server.url))
        async with asgi_client(app):
            pass
        warnings = [r.getMessage() for r in seen if r.levelno == logging.WARNING]
        assert any("keeps nothing on disk (no AOF, no RDB snapshots)" in w for w in warnings)
        strict = create_app(settings_for(directory, redis_url=server.url, durability="strict"))
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(
            strict({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)  # type: ignore[arg-type]
        )
        await inbox.put({"type": "lifespan.startup"})
        failed = await outbox.get()
        assert failed["type"] == "lifespan.startup.failed"
        assert "durability=strict needs Redis with appendonly yes" in failed["message"]
        task.cancel()
    finally:
        server.stop()


def test_serve_in_strict_mode_without_aof_exits_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_redis(tmp_path / "redis")  # --appendonly no
    try:
        directory = tmp_path / "policies"
        write_policy(directory, ACME)
        monkeypatch.setenv("BUDGETD_POLICY_DIR", str(directory))
        monkeypatch.setenv("BUDGETD_REDIS_URL", server.url)
        monkeypatch.setenv("BUDGETD_DURABILITY", "strict")
        assert main(["serve"]) == 2
        # The error is one plain line, last; before it only JSON log lines (the warnings
        # create_app logs on the way, e.g. no keys file).
        *logged, error = capsys.readouterr().err.splitlines()
        assert error == (
            "budgetd: BUDGETD_DURABILITY=strict: durability=strict needs Redis with appendonly yes"
        )
        assert all(json.loads(line)["level"] in ("info", "warning") for line in logged)
    finally:
        server.stop()


@pytest.mark.parametrize("entry", ["budgetd.asgi", "budgetd.gateway.asgi"])
def test_the_asgi_entries_keep_the_apps_lasting_objects_out_of_full_collections(
    tmp_path: Path, entry: str
) -> None:
    """A full collection on a worker walked every object the app holds for life (~100,000:
    routes, schemas, prices, policies), a 50-90 ms stop of every call in flight; the entry
    points freeze them once the app is built, so a full collection walks only what came later."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
    write_keys(tmp_path / "keys.yaml", ("acme", "app", "chat"))  # the gateway needs keys
    run = {
        **clean,
        "BUDGETD_POLICY_DIR": str(Path(__file__).parents[1] / "policies"),
        "BUDGETD_KEYS_FILE": str(tmp_path / "keys.yaml"),
    }
    probe = f"import gc, {entry}\nprint(gc.get_freeze_count(), len(gc.get_objects()))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        env=run,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    frozen, tracked = map(int, done.stdout.split())
    assert frozen > 20_000  # the app's lasting objects
    assert tracked < frozen // 10  # what a full collection still walks


@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_one_worker_serves_a_frozen_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """`budgetd serve` / `budgetd gateway` with one worker serve the app they built themselves
    (not the asgi module): it is frozen before uvicorn runs it."""
    seen: list[int] = []
    monkeypatch.setattr(logs, "configure", lambda level: None)  # the test process's logging
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.append(gc.get_freeze_count()))
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("BUDGETD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BUDGETD_POLICY_DIR", str(Path(__file__).parents[1] / "policies"))
    write_keys(tmp_path / "keys.yaml", ("acme", "app", "chat"))  # the gateway needs keys
    monkeypatch.setenv("BUDGETD_KEYS_FILE", str(tmp_path / "keys.yaml"))
    try:
        assert main([command]) in (0, None)
    finally:
        gc.unfreeze()
    assert seen and seen[0] > 20_000
