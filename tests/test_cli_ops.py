"""``budgetd keys new`` and ``budgetd ledger export|trim|reconcile`` against a real Redis."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from budgetd.auth import KeyRing
from budgetd.cli import main
from budgetd.clock import SystemClock
from budgetd.contract import CommitRequest, ReserveRequest, UsageRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.store.connect import redis_store
from budgetd.usage import Usage
from tests.api.conftest import write_policy
from tests.engine.conftest import ACME, make_registry


def test_keys_new_writes_an_entry_that_authenticates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.yaml"
    policies = tmp_path / "policies"
    write_policy(policies, ACME, "acme.yaml")
    write_policy(policies, ACME.replace("org: acme", "org: globex"), "globex.yaml")
    new = ["keys", "new", "--file", str(keys_file), "--policy-dir", str(policies)]
    assert main([*new, "--org", "acme", "--role", "admin"]) == 0
    assert main([*new, "--org", "globex"]) == 0
    first, second = capsys.readouterr().out.split()
    ring = KeyRing.load(keys_file)
    assert (
        ring.authenticate(f"Bearer {first}").org,
        ring.authenticate(f"Bearer {first}").role,
    ) == ("acme", "admin")
    assert ring.authenticate(f"Bearer {second}").org == "globex"
    assert first not in keys_file.read_text()  # only the digest is stored


@pytest.fixture
def filled_ledger(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETD_REDIS_URL", redis_url)

    async def fill() -> None:
        store = redis_store(redis_url)
        await store.client.flushdb()
        engine = Engine(make_registry(tmp_path, ACME), store, SystemClock(), Metrics())
        await engine.reserve(
            ReserveRequest(
                org="acme",
                user="bob",
                feature="chat",
                model="claude-haiku-test",
                input_tokens=10,
                max_tokens=10,
                reservation_id="r1",
            )
        )
        await engine.commit("acme", "r1", CommitRequest(usage=Usage(input_tokens=7)))
        await engine.record(
            UsageRequest(
                org="acme",
                user="eve",
                model="claude-haiku-test",
                usage=Usage(output_tokens=3),
                record_id="u1",
            )
        )
        await store.close()

    asyncio.run(fill())


def test_ledger_export_jsonl_and_csv(
    filled_ledger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "export", "--org", "acme"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["kind"], r["cost_micros"], r["user"]) for r in rows] == [
        ("commit", "7", "bob"),
        ("record", "15", "eve"),
    ]
    assert main(["ledger", "export", "--org", "acme", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["reservation_id"], r["feature"]) for r in table] == [("r1", "chat"), ("u1", "")]


def test_ledger_trim_exports_first_and_reconcile(
    filled_ledger: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "reconcile", "--org", "acme"]) == 0
    assert "OK: counters equal ledger plus open holds" in capsys.readouterr().out
    saved = tmp_path / "old.jsonl"
    with pytest.raises(SystemExit, match="in the past"):
        main(["ledger", "trim", "--org", "acme", "--before", "2999-01-01", "--export", str(saved)])
    now = datetime.now(UTC).isoformat()
    assert main(["ledger", "trim", "--org", "acme", "--before", now, "--export", str(saved)]) == 0
    assert len(saved.read_text().splitlines()) == 2
    assert "removed 2 entries" in capsys.readouterr().out
    assert main(["ledger", "export", "--org", "acme"]) == 0
    assert capsys.readouterr().out == ""
    # What the trimmed entries charged moved to the archive: reconcile is still exact.
    assert main(["ledger", "reconcile", "--org", "acme"]) == 0
    assert "OK" in capsys.readouterr().out


def test_ledger_export_edges_are_one_line_errors(
    filled_ledger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "export", "--org", "acme", "--since", "1969-12-31"]) == 2
    assert capsys.readouterr().err == (
        "budgetd: --since '1969-12-31': 1969-12-31T00:00:00 is before 1970-01-01, where the "
        "ledger starts\n"
    )
    assert main(["ledger", "export", "--org", "acme", "--until", "yesterday"]) == 2
    assert "--until 'yesterday': Invalid isoformat string" in capsys.readouterr().err
    assert main(["ledger", "export", "--org", "no-such-org"]) == 1
    assert capsys.readouterr().err == (
        "budgetd: no ledger for org 'no-such-org' in this Redis (unknown org?)\n"
    )


def test_ledger_export_into_head_exits_quietly(tmp_path: Path, redis_url: str) -> None:
    async def fill() -> None:
        store = redis_store(redis_url)
        await store.client.flushdb()
        engine = Engine(make_registry(tmp_path, ACME), store, SystemClock(), Metrics())
        for i in range(600):  # well past a pipe's 64 KiB buffer
            usage = Usage(input_tokens=1, output_tokens=1)
            await engine.record(
                UsageRequest(org="acme", model="claude-haiku-test", usage=usage, record_id=f"u{i}")
            )
        await store.close()

    asyncio.run(fill())
    budgetd = str(Path(sys.executable).with_name("budgetd"))
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{budgetd} ledger export --org acme | head -n 1"],
        env={**os.environ, "BUDGETD_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["kind"] == "record"
