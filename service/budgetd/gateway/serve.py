"""``budgetd gateway``: build the gateway app and run it under uvicorn."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from budgetd import logs
from budgetd.app import create_app
from budgetd.collector import freeze_built_app
from budgetd.gateway.app import Gateway
from budgetd.gateway.settings import GatewaySettings
from budgetd.gateway.upstream_keys import UpstreamKeys
from budgetd.metrics import WORKER_HEALTHCHECK_S, cleanup_multiprocess, prepare_multiprocess
from budgetd.observe import Observed
from budgetd.settings import ConfigError, Settings

log = logging.getLogger("budgetd.gateway")


def create_gateway(settings: Settings, gateway: GatewaySettings) -> Observed:
    """The gateway over a budgetd service app built from ``settings`` (its store, policies,
    keys and jobs)."""
    if settings.keys_file is None:
        # Without keys nobody can say which org a call is charged to.
        raise ConfigError(
            "budgetd gateway needs BUDGETD_KEYS_FILE: a caller's budgetd key names the org "
            "its calls are charged to (create one with `budgetd keys new --org ORG`)"
        )
    inner = create_app(settings)
    # Measured, id'd and logged like the service's own routes (observe.Observed, outermost).
    return Observed(
        Gateway(inner, gateway, UpstreamKeys(gateway.upstream_keys_dir)),
        inner.state.metrics,
        access_log=settings.access_log,
        tracing=inner.state.tracing,
    )


def run(settings: Settings, gateway: GatewaySettings) -> None:
    logs.configure(settings.log_level)  # one JSON format, as `budgetd serve`
    if settings.workers > 1 and settings.redis_url is None:
        raise ConfigError(
            "several workers need a shared store: set BUDGETD_REDIS_URL "
            "(the embedded store lives inside one process)"
        )
    # Built here first, as `budgetd serve` does: a mistake is one line, not a worker's traceback.
    app = create_gateway(settings, gateway)
    log.info("budgetd gateway: Anthropic at %s", gateway.upstream_url)
    samples = prepare_multiprocess() if settings.workers > 1 else None  # as serve.py
    if settings.workers == 1:
        freeze_built_app()  # this process serves `app` (several workers: their asgi module)
    try:
        uvicorn.run(
            app if settings.workers == 1 else "budgetd.gateway.asgi:app",
            host=gateway.host,
            port=gateway.port,
            workers=settings.workers,
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            log_config=logs.dict_config(settings.log_level),
            log_level=settings.log_level,
            access_log=False,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )
    finally:
        if samples is not None:
            cleanup_multiprocess(samples)
