"""APScheduler (3.x, AsyncIOScheduler) runs every job in every process; each run of a job that
must happen once claims its firing in Redis first (SET NX keyed by job and scheduled fire time).

A run acts for the firing it was scheduled for, never for the moment it happens to start: a run
that starts late (a busy loop, a paused replica) would otherwise act for the next firing, and
take that firing's claim or event id from the on-time run that follows."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from budgetd import ledger
from budgetd.clock import SystemClock
from budgetd.engine import Engine
from budgetd.expiry import counter_expiry
from budgetd.jobs.clock_sync import sync_clock
from budgetd.jobs.delivery import Deliverer, DeliveryConfig
from budgetd.jobs.forecast import forecast
from budgetd.jobs.period_close import close_periods
from budgetd.jobs.policy_reload import PolicyWatcher
from budgetd.jobs.retention import apply_retention
from budgetd.jobs.spike import detect_spikes
from budgetd.jobs.sweep import sweep_expired
from budgetd.policy.model import CalendarUnit
from budgetd.reports.follower import follow_all
from budgetd.reports.picture import DIGEST_CHECK_S, emit_digest
from budgetd.settings import Settings
from budgetd.store.base import StoreUnavailable
from budgetd.store.events import EventQueue

log = logging.getLogger(__name__)

CRON_OF: dict[CalendarUnit, dict[str, Any]] = {
    "hour": {"minute": 0},
    "day": {"hour": 0, "minute": 0},
    "week": {"day_of_week": "mon", "hour": 0, "minute": 0},
    "month": {"day": 1, "hour": 0, "minute": 0},
}


FIRE_TIME: ContextVar[datetime] = ContextVar("budgetd_fire_time")
"""The scheduled fire time of the job run in progress (set by :class:`FireTimeExecutor`)."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FireTimeExecutor(AsyncIOExecutor):  # type: ignore[misc]
    """AsyncIOExecutor that lets each run read its scheduled fire time from :data:`FIRE_TIME`;
    APScheduler 3 knows it (``run_times``) but does not pass it to the job. The task the
    executor creates copies the context as it is here, so the value is the run's own."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        token = FIRE_TIME.set(run_times[-1])
        try:
            super()._do_submit_job(job, run_times)
        finally:
            FIRE_TIME.reset(token)


class JobStatus(msgspec.Struct, kw_only=True):
    id: str
    trigger: str
    next_run: datetime | None
    org: str | None = None
    """The org a per-org job (a period close) works for; None for a job shared by every org."""
    last_run: datetime | None = None
    last_lag_s: float | None = None
    """How late the last run started after its scheduled time."""
    last_error: str | None = None
    runs: int = 0


def consumer_name() -> str:
    """Unique per scheduler, even with several apps in one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Jobs:
    """Owns the scheduler of one process and the state its admin view reports."""

    def __init__(
        self, engine: Engine, queue: EventQueue, settings: Settings, clock: SystemClock | None
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.clock = clock
        self.watcher = PolicyWatcher(engine)
        self.deliverer = Deliverer(
            queue,
            engine.registry,
            engine.metrics,
            consumer_name(),
            DeliveryConfig(
                max_attempts=settings.delivery_attempts,
                backoff_base_s=settings.delivery_backoff_s,
                timeout_s=settings.delivery_timeout_s,
            ),
        )
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            executors={"default": FireTimeExecutor()},
            # A paused replica that resumes runs a missed job once (coalesce), and only if it is
            # not too late; other replicas covered the gap, so nothing floods on resume.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self.status: dict[str, JobStatus] = {}
        self._close_jobs: dict[str, str] = {}
        """Period-close job id → its org."""
        self._running: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.watcher.reload_if_changed()
        s = self.settings
        self._every("policy-reload", s.policy_poll_s, self.reload_policy)
        if self.clock is not None:
            self._every("clock-sync", s.clock_sync_s, self.sync_clock)
        if s.jobs == "all":  # none: a replica that only serves; the org jobs run elsewhere
            self._every("sweep", s.sweep_interval_s, self.sweep, claim=True)
            self._every("delivery", s.delivery_interval_s, self.deliver)
            self._every("forecast", s.forecast_interval_s, self.forecast, claim=True)
            self._every("spike", s.spike_interval_s, self.spikes, claim=True)
            self._every("reports", s.reports_interval_s, self.follow_ledgers, claim=True)
            self._every("digest", DIGEST_CHECK_S, self.digests, claim=True)
            if s.ledger_retention_days:
                self._every(
                    "ledger-retention", s.ledger_retention_interval_s, self.retention, claim=True
                )
        else:
            log.info(
                "BUDGETD_JOBS=none: this replica only serves; the org jobs (sweep, delivery, "
                "forecasts, spikes, reports, digests, retention, period close) run on replicas "
                "with BUDGETD_JOBS=all"
            )
        self.schedule_period_close()
        self.scheduler.add_listener(
            self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR
        )
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        # Cancel runs in flight (a delivery mid-send is then like a crash: its lock expires and
        # another replica redelivers), and only then close what they use.
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.deliverer.close()

    def _every(
        self, job_id: str, seconds: float, run: Callable[[], Awaitable[Any]], *, claim: bool = False
    ) -> None:
        if seconds <= 0:
            return
        func = self._claimed(job_id, seconds, run) if claim else run
        self.scheduler.add_job(
            self._guard(job_id, func),
            # Fire times on multiples of the interval since the epoch: every replica schedules
            # the same firings, so a claim keyed by fire time is one claim across replicas.
            IntervalTrigger(seconds=seconds, start_date=EPOCH),
            id=job_id,
            name=job_id,
            replace_existing=True,
        )

    def _claimed(
        self, job_id: str, seconds: float, run: Callable[[], Awaitable[Any]]
    ) -> Callable[[], Awaitable[Any]]:
        async def once_per_firing() -> Any:
            # Race: a late run keyed by "now" would claim the next firing and suppress the
            # on-time run of it; the scheduled fire time names the firing this run is for.
            fire = round(FIRE_TIME.get().timestamp() / seconds)
            if await self.queue.claim_firing(job_id, str(fire), max(1, int(seconds * 2))):
                return await run()
            return None

        return once_per_firing

    def _guard(
        self, job_id: str, run: Callable[[], Awaitable[Any]]
    ) -> Callable[[], Awaitable[None]]:
        async def guarded() -> None:
            task = asyncio.current_task()
            assert task is not None  # APScheduler runs coroutine jobs as tasks
            self._running.add(task)
            try:
                await run()
            except StoreUnavailable as exc:
                log.warning("job %s skipped: %s", job_id, exc)
                self.status[job_id].last_error = str(exc)
            finally:
                self._running.discard(task)

        return guarded

    def _on_event(self, event: Any) -> None:
        job = self.scheduler.get_job(event.job_id)
        status = self._status(event.job_id, str(job.trigger) if job else "")
        status.next_run = job.next_run_time if job else None
        if event.code == EVENT_JOB_SUBMITTED:
            now = datetime.now(UTC)
            status.last_run = now
            scheduled = event.scheduled_run_times[-1]
            status.last_lag_s = max(0.0, (now - scheduled).total_seconds())
            status.runs += 1
            if event.job_id == "sweep":
                self.engine.metrics.sweep_lag.set(status.last_lag_s)
        elif event.code == EVENT_JOB_ERROR:
            status.last_error = repr(event.exception)
            log.error("job %s failed: %r", event.job_id, event.exception)
        else:
            status.last_error = None

    def _status(self, job_id: str, trigger: str) -> JobStatus:
        return self.status.setdefault(
            job_id,
            JobStatus(id=job_id, trigger=trigger, next_run=None, org=self._close_jobs.get(job_id)),
        )

    def snapshot(self, org: str | None = None) -> list[JobStatus]:
        """Every job, or for ``org`` (an org's admin) the shared jobs and that org's own: the
        other orgs' jobs name them, and a shared job's error may name their keys, so those
        errors are shown as a failure without the text (it is in the service log)."""
        for job in self.scheduler.get_jobs():
            self._status(job.id, str(job.trigger)).next_run = job.next_run_time
        shown = sorted(self.status.values(), key=lambda s: s.id)
        if org is None:
            return shown
        return [
            msgspec.structs.replace(s, last_error="failed (see the service log)")
            if s.org is None and s.last_error
            else s
            for s in shown
            if s.org in (None, org)
        ]

    def data_lost_at(self) -> str | None:
        """When delivery last found Redis had lost its data (ISO 8601), for /readyz."""
        at = self.deliverer.data_lost_at
        return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()

    # -- jobs ------------------------------------------------------------------------------

    async def reload_policy(self) -> None:
        if await self.watcher.reload_if_changed():
            self.schedule_period_close()

    async def sync_clock(self) -> None:
        assert self.clock is not None
        await sync_clock(self.engine, self.clock)

    async def sweep(self) -> int:
        return await sweep_expired(self.engine)

    async def deliver(self) -> int:
        return await self.deliverer.run_once()

    def _orgs(self) -> list[str]:
        registry = self.engine.registry
        return list(registry.current.orgs) if registry.loaded else []

    async def forecast(self) -> int:
        now = self.engine.clock.now()
        return sum([await forecast(self.engine, self.queue, org, now) for org in self._orgs()])

    async def spikes(self) -> int:
        now = self.engine.clock.now()
        return sum([await detect_spikes(self.engine, self.queue, org, now) for org in self._orgs()])

    async def digests(self) -> int:
        now = self.engine.clock.now()
        orgs = [self.engine.policy(org) for org in self._orgs()]
        return sum([await emit_digest(self.queue, policy, now) for policy in orgs])

    async def follow_ledgers(self) -> int:
        return await follow_all(self.engine, self.queue.store, self._orgs())

    async def retention(self) -> int:
        s = self.settings
        assert s.ledger_export_dir is not None  # Settings refuses retention without it
        keep_ms = s.ledger_retention_days * 86_400_000
        removed = 0
        for org in self._orgs():
            removed += await apply_retention(self.queue.store, org, keep_ms, s.ledger_export_dir)
            expiry = counter_expiry(self.engine.policy(org))
            await ledger.prune_archive(self.queue.store, org, expiry)
        self.engine.metrics.ledger_trimmed.inc(removed)
        return removed

    def schedule_period_close(self) -> None:
        """One cron job per (org, calendar unit in use), in the org's zone; rebuilt on reload.
        None on a replica that only serves (``BUDGETD_JOBS=none``)."""
        wanted: dict[str, tuple[str, CalendarUnit]] = {}
        registry = self.engine.registry
        closing = registry.loaded and self.settings.jobs == "all"
        for org, policy in registry.current.orgs.items() if closing else []:
            for rule in policy.budgets:
                if rule.period.calendar is not None:
                    wanted[f"close:{org}:{rule.period.calendar}"] = (org, rule.period.calendar)
        for job_id in set(self._close_jobs) - set(wanted):
            self.scheduler.remove_job(job_id)
            self.status.pop(job_id, None)
        for job_id, (org, unit) in wanted.items():
            tz = registry.current.orgs[org].tz
            self.scheduler.add_job(
                self._guard(job_id, self._closer(org, unit)),
                CronTrigger(timezone=tz, **CRON_OF[unit]),
                id=job_id,
                name=job_id,
                replace_existing=True,
                # Late is fine for a summary (an hour); the event id keeps it to one per period.
                misfire_grace_time=3600,
            )
        self._close_jobs = {job_id: org for job_id, (org, _) in wanted.items()}

    def _closer(self, org: str, unit: CalendarUnit) -> Callable[[], Awaitable[int]]:
        async def close() -> int:
            # The periods that ended at the scheduled fire time, however late this run starts
            # (the period clock at run time may already be in the next period).
            return await close_periods(self.engine, self.queue, org, unit, FIRE_TIME.get())

        return close
