"""Ledger retention: entries older than the cut-off are exported to a file and only then
trimmed; reconcile stays exact; a run with nothing that old writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from budgetd import ledger
from budgetd.contract import CommitRequest, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.jobs.retention import apply_retention
from budgetd.settings import MIN_RETENTION_DAYS, from_env
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from budgetd.usage import Usage


async def _commit(engine: Engine, rid: str) -> None:
    grant = await engine.reserve(
        ReserveRequest(
            org="acme",
            model="claude-haiku-test",
            input_tokens=10,
            max_tokens=10,
            user="ann",
            reservation_id=rid,
        )
    )
    assert isinstance(grant, Grant)
    await engine.commit("acme", rid, CommitRequest(usage=Usage(input_tokens=10, output_tokens=4)))


async def test_old_entries_are_exported_then_trimmed_once(
    engine: Engine, store: ScriptStore, tmp_path: Path
) -> None:
    for i in range(5):
        await _commit(engine, f"r{i}")
    await asyncio.sleep(0.01)  # the cut-off below is "now": every entry is older
    out = tmp_path / "archive"

    assert await apply_retention(store, "acme", 0, out) == 5
    files = list((out / "acme").iterdir())
    assert len(files) == 1 and files[0].suffix == ".jsonl"
    exported = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [e["reservation_id"] for e in exported] == [f"r{i}" for i in range(5)]
    assert await store.client.xlen(keys.ledger("acme")) == 0
    report = await ledger.reconcile(store, "acme")
    assert report.ok and report.entries == 0, report.differences

    await _commit(engine, "r5")  # newer than the next cut-off: kept
    assert await apply_retention(store, "acme", 60_000, out) == 0
    assert list((out / "acme").iterdir()) == files
    assert await store.client.xlen(keys.ledger("acme")) == 1


async def test_nothing_is_trimmed_when_the_export_cannot_be_written(
    engine: Engine, store: ScriptStore, tmp_path: Path
) -> None:
    await _commit(engine, "r0")
    await asyncio.sleep(0.01)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(OSError):
        await apply_retention(store, "acme", 0, not_a_directory)
    assert await store.client.xlen(keys.ledger("acme")) == 1


def test_retention_needs_a_month_and_an_export_directory(tmp_path: Path) -> None:
    assert from_env({}).ledger_retention_days == 0
    with pytest.raises(ValueError, match=str(MIN_RETENTION_DAYS)):
        from_env({"BUDGETD_LEDGER_RETENTION_DAYS": "7", "BUDGETD_LEDGER_EXPORT_DIR": "x"})
    with pytest.raises(ValueError, match="BUDGETD_LEDGER_EXPORT_DIR"):
        from_env({"BUDGETD_LEDGER_RETENTION_DAYS": "90"})
    settings = from_env(
        {"BUDGETD_LEDGER_RETENTION_DAYS": "90", "BUDGETD_LEDGER_EXPORT_DIR": str(tmp_path)}
    )
    assert (settings.ledger_retention_days, settings.ledger_export_dir) == (90, tmp_path)
