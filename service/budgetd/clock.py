"""The only place that reads the wall clock.

Leases and token buckets use Redis ``TIME`` inside the Lua scripts. Period ids (which calendar
day or month a hold belongs to) are computed in Python, from a :class:`Clock`: in production a
:class:`RedisSyncedClock` that applies the offset between this host and Redis ``TIME``, so every
replica agrees with Redis about which period it is; in tests a :class:`FrozenClock`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


class SystemClock:
    """Host wall clock, corrected by an offset learned from Redis (zero until synced)."""

    def __init__(self) -> None:
        self._offset_s = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self._offset_s, tz=UTC)

    def sync(self, server_time_s: float, sent_at: float, received_at: float) -> None:
        """Adopt Redis ``TIME``: assume the reply was made halfway through the round trip."""
        midpoint = (sent_at + received_at) / 2
        self._offset_s = server_time_s - midpoint


class FrozenClock:
    """A clock that moves only when a test tells it to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when

    def advance(self, delta: timedelta) -> None:
        self._now = self._now + delta
