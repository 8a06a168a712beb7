"""Run the service under uvicorn (uvloop where available)."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from budgetd.settings import Settings


def run(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Every job run is logged at INFO by APScheduler: once a second is noise, not news.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if settings.workers > 1 and settings.redis_url is None:
        raise SystemExit(
            "several workers need a shared store: set BUDGETD_REDIS_URL "
            "(the embedded store lives inside one process)"
        )
    uvicorn.run(
        "budgetd.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop=loop,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level="info",
        access_log=False,
    )
