"""The one Store implementation: every operation is one Lua script call on a redis-py asyncio
client. The client may be a real Redis, a Redis Cluster, or fakeredis (embedded mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from budgetd.store import keys
from budgetd.store.base import (
    AdjustCall,
    AdjustOutcome,
    BucketSlot,
    BudgetSlot,
    CommitCall,
    CommitOutcome,
    Denial,
    Durability,
    OutOfBounds,
    RecordCall,
    RecordOutcome,
    ReleaseOutcome,
    ReservationView,
    ReserveCall,
    ReserveOutcome,
    StatusOutcome,
    StoreUnavailable,
)
from budgetd.store.node_pipelines import NodePipelines
from budgetd.store.pipeline import NotSent, Overdue, ScriptError, ScriptPipeline
from budgetd.store.plan import plan_tokens
from budgetd.store.scripts import SCRIPT_NAMES, source

Client = Redis | RedisCluster
T = TypeVar("T")
_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # includes CLUSTERDOWN during a failover
    TimeoutError,
    OSError,
)
_MOVED_AWAY = "non local key"
"""A script touched a key of a migrating slot that already moved. Scripts read every key before
their first write (lib.lua, ``touch``), so such a call wrote nothing and may run again."""


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    out = []
    for item in text.split(";"):
        spent, held = item.split(",")
        out.append((int(spent), int(held)))
    return tuple(out)


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(";")) if text else ()


def _denials(rows: Sequence[Sequence[Any]]) -> tuple[Denial, ...]:
    out = []
    for row in rows:
        if row[0] == "b":
            out.append(
                Denial(kind="budget", index=int(row[1]) - 1, spent=int(row[2]), held=int(row[3]))
            )
        else:
            wait = int(row[3])
            out.append(
                Denial(
                    kind="bucket",
                    index=int(row[1]) - 1,
                    level=int(row[2]),
                    wait_ms=None if wait < 0 else wait,
                )
            )
    return tuple(out)


READ_ONLY = frozenset({"status"})


class NotDurable(StoreUnavailable):
    """Strict mode: the write ran but Redis could not confirm it reached the AOF on disk."""


class ScriptStore:
    """Store over any redis-py asyncio client; ``timeout_s`` bounds every call.

    ``durability``: ``fast`` answers once the script ran (what a crash can lose is Redis's AOF
    policy: up to a second with ``appendfsync everysec``); ``strict`` also waits, on the same
    connection, for ``WAITAOF 1 0`` to confirm the write is fsynced to the local AOF.
    """

    def __init__(
        self,
        client: Client,
        *,
        description: str,
        timeout_s: float = 1.0,
        durability: Durability = "fast",
        pipeline: ScriptPipeline | None = None,
        node_pipelines: NodePipelines | None = None,
    ) -> None:
        self.client = client
        self.pipeline = pipeline
        """Hot path for script calls on a single server (see store/pipeline.py)."""
        self.node_pipelines = node_pipelines
        """Hot path for script calls on a cluster (see store/node_pipelines.py)."""
        self._node_clients: dict[str, Redis] = {}
        """Strict mode on a cluster: one plain client per primary, for script + WAITAOF."""
        self.description = description
        self.observe: Callable[[str, float, bool], None] | None = None
        """Told (script, seconds, ok) after every script call (metrics.py's histogram)."""
        self.timeout_s = timeout_s
        self.durability: Durability = durability
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source(name)) for name in SCRIPT_NAMES
        }

    def _deadline(self) -> float:
        """When a call starting now must have its answer, on the loop's clock."""
        return asyncio.get_running_loop().time() + self.timeout_s

    async def _bounded(self, awaitable: Awaitable[T], deadline: float) -> T:
        """``awaitable`` by ``deadline``; an unreachable Redis is StoreUnavailable. For the calls
        redis-py makes: the pipelines check their own deadlines, without a timer per call."""
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc

    async def run_script(self, name: str, keys_: Sequence[str], args: Sequence[str | int]) -> Any:
        deadline = self._deadline()
        observe = self.observe
        started = time.perf_counter() if observe is not None else 0.0
        ok = False
        try:
            # One coroutine layer on the way to the pipeline: the retry loop of a moving slot
            # is entered only when the first try met one.
            try:
                result = await self._call(name, keys_, args, deadline)
            except redis.exceptions.ResponseError as exc:
                if _MOVED_AWAY not in str(exc):
                    raise
                result = await self._call_once_settled(name, keys_, args, deadline)
            ok = True
            return result
        finally:
            if observe is not None:
                observe(name, time.perf_counter() - started, ok)

    async def _call_once_settled(
        self, name: str, keys_: Sequence[str], args: Sequence[str | int], deadline: float
    ) -> Any:
        """The slot is moving (a try wrote nothing): try again, backing off, until it settles."""
        delay = 0.01
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() + delay >= deadline:
                # The next try could not be answered in time: not sending it is the one
                # outcome that is known not to have run.
                raise StoreUnavailable("redis unreachable: the slot kept moving past the timeout")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            try:
                return await self._call(name, keys_, args, deadline)
            except redis.exceptions.ResponseError as exc:
                if _MOVED_AWAY not in str(exc):
                    raise

    async def _call(
        self, name: str, keys_: Sequence[str], args: Sequence[str | int], deadline: float
    ) -> Any:
        if self.durability == "strict" and name not in READ_ONLY:
            return await self._bounded(self._run_durably(name, keys_, args), deadline)
        if self.pipeline is not None:
            script = self._scripts[name]
            return await self.pipeline.call(
                script.sha, source(name), list(keys_), list(args), deadline=deadline
            )
        if self.node_pipelines is not None and keys_:
            node = self.node_pipelines.for_key(keys_[0])
            if node is not None:
                try:
                    return await node.call(
                        self._scripts[name].sha,
                        source(name),
                        list(keys_),
                        list(args),
                        deadline=deadline,
                    )
                except NotSent:
                    self.node_pipelines.lost(node)
                except Overdue:
                    raise  # a stalled node, not a lost one: its connection stays in use
                except StoreUnavailable:
                    # Sent, then the connection was lost: it may have run. Sending it again
                    # could apply it twice; the caller's retry (same id) is what may repeat it.
                    self.node_pipelines.lost(node)
                    raise
                except ScriptError as exc:
                    if not exc.refused:
                        raise  # it ran (and wrote nothing): running it again changes nothing
                # Proven not to have run: redis-py follows the cluster from here
                # (node_pipelines.py says why).
        return await self._bounded(self._scripts[name](keys=list(keys_), args=list(args)), deadline)

    async def _run_durably(self, name: str, keys_: Sequence[str], args: Sequence[str | int]) -> Any:
        # Race: WAITAOF confirms the writes of *its connection*; sent through the pool on its
        # own it could land on another connection (on a cluster: another node) and confirm
        # nothing. A pipeline sends both on one connection, in order, to the node that owns
        # the keys.
        node = self._durable_client(keys_[0]) if keys_ else None
        if node is None:
            raise RuntimeError("durability=strict needs a keyed call")
        pipe = node.pipeline(transaction=False)
        await self._scripts[name](keys=list(keys_), args=list(args), client=pipe)
        pipe.waitaof(1, 0, int(self.timeout_s * 1000))
        try:
            result, (local, _replicas) = await pipe.execute()
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith(("MOVED", "ASK")) and isinstance(self.client, RedisCluster):
                # The slot moved since the client last looked: learn the new owner, and let
                # run_script's retry send the (unapplied) call there.
                await self.client.nodes_manager.initialize()
                raise redis.exceptions.ResponseError(_MOVED_AWAY) from exc
            raise
        if int(local) < 1:
            raise NotDurable("the write was not confirmed on disk (WAITAOF) in time")
        return result

    def _durable_client(self, key: str) -> Redis | None:
        """A plain client on the node that owns ``key`` (the client itself on one server)."""
        if isinstance(self.client, Redis):
            return self.client
        owner = self.client.get_node_from_key(key)
        if owner is None:
            return None
        client = self._node_clients.get(owner.name)
        if client is None:
            client = Redis(
                host=owner.host,
                port=int(owner.port),
                decode_responses=True,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
            self._node_clients[owner.name] = client
        return client

    async def check_durability(self) -> str:
        """Verify the server can give what ``durability`` promises; returns a description.

        Raises RuntimeError when strict mode cannot be honoured (no AOF, no WAITAOF) on any
        node that holds budgets."""
        if self.durability == "fast":
            return "fast: acknowledged after the script; loss window = the AOF fsync policy"
        if isinstance(self.client, Redis):
            nodes = [self.client]
        else:
            await self.client.initialize()
            nodes = [
                Redis(host=n.host, port=int(n.port), decode_responses=True)
                for n in self.client.get_primaries()
            ]
        try:
            for node in nodes:
                await self._check_node(node)
        finally:
            if not isinstance(self.client, Redis):
                for node in nodes:
                    await node.aclose()
        return "strict: acknowledged after WAITAOF confirms the write is fsynced to the AOF"

    @staticmethod
    async def _check_node(node: Redis) -> None:
        config = await node.config_get("appendonly")
        if str(config.get("appendonly")) != "yes":
            raise RuntimeError("durability=strict needs Redis with appendonly yes")
        try:
            await node.waitaof(0, 0, 1)
        except redis.exceptions.ResponseError as exc:
            raise RuntimeError(
                "durability=strict needs WAITAOF (Redis 7.2+ or Valkey 8+); this server "
                f"answered: {exc}"
            ) from None

    async def reserve(self, call: ReserveCall) -> ReserveOutcome:
        key_list = [
            keys.reservation(call.org, call.reservation_id),
            keys.holds(call.org),
            keys.events(call.org),
        ]
        args: list[str | int] = [
            call.reservation_id,
            call.fingerprint,
            call.lease_ms,
            call.keep_ms,
            call.meta,
            keys.org_prefix(call.org),
            *plan_tokens(
                call.amount, call.input_tokens, call.output_tokens, call.budgets, call.buckets
            ),
        ]
        status, now, deadline, result, extra, shadow = await self.run_script(
            "reserve", key_list, args
        )
        if status == "bound":
            raise OutOfBounds(str(extra), field="max_tokens")
        budgets_text, _, buckets_text = str(result).partition("|")
        if status == "denied":
            return ReserveOutcome(
                status="denied",
                now_ms=int(now),
                deadline_ms=0,
                denials=_denials(extra),
                shadow_denials=_denials(shadow),
            )
        return ReserveOutcome(
            status=status,
            now_ms=int(now),
            deadline_ms=int(deadline),
            budgets_after=_pairs(budgets_text),
            buckets_after=_levels(buckets_text),
            shadow_denials=_denials(shadow) if isinstance(shadow, list) else (),
            state=str(extra),
        )

    async def commit(self, call: CommitCall) -> CommitOutcome:
        key_list = [
            keys.reservation(call.org, call.reservation_id),
            keys.holds(call.org),
            keys.ledger(call.org),
            keys.events(call.org),
        ]
        args: list[str | int] = [
            call.reservation_id,
            call.cost,
            call.fingerprint,
            call.keep_ms,
            call.input_tokens,
            call.output_tokens,
            keys.org_prefix(call.org),
            call.clock_ms,
        ]
        for field, value in call.ledger_fields:
            args += [field, value]
        status, cost, released, overrun, late, ledger_id, stored, state = await self.run_script(
            "commit", key_list, args
        )
        if status == "bound":
            raise OutOfBounds(str(state), field="usage")
        if status == "replay":
            # Stored as cost:released:overrun:late:ledger_id
            c, r, o, lt, lid = str(stored).split(":", 4)
            return CommitOutcome(
                status="replay",
                cost=int(c),
                released=int(r),
                overrun=o == "1",
                late=lt == "1",
                ledger_id=lid,
                state=state,
            )
        return CommitOutcome(
            status=status,
            cost=int(cost),
            released=int(released),
            overrun=int(overrun) == 1,
            late=int(late) == 1,
            ledger_id=str(ledger_id),
            state=str(state),
        )

    async def release(self, org: str, reservation_id: str, keep_ms: int) -> ReleaseOutcome:
        status, released, state = await self.run_script(
            "release",
            [keys.reservation(org, reservation_id), keys.holds(org), keys.events(org)],
            [reservation_id, keep_ms, keys.org_prefix(org)],
        )
        return ReleaseOutcome(status=status, released=int(released), state=str(state))

    async def expire(self, org: str, limit: int) -> tuple[int, int]:
        reclaimed, remaining = await self.run_script(
            "expire", [keys.holds(org)], [keys.org_prefix(org) + "r:", limit]
        )
        return int(reclaimed), int(remaining)

    async def record(self, call: RecordCall) -> RecordOutcome:
        key_list = [
            keys.usage_record(call.org, call.record_id),
            keys.ledger(call.org),
            keys.events(call.org),
        ]
        args: list[str | int] = [
            call.record_id,
            call.fingerprint,
            call.keep_ms,
            keys.org_prefix(call.org),
            len(call.ledger_fields),
        ]
        for field, value in call.ledger_fields:
            args += [field, value]
        args += plan_tokens(
            call.cost, call.input_tokens, call.output_tokens, call.budgets, call.buckets
        )
        status, ledger_id = await self.run_script("record", key_list, args)
        if status == "bound":
            raise OutOfBounds(str(ledger_id), field="usage")
        return RecordOutcome(status=status, ledger_id=str(ledger_id))

    async def adjust(self, call: AdjustCall) -> AdjustOutcome:
        args: list[str | int] = [
            call.adjustment_id,
            call.fingerprint,
            call.keep_ms,
            keys.org_prefix(call.org),
            len(call.ledger_fields),
        ]
        for field, value in call.ledger_fields:
            args += [field, value]
        args += plan_tokens(call.amount, 0, 0, (call.budget,), ())
        status, ledger_id, spent, period = await self.run_script(
            "adjust",
            [
                keys.adjustment(call.org, call.adjustment_id),
                keys.ledger(call.org),
                keys.events(call.org),
            ],
            args,
        )
        if status == "bound":
            raise OutOfBounds(call.budget.counter_key, field="amount_micros")
        return AdjustOutcome(
            status=status, ledger_id=str(ledger_id), spent=int(spent), period=str(period)
        )

    async def status(
        self, budgets: tuple[BudgetSlot, ...], buckets: tuple[BucketSlot, ...]
    ) -> StatusOutcome:
        # No key is read through KEYS: the first hash routes the call (one slot per org).
        route = [budgets[0].counter_key] if budgets else [buckets[0].key] if buckets else []
        out = await self.run_script("status", route, plan_tokens(0, 0, 0, budgets, buckets))
        values = [int(v) for v in out[1:]]
        pairs = tuple((values[2 * i], values[2 * i + 1]) for i in range(len(budgets)))
        return StatusOutcome(
            now_ms=int(out[0]), budgets=pairs, buckets=tuple(values[2 * len(budgets) :])
        )

    async def reservation(self, org: str, reservation_id: str) -> ReservationView | None:
        state, meta, deadline = await self._bounded(
            self.client.hmget(keys.reservation(org, reservation_id), ["st", "meta", "dl"]),
            self._deadline(),
        )
        if state is None:
            return None
        return ReservationView(state=str(state), meta=str(meta), deadline_ms=int(str(deadline)))

    async def server_time(self) -> float:
        seconds, micros = await self._bounded(self.client.time(), self._deadline())
        return float(seconds) + float(micros) / 1e6

    async def ping(self) -> bool:
        """Every node that holds budgets answers (on a cluster: every primary, since one shard
        down takes down the orgs it holds)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if isinstance(self.client, RedisCluster):
                    replies: Any = await self.client.execute_command(
                        "PING", target_nodes=RedisCluster.PRIMARIES
                    )
                    if isinstance(replies, dict):
                        return all(bool(v) for v in replies.values())
                    return bool(replies)
                return bool(await self.client.ping())
        except (*_UNREACHABLE, redis.exceptions.RedisError):
            return False

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy`` (None where CONFIG is not allowed)."""
        try:
            config = await self.client.config_get("maxmemory-policy")
        except redis.exceptions.RedisError:
            return None
        value = config.get("maxmemory-policy")
        return str(value) if value is not None else None

    async def persistence(self) -> tuple[bool, bool] | None:
        """(AOF on, RDB snapshots on) of the server; None where CONFIG is not allowed."""
        try:
            aof = await self.client.config_get("appendonly")
            rdb = await self.client.config_get("save")
        except redis.exceptions.RedisError:
            return None
        return aof.get("appendonly") == "yes", bool(rdb.get("save"))

    async def close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.node_pipelines is not None:
            await self.node_pipelines.close()
        for node in self._node_clients.values():
            await node.aclose()
        await self.client.aclose()
