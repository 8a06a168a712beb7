"""Run the service under uvicorn (uvloop where available)."""

from __future__ import annotations

import asyncio
import importlib.util

import uvicorn

from budgetd import logs
from budgetd.app import create_app
from budgetd.collector import freeze_built_app
from budgetd.metrics import WORKER_HEALTHCHECK_S, cleanup_multiprocess, prepare_multiprocess
from budgetd.settings import ConfigError, Settings
from budgetd.store.connect import redis_store


async def _check_store(settings: Settings) -> None:
    """Strict durability on a server that cannot confirm fsyncs is a start-up error."""
    if settings.redis_url is None or settings.durability != "strict":
        return
    store = redis_store(
        settings.redis_url,
        timeout_s=settings.redis_timeout_s,
        coalesce=settings.redis_coalesce,
    )
    store.durability = settings.durability
    try:
        await store.check_durability()
    except RuntimeError as exc:
        raise ConfigError(f"BUDGETD_DURABILITY=strict: {exc}") from None
    finally:
        await store.close()


def run(settings: Settings) -> None:
    # One JSON format for every logger, here and (through log_config) in every worker.
    logs.configure(settings.log_level)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if settings.workers > 1 and settings.redis_url is None:
        raise ConfigError(
            "several workers need a shared store: set BUDGETD_REDIS_URL "
            "(the embedded store lives inside one process)"
        )
    # Build the app here first: a configuration mistake is then one line from ``budgetd``, not
    # a traceback from a worker. One worker serves this very app; several import their own.
    app = create_app(settings)
    asyncio.run(_check_store(settings))
    # Several workers: each writes its metric samples to a shared directory that every
    # worker's /metrics reads (prometheus-client multiprocess mode). Set before the workers
    # start: prometheus_client picks its storage when a worker first imports it.
    samples = prepare_multiprocess() if settings.workers > 1 else None
    if settings.workers == 1:
        freeze_built_app()  # this process serves `app` (several workers: their asgi module)
    try:
        uvicorn.run(
            app if settings.workers == 1 else "budgetd.asgi:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop=loop,
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            log_config=logs.dict_config(settings.log_level),
            log_level=settings.log_level,
            access_log=False,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )
    finally:
        if samples is not None:
            cleanup_multiprocess(samples)
