"""One log format for every logger in the process (budgetd's, uvicorn's, Litestar's,
APScheduler's): a JSON object per line, rendered by structlog from standard ``logging``
records, with the request id of the request being served (bound by ``observe.Observed``) and
any ``extra=`` fields. Warnings and errors are rate limited per call site, so an outage logs a
few lines and a count, not a traceback per request and per job run."""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
import structlog
from structlog.typing import EventDict, WrappedLogger

LEVELS = ("debug", "info", "warning", "error")

request_id_var: ContextVar[str | None] = ContextVar("budgetd_request_id", default=None)
"""The id of the request being served (set by observe.Observed), on every log line of it."""
# Per call site (logger, message template, exception type): at most this many records in a
# window; the next record after the window says how many were dropped.
RATE_WINDOW_S = 10.0
RATE_BURST = 3


class RateLimit(logging.Filter):
    """Drops WARNING and above past ``burst`` records per call site per ``window_s``; the first
    record let through afterwards carries ``suppressed=<n>``."""

    def __init__(
        self,
        window_s: float = RATE_WINDOW_S,
        burst: int = RATE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.window_s = window_s
        self.burst = burst
        self._lock = threading.Lock()
        # call site → (window start, records let through in it, records dropped since)
        self._sites: dict[tuple[str, str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        site = (record.name, str(record.msg), exc)
        now = self.clock()
        with self._lock:
            start, passed, dropped = self._sites.get(site, (now, 0, 0))
            if now - start >= self.window_s:
                start, passed = now, 0
            if passed >= self.burst:
                self._sites[site] = (start, passed, dropped + 1)
                return False
            self._sites[site] = (start, passed + 1, 0)
        if dropped:
            record.suppressed = dropped
        return True


def add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    rid = request_id_var.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def drop_color(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """uvicorn passes a terminal-coloured copy of its message as an extra field."""
    event.pop("color_message", None)
    return event


def _pre_chain() -> list[Any]:
    return [
        add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        drop_color,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]


def formatter() -> structlog.stdlib.ProcessorFormatter:
    """The JSON formatter (also named by ``dict_config`` for uvicorn's workers)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ],
    )


def dict_config(level: str = "info") -> dict[str, Any]:
    """``logging.config.dictConfig`` for the whole process: what ``serve`` gives uvicorn as
    ``log_config``, so every worker process configures itself the same way."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"rate_limit": {"()": "budgetd.logs.RateLimit"}},
        "formatters": {"json": {"()": "budgetd.logs.formatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["rate_limit"],
            }
        },
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            # uvicorn's own handlers would print a second, plain-text copy.
            "uvicorn": {"handlers": [], "propagate": True, "level": upper},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": upper},
            # budgetd writes the access log (with the request id); uvicorn's is off.
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            # Every job run is an INFO line from APScheduler: once a second is noise.
            "apscheduler": {"handlers": [], "propagate": True, "level": "WARNING"},
            "litestar": {"handlers": [], "propagate": True, "level": upper},
        },
    }


class AccessLog:
    """The access log line, in the same JSON shape as every other line, written straight to
    stderr: through ``logging`` and structlog's chain it cost 28 µs a request (a tenth of a
    reserve's CPU), encoded here with msgspec about 4 µs (bench/instrumentation.py)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.logger = logging.getLogger("budgetd.access")
        self.stream = stream

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any]) -> None:
        rid = request_id_var.get()
        line = {
            "request_id": rid,
            "level": "info",
            "logger": "budgetd.access",
            **fields,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(_encode(line).decode() + "\n")


_encode = msgspec.json.encode


def configure(level: str = "info") -> None:
    logging.config.dictConfig(dict_config(level))
