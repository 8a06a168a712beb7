"""A policy reload reads and checks its files off the event loop: the loop serving reserves and
commits keeps turning meanwhile (a 50-org directory takes 0.1-0.2 s to load, and a ConfigMap
change reloads every replica at once)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import TEST_PRICING
from tests.engine.conftest import ACME

from budgetd.clock import FrozenClock
from budgetd.engine import Engine
from budgetd.jobs.policy_reload import PolicyWatcher
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.connect import embedded_store


async def test_the_event_loop_turns_while_a_reload_reads_the_files(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"org{i}.yaml").write_text(ACME.replace("org: acme", f"org: org{i}"))
    engine = Engine(
        PolicyRegistry(tmp_path, TEST_PRICING),
        embedded_store(),
        FrozenClock(datetime.now(UTC)),
        Metrics(),
    )
    turns = 0

    async def other_calls() -> None:
        nonlocal turns
        while not engine.registry.loaded:
            turns += 1
            await asyncio.sleep(0)

    others = asyncio.create_task(other_calls())
    assert await PolicyWatcher(engine).reload_if_changed()
    await others
    assert engine.registry.last_status.ok and len(engine.registry.current.orgs) == 20
    assert turns > 0  # 0 when the files were read in the loop: nothing else ran meanwhile


async def test_a_broken_file_read_in_a_thread_keeps_the_last_good_policy(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text(ACME)
    registry = PolicyRegistry(tmp_path, TEST_PRICING)
    assert (await registry.reload_in_thread()).ok
    (tmp_path / "acme.yaml").write_text("org: acme\nbudgets: 3\n")
    status = await registry.reload_in_thread()
    assert not status.ok and "acme.yaml:2" in status.errors[0]
    assert "acme" in registry.current.orgs and registry.load_errors == 1
