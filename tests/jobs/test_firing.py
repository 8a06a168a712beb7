"""Scheduled jobs act for the firing they were scheduled for, not for the moment they happen to
start: a late period close summarises the period that ended, and a claimed job's claim is keyed
by its scheduled fire time, the same on every replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from litestar import Litestar

from budgetd.app import create_app
from budgetd.clock import FrozenClock
from budgetd.jobs.period_close import close_periods
from budgetd.jobs.scheduler import Jobs
from budgetd.periods import calendar_bounds
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore
from tests.api.conftest import Client, asgi_client, settings_for, write_policy

POLICY = """
org: acme
timezone: UTC
defaults:
  forecast: false
  spike_factor: null
budgets:
  - {name: org-hour, scope: org, limit_usd: 10, period: hour}
"""


@contextlib.asynccontextmanager
async def service(
    tmp_path: Path, store: ScriptStore, clock: FrozenClock | None = None, **settings: float
) -> AsyncIterator[tuple[Litestar, Client]]:
    directory = tmp_path / "policies"
    write_policy(directory, POLICY)
    app = create_app(settings_for(directory, **settings), store=store, clock=clock)
    async with asgi_client(app) as client:
        yield app, client


async def _closes(client: Client) -> list[dict[str, str]]:
    answer = await client.get("/v1/admin/events", params={"org": "acme"})
    assert answer.status_code == 200, answer.text
    return [e["fields"] for e in answer.json()["events"] if e["fields"]["type"] == "period_close"]


async def test_a_late_period_close_summarises_the_period_that_ended(
    tmp_path: Path, store: ScriptStore
) -> None:
    # The hour that just began (by the wall clock APScheduler fires by); the service's period
    # clock says the close runs 5 s after it, so the run is late.
    boundary = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    clock = FrozenClock(boundary + timedelta(seconds=5))
    ended, _, _ = calendar_bounds("hour", UTC, boundary - timedelta(seconds=1))
    current, _, _ = calendar_bounds("hour", UTC, boundary)
    async with service(tmp_path, store, clock) as (app, client):
        jobs: Jobs = app.state.jobs
        # APScheduler runs a job whose fire time has passed (within its grace) at once, late.
        jobs.scheduler.modify_job("close:acme:hour", next_run_time=boundary)
        closes: list[dict[str, str]] = []

        async def closed() -> bool:
            closes[:] = await _closes(client)
            return bool(closes)

        assert await _async_wait(closed)
        assert [c["period"] for c in closes] == [ended]
        # The next hour's on-time close is not suppressed by the late one.
        queue = app.state.queue
        assert (
            await close_periods(jobs.engine, queue, "acme", "hour", boundary + timedelta(hours=1))
            == 1
        )
        assert sorted(c["period"] for c in await _closes(client)) == sorted([ended, current])


async def test_replicas_schedule_the_same_firings_and_claim_the_scheduled_one(
    tmp_path: Path, store: ScriptStore
) -> None:
    interval = 7.0
    async with (
        service(tmp_path / "a", store, forecast_interval_s=interval) as (first, _),
        service(tmp_path / "b", store, forecast_interval_s=interval) as (second, _),
    ):
        for app in (first, second):
            nxt = app.state.jobs.scheduler.get_job("forecast").next_run_time
            assert nxt.timestamp() % interval == 0  # on the epoch grid: the same on every replica
        # A run claims the firing it was scheduled for (APScheduler coalesces missed firings of
        # an interval job into the latest one, so that is the one it claims).
        grid = int(datetime.now(UTC).timestamp() // interval)
        late = datetime.fromtimestamp(grid * interval, UTC)
        first.state.jobs.scheduler.modify_job("forecast", next_run_time=late)

        async def claimed() -> bool:
            return bool(await store.client.exists(f"{keys.PREFIX}:job:forecast:{grid}"))

        assert await _async_wait(claimed)


async def _async_wait(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until true or the deadline; the scheduler runs on real time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(await predicate())
