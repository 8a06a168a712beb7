"""Settings from ``BUDGETD_*`` environment variables, read once into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec


class ConfigError(ValueError):
    """A configuration mistake found at start: one line that names the setting or file."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str | None = None
    """``redis://``, ``rediss://`` or ``redis+cluster://``; None runs the embedded store."""
    policy_dir: Path = Path("policies")
    pricing_file: Path | None = None
    """Defaults to ``<policy_dir>/pricing.yaml``."""
    keys_file: Path | None = None
    """API keys (``budgetd keys new``). None: authentication is off (embedded quickstart only)."""
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    durability: Literal["fast", "strict"] = "fast"
    """strict: acknowledge writes only after WAITAOF confirms them on disk (Redis 7.2+)."""
    redis_timeout_s: float = 0.5
    """Bound on every store call; past it fail-closed budgets answer 503."""
    redis_coalesce: bool = False
    """Write coalescing on the pipelined Redis connection: calls made while others are in
    flight are written together once per event-loop turn (docs/performance.md)."""
    jobs: Literal["all", "none"] = "all"
    """none: a replica that only serves: no org jobs (sweep, delivery, forecasts, spikes,
    reports, digests, retention, period close), which then run on replicas with ``all``; it
    still reloads its own policy and syncs its clock (docs/operations.md)."""
    policy_poll_s: float = 5.0
    """How often the policy directory is checked for changes (0: never)."""
    sweep_interval_s: float = 5.0
    """How often expired holds are reclaimed (0: only lazily, on reserve)."""
    clock_sync_s: float = 30.0
    """How often the period clock re-learns its offset from Redis TIME."""
    delivery_interval_s: float = 1.0
    """How often each replica drains the event streams (0: no delivery from this replica)."""
    delivery_attempts: int = 5
    """Attempts per (event, channel) before it goes to the dead-letter list."""
    delivery_backoff_s: float = 0.5
    """First retry delay; doubles per attempt (with jitter), capped at a minute."""
    delivery_timeout_s: float = 3.0
    forecast_interval_s: float = 300.0
    spike_interval_s: float = 300.0
    reports_interval_s: float = 5.0
    """How often the reports follower folds new ledger entries into aggregates."""
    ledger_retention_days: int = 0
    """Ledger entries older than this are exported to ``ledger_export_dir`` and then trimmed
    (0: keep them all). At least MIN_RETENTION_DAYS: a month's close reads its whole month."""
    ledger_export_dir: Path | None = None
    """Where the retention job writes what it trims (JSON lines, one file per org and run)."""
    ledger_retention_interval_s: float = 3600.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Every logger's level; one JSON object per line (logs.py)."""
    access_log: bool = True
    """One JSON line per HTTP request, with its request id."""
    tracing: Literal["off", "otlp"] = "off"
    """otlp: a server span per request to the OTLP exporter (needs the otel extra)."""

    def __post_init__(self) -> None:
        days = self.ledger_retention_days
        if days and days < MIN_RETENTION_DAYS:
            raise ConfigError(
                f"BUDGETD_LEDGER_RETENTION_DAYS must be 0 (keep everything) or at least "
                f"{MIN_RETENTION_DAYS}: period summaries and spike detection read the ledger of "
                f"the last month, not {days}"
            )
        if days and self.ledger_export_dir is None:
            raise ConfigError(
                "BUDGETD_LEDGER_RETENTION_DAYS needs BUDGETD_LEDGER_EXPORT_DIR: entries are "
                "exported there before they are trimmed"
            )


MIN_RETENTION_DAYS = 32


def _durability(value: str) -> Literal["fast", "strict"]:
    if value not in ("fast", "strict"):
        raise ConfigError(f"BUDGETD_DURABILITY must be fast or strict, not {value!r}")
    return value  # type: ignore[return-value]


def _jobs(value: str) -> Literal["all", "none"]:
    if value not in ("all", "none"):
        raise ConfigError(f"BUDGETD_JOBS must be all or none, not {value!r}")
    return value  # type: ignore[return-value]


class _Env:
    """Reads ``BUDGETD_*`` numbers, each error one line naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def int(self, name: str, default: int) -> int:
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: not a whole number") from None

    def seconds(self, name: str, default: float) -> float:
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: not a number (seconds, e.g. 0.5)") from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"{name}={raw!r}: must be a finite number of seconds, 0 or more")
        return value


def _choice(name: str, raw: str, allowed: tuple[str, ...]) -> Any:
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r}: must be one of {', '.join(allowed)}")
    return raw


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: must be true or false")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    e = os.environ if env is None else env
    n = _Env(e)
    defaults = Settings()
    return Settings(
        redis_url=e.get("BUDGETD_REDIS_URL") or None,
        policy_dir=Path(e.get("BUDGETD_POLICY_DIR", str(defaults.policy_dir))),
        pricing_file=_path(e.get("BUDGETD_PRICING_FILE")),
        keys_file=_path(e.get("BUDGETD_KEYS_FILE")),
        host=e.get("BUDGETD_HOST", defaults.host),
        port=n.int("BUDGETD_PORT", defaults.port),
        workers=n.int("BUDGETD_WORKERS", defaults.workers),
        durability=_durability(e.get("BUDGETD_DURABILITY", defaults.durability)),
        jobs=_jobs(e.get("BUDGETD_JOBS", defaults.jobs)),
        redis_timeout_s=n.seconds("BUDGETD_REDIS_TIMEOUT_S", defaults.redis_timeout_s),
        redis_coalesce=_flag(
            "BUDGETD_REDIS_COALESCE",
            e.get("BUDGETD_REDIS_COALESCE", str(defaults.redis_coalesce).lower()),
        ),
        policy_poll_s=n.seconds("BUDGETD_POLICY_POLL_S", defaults.policy_poll_s),
        sweep_interval_s=n.seconds("BUDGETD_SWEEP_INTERVAL_S", defaults.sweep_interval_s),
        clock_sync_s=n.seconds("BUDGETD_CLOCK_SYNC_S", defaults.clock_sync_s),
        delivery_interval_s=n.seconds("BUDGETD_DELIVERY_INTERVAL_S", defaults.delivery_interval_s),
        delivery_attempts=n.int("BUDGETD_DELIVERY_ATTEMPTS", defaults.delivery_attempts),
        delivery_backoff_s=n.seconds("BUDGETD_DELIVERY_BACKOFF_S", defaults.delivery_backoff_s),
        delivery_timeout_s=n.seconds("BUDGETD_DELIVERY_TIMEOUT_S", defaults.delivery_timeout_s),
        forecast_interval_s=n.seconds("BUDGETD_FORECAST_INTERVAL_S", defaults.forecast_interval_s),
        spike_interval_s=n.seconds("BUDGETD_SPIKE_INTERVAL_S", defaults.spike_interval_s),
        reports_interval_s=n.seconds("BUDGETD_REPORTS_INTERVAL_S", defaults.reports_interval_s),
        ledger_retention_days=n.int("BUDGETD_LEDGER_RETENTION_DAYS", 0),
        ledger_export_dir=_path(e.get("BUDGETD_LEDGER_EXPORT_DIR")),
        ledger_retention_interval_s=n.seconds(
            "BUDGETD_LEDGER_RETENTION_INTERVAL_S", defaults.ledger_retention_interval_s
        ),
        log_level=_choice(
            "BUDGETD_LOG_LEVEL",
            e.get("BUDGETD_LOG_LEVEL", defaults.log_level),
            ("debug", "info", "warning", "error"),
        ),
        access_log=_flag("BUDGETD_ACCESS_LOG", e.get("BUDGETD_ACCESS_LOG", "true")),
        tracing=_choice("BUDGETD_TRACING", e.get("BUDGETD_TRACING", "off"), ("off", "otlp")),
    )
