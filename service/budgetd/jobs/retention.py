"""Ledger retention: entries older than the configured age are exported to a file, then
trimmed (ledger.archive). Trimmed spend stays in the org's archive hash, so reconcile stays
exact; the files are the history."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from budgetd import ledger
from budgetd.store.scripted import ScriptStore

log = logging.getLogger(__name__)


def export_path(directory: Path, org: str, before_ms: int) -> Path:
    stamp = datetime.fromtimestamp(before_ms / 1000, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return directory / org / f"ledger-{org}-before-{stamp}.jsonl"


async def apply_retention(store: ScriptStore, org: str, keep_ms: int, directory: Path) -> int:
    """Archive ``org``'s entries older than ``keep_ms`` (Redis time) into ``directory``; returns
    how many were trimmed. Writes no file when there is nothing that old."""
    before_ms = int(await store.server_time() * 1000) - keep_ms
    oldest = await ledger.oldest_ms(store, org)
    if oldest is None or oldest >= before_ms:
        return 0
    path = export_path(directory, org, before_ms)
    path.parent.mkdir(parents=True, exist_ok=True)
    removed = await ledger.archive(store, org, before_ms, path)
    log.info("ledger retention: org %s: %d entries exported to %s and trimmed", org, removed, path)
    return removed
