"""create_app(): routes, lifespan, dependencies, exception handlers. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from budgetd import __version__
from budgetd.api import (
    admin,
    budgets,
    fastpath,
    health,
    ledger_views,
    reports,
    reservations,
    web,
)
from budgetd.api.fastpath import FastPath
from budgetd.api.openapi import SchemaPlugin
from budgetd.api.problems import HANDLERS
from budgetd.api.validation import MAX_BODY_BYTES
from budgetd.auth import LiveKeys
from budgetd.clock import Clock, SystemClock
from budgetd.engine import Engine
from budgetd.jobs.clock_sync import sync_clock
from budgetd.jobs.scheduler import Jobs
from budgetd.metrics import Metrics
from budgetd.observe import Observed
from budgetd.policy.loader import PRICING_FILE
from budgetd.policy.registry import PolicyRegistry
from budgetd.settings import ConfigError, Settings
from budgetd.store.base import StoreUnavailable
from budgetd.store.connect import embedded_store, redis_store
from budgetd.store.events import EventQueue
from budgetd.store.scripted import ScriptStore
from budgetd.tracing import Tracing, tracing_from

log = logging.getLogger("budgetd")

OPERATIONS = [
    *fastpath.OPERATIONS,
    *reservations.OPERATIONS,
    *budgets.OPERATIONS,
    *admin.OPERATIONS,
    *ledger_views.OPERATIONS,
    *reports.OPERATIONS,
    *health.OPERATIONS,
]


class Budgetd(Litestar):
    """Litestar with the hot routes (reserve, commit, release) served first by the raw-ASGI
    ``FastPath``, which hands everything else, and every request it does not fully serve, to
    Litestar's own ``__call__``; all of it inside ``Observed`` (request id, latency, access
    log), so no route escapes the instrumentation."""

    @functools.cached_property
    def fastpath(self) -> FastPath:
        return FastPath(self, fallback=super().__call__)

    @functools.cached_property
    def observed(self) -> Observed:
        return Observed(
            self.fastpath,
            self.state.metrics,
            access_log=self.state.settings.access_log,
            tracing=self.state.tracing,
        )

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        await self.observed(scope, receive, send)


def check_policy_paths(settings: Settings) -> None:
    """The policy directory and the price table exist: without them every org would be
    unknown (404 to everything) while the service said it was ready."""
    directory = settings.policy_dir
    if not directory.is_dir():
        raise ConfigError(
            f"BUDGETD_POLICY_DIR={directory}: not a directory (policy files and pricing.yaml "
            f"live there; it is relative to the working directory {Path.cwd()})"
        )
    if settings.pricing_file is not None:
        if not settings.pricing_file.is_file():
            raise ConfigError(
                f"BUDGETD_PRICING_FILE={settings.pricing_file}: price table not found"
            )
    elif not (directory / PRICING_FILE).is_file():
        raise ConfigError(
            f"{directory / PRICING_FILE}: price table not found (or set BUDGETD_PRICING_FILE)"
        )


async def _poll_keys(keys: LiveKeys, every_s: float) -> None:
    """Reload the keys file when it changes, on the policies' poll interval."""
    while True:
        await asyncio.sleep(every_s)
        keys.reload_if_changed()


def create_app(
    settings: Settings,
    *,
    store: ScriptStore | None = None,
    clock: Clock | None = None,
    registry: PolicyRegistry | None = None,
    tracing: Tracing | None = None,
) -> Litestar:
    """The service. ``store``, ``clock``, ``registry`` and ``tracing`` may be injected (tests)."""
    metrics = Metrics()
    if registry is None:
        check_policy_paths(settings)
        registry = PolicyRegistry(settings.policy_dir, settings.pricing_file)
    if store is None:
        store = (
            redis_store(
                settings.redis_url,
                timeout_s=settings.redis_timeout_s,
                coalesce=settings.redis_coalesce,
            )
            if settings.redis_url
            else embedded_store()
        )
        store.durability = settings.durability
    store.observe = metrics.observe_store_call
    period_clock: Clock = clock if clock is not None else SystemClock()
    engine = Engine(registry, store, period_clock, metrics)
    queue = EventQueue(store)
    jobs = Jobs(
        engine, queue, settings, period_clock if isinstance(period_clock, SystemClock) else None
    )
    keys = LiveKeys(settings.keys_file, metrics.policy_load_errors) if settings.keys_file else None
    if keys is None:
        log.warning(
            "no BUDGETD_KEYS_FILE: authentication is OFF, every caller may act on "
            "every org. Create keys with `budgetd keys new --org ORG`."
        )
    elif not (status := keys.reload_if_changed() or keys.last_status).ok:
        raise ConfigError(status.errors[0])

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Fail fast: a strict deployment on a server that cannot confirm fsyncs must not start.
        log.info("durability %s", await store.check_durability())
        policy = await store.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.warning(
                "redis maxmemory-policy is %r: it may evict budget counters. "
                "Set maxmemory-policy noeviction.",
                policy,
            )
        if settings.redis_url and await store.persistence() == (False, False):
            log.warning(
                "redis keeps nothing on disk (no AOF, no RDB snapshots): a Redis restart "
                "resets every budget to zero. Set appendonly yes (or BUDGETD_DURABILITY=strict "
                "to refuse to start without it)."
            )
        if isinstance(period_clock, SystemClock):
            with contextlib.suppress(StoreUnavailable):
                await sync_clock(engine, period_clock)
        await jobs.start()
        poll = (
            asyncio.create_task(_poll_keys(keys, settings.policy_poll_s))
            if keys is not None and settings.policy_poll_s > 0
            else None
        )
        log.info("budgetd %s ready: store %s", __version__, store.description)
        try:
            yield
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            await jobs.stop()
            await store.close()

    app = Budgetd(
        route_handlers=[
            *reservations.ROUTES,
            *budgets.ROUTES,
            *health.ROUTES,
            *admin.ROUTES,
            *ledger_views.ROUTES,
            *reports.ROUTES,
            *web.ROUTES,
        ],
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        lifespan=[lifespan],
        # Logging is configured once per process by logs.py (JSON for every logger); Litestar's
        # default config would replace the root handlers with its own text format.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="budgetd",
            version=__version__,
            path="/schema",
            render_plugins=[SchemaPlugin(OPERATIONS)],
        ),
    )
    app.state.engine = engine
    app.state.api_keys = keys
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.tracing = tracing if tracing is not None else tracing_from(settings)
    app.state.jobs = jobs
    app.state.queue = queue
    return app
