"""The event queue: each org's event stream, read through one consumer group by the delivery
job on every replica, with per-(event, channel) delivery state beside it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import redis.exceptions

from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

GROUP = "delivery"
DEAD_LETTERS_KEPT = 10_000
"""Per org: the dead-letter list keeps this many, newest first."""


class GroupLost(Exception):
    """The org's stream has no delivery group (NOGROUP): the stream, and with it the group,
    is gone since the group was made. Redis lost its data (a restart without persistence,
    FLUSHDB), or someone deleted the stream."""


def _nogroup(exc: redis.exceptions.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class Event(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    """Position in the org's stream."""
    fields: dict[str, str]

    @property
    def id(self) -> str:
        """The stable event id: the same crossing always has the same id."""
        return self.fields.get("id", self.stream_id)


def _events(rows: Any) -> list[Event]:
    return [Event(stream_id=str(sid), fields=dict(fields)) for sid, fields in rows or []]


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _after(stream_id: tuple[int, int]) -> tuple[int, int]:
    """The least id above ``stream_id``."""
    return stream_id[0], stream_id[1] + 1


class EventQueue:
    """Stream operations for the delivery job. Reads and bookkeeping, no enforcement."""

    def __init__(self, store: ScriptStore, dead_letters_kept: int = DEAD_LETTERS_KEPT) -> None:
        self.store = store
        self.client = store.client
        self.dead_letters_kept = dead_letters_kept

    async def emit(self, org: str, event_id: str, keep: timedelta, fields: dict[str, str]) -> bool:
        """Append once per ``event_id``; the dedupe marker lives for ``keep``."""
        keep_ms = int(keep.total_seconds() * 1000)
        args: list[str | int] = [keys.org_prefix(org), event_id, keep_ms]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self.store.run_script("emit", [keys.events(org)], args))

    async def ensure_group(self, org: str) -> None:
        try:
            await self.client.xgroup_create(keys.events(org), GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, org: str, consumer: str, count: int) -> list[Event]:
        try:
            reply: Any = await self.client.xreadgroup(
                GROUP, consumer, {keys.events(org): ">"}, count=count
            )
        except redis.exceptions.ResponseError as exc:
            if _nogroup(exc):
                raise GroupLost(org) from exc
            raise
        if not reply:
            return []
        # RESP2 answers [[stream, rows]]; RESP3 answers {stream: [rows]}.
        rows = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        return _events(rows)

    async def claim_stale(
        self, org: str, consumer: str, idle_ms: int, count: int
    ) -> tuple[list[Event], list[str]]:
        """Take over entries another consumer (a crashed replica, or a retry in backoff) has
        held for ``idle_ms``; a claim resets the idle time, so no two consumers take one.

        Also returns the ids of pending entries that are gone from the stream (deleted or
        trimmed by hand): XAUTOCLAIM drops them from the group, so this is the last word on
        them."""
        try:
            reply = await self.client.xautoclaim(
                keys.events(org), GROUP, consumer, idle_ms, start_id="0-0", count=count
            )
        except redis.exceptions.ResponseError as exc:
            if _nogroup(exc):
                raise GroupLost(org) from exc
            raise
        deleted = [str(sid) for sid in reply[2]] if len(reply) > 2 else []
        return _events(reply[1]), deleted

    async def ack(self, org: str, event: Event) -> None:
        await self.client.xack(keys.events(org), GROUP, event.stream_id)

    async def trim_acknowledged(self, org: str, keep_ms: int) -> int:
        """Drop events older than ``keep_ms`` (Redis time) that the delivery group has
        acknowledged; never one that is pending (in a retry) or not yet read. Returns how
        many went.

        Race: the group reads and acknowledges while this looks. Everything below the cut was
        read by the group (at or before its last-delivered id) and is not pending (below the
        oldest pending id), so it is acknowledged; reads and acks after the look only raise
        the true cut, and an entry never becomes pending again once acknowledged."""
        stream = keys.events(org)
        groups: Any = (
            await self.client.xinfo_groups(stream) if await self.client.exists(stream) else []
        )
        group = next((g for g in groups if str(g["name"]) == GROUP), None)
        if group is None:
            return 0  # nothing is known to be acknowledged
        cut = _after(_parse_id(str(group["last-delivered-id"])))
        pending: Any = await self.client.xpending(stream, GROUP)
        if pending["pending"]:
            cut = min(cut, _parse_id(str(pending["min"])))
        seconds, micros = await self.client.time()  # integers: a float could lose the ms
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        cut = min(cut, (now_ms - keep_ms + 1, 0))  # at least keep_ms old: ms <= now - keep
        trimmed: int = await self.client.xtrim(
            stream, minid=f"{cut[0]}-{cut[1]}", approximate=False
        )
        return trimmed

    async def recent(self, org: str, count: int) -> list[Event]:
        return _events(await self.client.xrevrange(keys.events(org), count=count))

    # Delivery state of one (event, channel): a hash {state, attempts, next_at_ms, error}.

    def _state_key(self, org: str, event_id: str, channel: str) -> str:
        return f"{keys.tag(org)}:dl:{event_id}:{channel}"

    async def delivery_state(self, org: str, event_id: str, channel: str) -> dict[str, str]:
        state = await self.client.hgetall(self._state_key(org, event_id, channel))
        return {str(k): str(v) for k, v in state.items()}

    async def set_delivery_state(
        self, org: str, event_id: str, channel: str, keep_s: int, **values: str | float
    ) -> None:
        key = self._state_key(org, event_id, channel)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in values.items()})
            pipe.expire(key, keep_s)
            await pipe.execute()

    async def lock_delivery(
        self, org: str, event_id: str, channel: str, lease_ms: int, owner: str
    ) -> bool:
        """Race: two replicas holding one event after a claim; only the lock holder sends."""
        key = f"{keys.tag(org)}:dlock:{event_id}:{channel}"
        return bool(await self.client.set(key, owner, nx=True, px=lease_ms))

    async def dead_letter(self, org: str, record: dict[str, Any]) -> None:
        """Newest first; only the newest ``DEAD_LETTERS_KEPT`` stay (the log has them all)."""
        key = keys.dead_letters(org)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, msgspec.json.encode(record))
            pipe.ltrim(key, 0, self.dead_letters_kept - 1)
            await pipe.execute()

    async def dead_letters(self, org: str, count: int) -> list[dict[str, Any]]:
        rows = await self.client.lrange(keys.dead_letters(org), 0, count - 1)
        return [msgspec.json.decode(r) for r in rows]

    async def claim_firing(self, job: str, fire_key: str, ttl_s: int) -> bool:
        """One run per job firing across all replicas (APScheduler runs one scheduler in every
        process): the first to set the marker runs it."""
        return bool(
            await self.client.set(f"{keys.PREFIX}:job:{job}:{fire_key}", "1", nx=True, ex=ttl_s)
        )
