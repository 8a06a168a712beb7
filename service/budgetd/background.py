"""Periodic work of one process: reload changed policies, reclaim expired holds, keep the period
clock in step with Redis TIME. Each task is safe on every replica at once (the sweep's script is
idempotent: a hold expires once whoever reaches it first)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from budgetd.clock import SystemClock
from budgetd.engine import Engine
from budgetd.store.base import StoreUnavailable

log = logging.getLogger(__name__)


def policy_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, mtimes and sizes of the policy files, following symlinks: a Kubernetes ConfigMap
    update swaps the ``..data`` link, which a watch on one file would stop seeing; polling the
    directory's resolved files sees every swap."""
    out = []
    for path in sorted(directory.glob("*.y*ml")):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            out.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


async def reload_if_changed(engine: Engine, last: list[tuple[tuple[str, int, int], ...]]) -> None:
    signature = policy_signature(engine.registry.directory)
    if last and signature == last[0]:
        return
    last[:] = [signature]
    status = engine.registry.reload()
    engine.metrics.policy_loaded.set(1 if engine.registry.loaded else 0)
    if not status.ok:
        engine.metrics.policy_load_errors.inc()


async def sweep_expired(engine: Engine) -> int:
    """Reclaim every expired hold of every org the policy knows."""
    total = 0
    for org in list(engine.registry.current.orgs) if engine.registry.loaded else []:
        while True:
            reclaimed, remaining = await engine.expire(org)
            total += reclaimed
            if remaining == 0 or reclaimed == 0:
                break
    if total:
        engine.metrics.expired_holds.inc(total)
    return total


async def sync_clock(engine: Engine, clock: SystemClock) -> None:
    sent = time.time()
    server = await engine.store.server_time()
    clock.sync(server, sent, time.time())


async def every(interval_s: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``job`` every ``interval_s`` until cancelled; a failing run is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except StoreUnavailable as exc:
            log.warning("%s skipped: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)
