"""The gateway's own settings, from ``BUDGETD_GATEWAY_*`` environment variables, read once.

The service settings (store, policies, keys file) are :mod:`budgetd.settings`; these are only
what the gateway adds: where Anthropic is, how long to wait for it, where its keys are, and its
own listen address (so it can run beside ``budgetd serve``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from budgetd.settings import ConfigError

ANTHROPIC_URL = "https://api.anthropic.com"


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    upstream_url: str = ANTHROPIC_URL
    """Base URL of the Anthropic API (tests point it at a loopback fake)."""
    host: str = "127.0.0.1"
    port: int = 8090
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    """Longest wait for the next bytes of an upstream answer: a non-streaming call may think
    for minutes before its first byte. Past it the hold is released and the caller gets 504."""
    upstream_keys_dir: Path | None = None
    """A mounted secret: one file per org, named after the org, holding its Anthropic key.
    Read at each call (a rotated secret is used at once); wins over the environment."""
    public_url: str | None = None
    """How callers reach the gateway (``https://budgetd-gateway.internal``), for the batch
    ``results_url`` it hands out; the request's own scheme and ``Host`` when unset."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Anthropic's own request size limit for the Messages API."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None:
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: not a number of seconds") from None
    if parsed <= 0:
        raise ConfigError(f"{name}={value!r}: must be positive")
    return parsed


def from_env(env: Mapping[str, str] | None = None) -> GatewaySettings:
    e = os.environ if env is None else env
    d = GatewaySettings()
    port = e.get("BUDGETD_GATEWAY_PORT", str(d.port))
    if not port.isdigit():
        raise ConfigError(f"BUDGETD_GATEWAY_PORT={port!r}: not a port number")
    keys_dir = e.get("BUDGETD_GATEWAY_UPSTREAM_KEYS_DIR")
    return GatewaySettings(
        upstream_url=e.get("BUDGETD_GATEWAY_UPSTREAM_URL", d.upstream_url).rstrip("/"),
        host=e.get("BUDGETD_GATEWAY_HOST", d.host),
        port=int(port),
        connect_timeout_s=_float(e, "BUDGETD_GATEWAY_CONNECT_TIMEOUT_S", d.connect_timeout_s),
        read_timeout_s=_float(e, "BUDGETD_GATEWAY_READ_TIMEOUT_S", d.read_timeout_s),
        upstream_keys_dir=Path(keys_dir) if keys_dir else None,
        public_url=(e.get("BUDGETD_GATEWAY_PUBLIC_URL") or "").rstrip("/") or None,
    )
