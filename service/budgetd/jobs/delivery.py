"""Drain each org's event stream and deliver every event to its budget's channels.

At-least-once from the stream (a consumer group; an entry is acknowledged only when every
channel is done), and at-most-once per (event, channel) in practice: a delivery lock and a
``done`` mark make a second send happen only if a replica dies between the receiver's 2xx and
writing the mark. Receivers can dedupe on ``X-Budgetd-Event-Id`` for that window.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import httpx
import msgspec
import redis.exceptions

from budgetd.jobs.channels import Sent, send
from budgetd.metrics import Metrics
from budgetd.policy.model import OrgPolicy
from budgetd.policy.registry import PolicyRegistry
from budgetd.reports.picture import enrich
from budgetd.store.events import Event, EventQueue, GroupLost

log = logging.getLogger(__name__)
STATE_KEEP_S = 7 * 86_400


class DeliveryConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    timeout_s: float = 3.0
    claim_idle_ms: int = 1_000
    batch: int = 100
    keep_acknowledged_ms: int = 86_400_000
    """Acknowledged events stay in the stream this long (the admin view's history)."""
    trim_every_s: float = 60.0
    concurrency: int = 8
    """Events of a batch settled at once. All 100 at once made every one's next Redis command
    ready in the same turn of the loop: 35-65 ms in which no reserve or commit ran
    (docs/performance.md, "Job stalls")."""


def backoff_s(attempt: int, config: DeliveryConfig) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out."""
    ceiling: float = min(config.backoff_cap_s, config.backoff_base_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Deliverer:
    def __init__(
        self,
        queue: EventQueue,
        registry: PolicyRegistry,
        metrics: Metrics,
        consumer: str,
        config: DeliveryConfig | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.metrics = metrics
        self.consumer = consumer
        self.config = config or DeliveryConfig()
        self.http = httpx.AsyncClient(timeout=self.config.timeout_s)
        self._groups: set[str] = set()
        self._trim_at: dict[str, float] = {}
        """Per org: when (monotonic) to trim its acknowledged events next."""
        self.data_lost_at: float | None = None
        """When this process last found an org's stream gone with its group (Redis lost its
        data); None if it never did."""

    async def close(self) -> None:
        await self.http.aclose()

    async def run_once(self) -> int:
        """One pass over every org; returns how many events were fully settled."""
        if not self.registry.loaded:
            return 0
        settled = 0
        for org, policy in self.registry.current.orgs.items():
            # One org's broken stream (a wrong type, a script error) must not stop delivery for
            # the others; an unreachable Redis stops the pass (StoreUnavailable, raised on).
            try:
                settled += await self._org_pass(policy)
            except redis.exceptions.ResponseError as exc:
                log.warning("delivery for org %s failed: %s", org, exc)
        return settled

    async def _org_pass(self, policy: OrgPolicy) -> int:
        org = policy.org
        if org not in self._groups:
            await self.queue.ensure_group(org)
            self._groups.add(org)
        try:
            events, deleted = await self.queue.claim_stale(
                org, self.consumer, self.config.claim_idle_ms, self.config.batch
            )
            fresh = await self.queue.read_new(org, self.consumer, self.config.batch)
        except GroupLost:
            # The group this process made is gone with its stream: Redis lost its data. Make
            # it again (from the stream's start: events emitted since the loss are in it) and
            # say so; what was pending in the old group is lost with it.
            self.data_lost_at = time.time()
            self.metrics.store_data_lost.inc()
            log.error(
                "org %s: the event stream and its delivery group are gone; Redis lost its "
                "data (a restart without persistence, FLUSHDB?). Budget counters, holds and "
                "the ledger went with them. Delivery group recreated.",
                org,
            )
            await self.queue.ensure_group(org)
            return 0
        for stream_id in deleted:
            await self._lost_from_stream(org, stream_id)
        self.metrics.events_read.inc(len(fresh))
        gate = asyncio.Semaphore(self.config.concurrency)

        async def settle(event: Event) -> bool:
            async with gate:
                return await self._settle(policy, event)

        results = await asyncio.gather(*(settle(e) for e in events + fresh))
        if time.monotonic() >= self._trim_at.get(org, 0.0):
            self._trim_at[org] = time.monotonic() + self.config.trim_every_s
            await self.queue.trim_acknowledged(org, self.config.keep_acknowledged_ms)
        return sum(results)

    async def _lost_from_stream(self, org: str, stream_id: str) -> None:
        """A pending event was deleted from the stream before every channel had it (an XDEL
        or a trim by hand): dead-letter what is left of it, its position."""
        error = "deleted from the stream before it was delivered (XDEL or a manual trim)"
        await self.queue.dead_letter(
            org,
            {
                "event_id": None,
                "stream_id": stream_id,
                "channel": None,
                "attempts": 0,
                "error": error,
                "event": {},
                "at": time.time(),
            },
        )
        self.metrics.events_dead.inc()
        log.warning("event at %s of org %s dead-lettered: %s", stream_id, org, error)

    async def _settle(self, policy: OrgPolicy, event: Event) -> bool:
        fields = await enrich(self.queue.store, policy, {"org": policy.org, **event.fields})
        done = True
        for name in policy.notify_for(event.fields.get("budget", "")):
            if name not in policy.channels:
                continue  # the channel left the policy: nothing to deliver to
            if not await self._deliver(policy, event, name, fields):
                done = False
        if done:
            await self.queue.ack(policy.org, event)
        return done

    async def _deliver(
        self, policy: OrgPolicy, event: Event, name: str, fields: dict[str, str]
    ) -> bool:
        """True when this channel is finished with the event (delivered or dead-lettered)."""
        org, eid = policy.org, event.id
        state = await self.queue.delivery_state(org, eid, name)
        if state.get("state") in ("done", "dead"):
            return True
        now = time.time()
        if float(state.get("next_at", "0")) > now:
            return False  # in backoff; the entry stays pending and is claimed again later
        # Race: a send still open when its lock expires would be sent again by another pass
        # or replica. The lock outlives the send's overall deadline by a second (to write the
        # mark); httpx's timeout bounds each read, not the request, so the deadline is ours.
        lease_ms = int((self.config.timeout_s + 1) * 1000)
        if not await self.queue.lock_delivery(org, eid, name, lease_ms, self.consumer):
            return False  # another replica is sending it right now
        attempts = int(state.get("attempts", "0")) + 1
        try:
            async with asyncio.timeout(self.config.timeout_s):
                result = await send(self.http, name, policy.channels[name], eid, fields, policy.tz)
        except TimeoutError:
            result = Sent(
                ok=False, retry=True, error=f"no complete answer within {self.config.timeout_s} s"
            )
        if result.ok:
            await self.queue.set_delivery_state(
                org, eid, name, STATE_KEEP_S, state="done", attempts=attempts
            )
            self.metrics.events_delivered.labels(channel_kind=_kind(policy, name)).inc()
            return True
        if not result.retry or attempts >= self.config.max_attempts:
            await self.queue.dead_letter(
                org,
                {
                    "event_id": eid,
                    "stream_id": event.stream_id,
                    "channel": name,
                    "attempts": attempts,
                    "error": result.error,
                    "event": fields,
                    "at": now,
                },
            )
            await self.queue.set_delivery_state(
                org, eid, name, STATE_KEEP_S, state="dead", attempts=attempts, error=result.error
            )
            self.metrics.events_dead.inc()
            log.warning(
                "event %s to %s dead-lettered after %d attempt(s): %s",
                eid,
                name,
                attempts,
                result.error,
            )
            return True
        await self.queue.set_delivery_state(
            org,
            eid,
            name,
            STATE_KEEP_S,
            state="retry",
            attempts=attempts,
            error=result.error,
            next_at=now + backoff_s(attempts, self.config),
        )
        self.metrics.events_retried.inc()
        return False


def _kind(policy: OrgPolicy, name: str) -> str:
    channel = policy.channels[name]
    return "log" if channel.log else "slack" if channel.slack else "webhook"
