"""Events reach receivers exactly once per threshold across replicas, with valid signatures;
retries, dead letters, slow receivers and restarts behave."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from budgetd.app import create_app
from budgetd.jobs.channels import sign
from budgetd.store import keys
from budgetd.store.connect import redis_store
from budgetd.store.scripts import source
from tests.api.conftest import Client, asgi_client, settings_for, write_policy
from tests.jobs.receiver import Receiver, wait_for

SECRET = "s3cret"
POLICY = """
org: acme
timezone: UTC
channels:
  hook: {{webhook: "{url}", secret_env: BUDGETD_TEST_HOOK_SECRET}}
defaults:
  notify: [hook]
  forecast: false
  spike_factor: null
budgets:
  - {{name: org-day, scope: org, limit_usd: 0.01, period: day}}
"""
# claude-haiku-test: 995 input + 1 output token = 1,000 µ$ = 10 % of the $0.01 budget.
CALL = {"org": "acme", "model": "claude-haiku-test", "input_tokens": 995, "max_tokens": 1}
# The receivers answer at once; the send timeout is only generous so that a busy test loop
# (app, receiver and test share it) does not turn an answer into a timeout.
FAST = {"delivery_interval_s": 0.1, "delivery_backoff_s": 0.1, "delivery_timeout_s": 3.0}


@pytest.fixture(autouse=True)
def hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGETD_TEST_HOOK_SECRET", SECRET)


@contextlib.asynccontextmanager
async def instances(
    tmp_path: Path, redis_url: str, url: str, count: int, **settings: Any
) -> AsyncIterator[list[Client]]:
    directory = tmp_path / "policies"
    write_policy(directory, POLICY.format(url=url))
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            app = create_app(
                settings_for(directory, **{**FAST, **settings}),
                store=redis_store(redis_url, timeout_s=5),
            )
            clients.append(await stack.enter_async_context(asgi_client(app)))
        yield clients


@pytest.fixture
async def clean_redis(redis_url: str) -> str:
    store = redis_store(redis_url)
    await store.client.flushdb()
    await store.close()
    return redis_url


async def _spend_to_the_limit(clients: list[Client]) -> None:
    statuses = []
    for i in range(11):  # 10 fit; the 11th hits the hard limit
        r = await clients[i % len(clients)].post("/v1/reservations", json=CALL)
        statuses.append(r.status_code)
    assert statuses == [201] * 10 + [429]


def _verify(received: Any) -> None:
    headers = received.headers
    stamp = headers["x-budgetd-timestamp"]
    assert headers["x-budgetd-signature"] == sign(SECRET, stamp, received.body)
    assert headers["x-budgetd-event-id"] == received.json()["id"]


async def test_three_instances_deliver_each_event_exactly_once(
    tmp_path: Path, clean_redis: str
) -> None:
    async with Receiver().running() as hook, instances(tmp_path, clean_redis, hook.url, 3) as apps:
        await _spend_to_the_limit(apps)
        await wait_for(lambda: len(hook.received) >= 4)
        await asyncio.sleep(0.5)  # room for a duplicate to show up, if there were one
    kinds = sorted((r.json()["type"], r.json()["threshold"]) for r in hook.received)
    assert kinds == [
        ("hard_limit", "100"),
        ("threshold", "100"),
        ("threshold", "50"),
        ("threshold", "80"),
    ]
    for received in hook.received:
        _verify(received)
    assert len({r.json()["id"] for r in hook.received}) == 4


async def test_retry_until_success_then_dead_letter(tmp_path: Path, clean_redis: str) -> None:
    async with (
        Receiver(statuses=[500, 500]).running() as hook,
        instances(tmp_path, clean_redis, hook.url, 1) as (app,),
    ):
        for _ in range(5):  # 50 %: one event
            await app.post("/v1/reservations", json=CALL)
        assert await wait_for(lambda: len(hook.received) == 1)
        assert hook.attempts == 3
    async with (
        Receiver(then=500).running() as dead,
        instances(tmp_path, clean_redis, dead.url, 1, delivery_attempts=3) as (app,),
    ):
        for _ in range(3):  # 80 %: a new event
            await app.post("/v1/reservations", json=CALL)

        async def dead_letters() -> list[dict[str, Any]]:
            r = await app.get("/v1/admin/events?org=acme")
            letters: list[dict[str, Any]] = r.json()["dead_letters"]
            return letters

        for _ in range(100):  # up to 10 s
            if await dead_letters():
                break
            await asyncio.sleep(0.1)
        letters = await dead_letters()
        assert len(letters) == 1
        assert letters[0]["attempts"] == 3
        error = letters[0]["error"]
        assert error == "HTTP 500" or "Timeout" in error  # a busy loop may time a send out
        # Never more sends than attempts (a timed-out attempt may not have reached it at all).
        assert dead.attempts <= 3


async def test_a_slow_receiver_gets_one_send_at_a_time(tmp_path: Path, clean_redis: str) -> None:
    """httpx's timeout bounds each read, not the request: a receiver that keeps sending a
    little kept one send open past its delivery lock, and the next pass sent the event again
    while the first send was still open. Each send now has an overall deadline, shorter than
    the lock: the slow attempts time out one after the other and the event is dead-lettered."""
    async with (
        Receiver(trickle=True).running() as hook,
        instances(
            tmp_path, clean_redis, hook.url, 2, delivery_timeout_s=0.5, delivery_attempts=2
        ) as apps,
    ):
        for _ in range(5):  # 50 %: one event
            await apps[0].post("/v1/reservations", json=CALL)

        async def dead_letters() -> list[dict[str, Any]]:
            r = await apps[0].get("/v1/admin/events?org=acme")
            letters: list[dict[str, Any]] = r.json()["dead_letters"]
            return letters

        for _ in range(150):  # up to 15 s
            if await dead_letters():
                break
            await asyncio.sleep(0.1)
        letters = await dead_letters()
    assert hook.most_in_flight == 1
    assert len(letters) == 1
    assert letters[0]["attempts"] == 2
    assert "0.5 s" in letters[0]["error"]


async def _pending_in_retry(app: Client, hook: Receiver) -> None:
    for _ in range(5):  # 50 %: one event, which the receiver keeps failing
        await app.post("/v1/reservations", json=CALL)
    assert await wait_for(lambda: hook.attempts >= 2)


async def _dead_letters(app: Client) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = (await app.get("/v1/admin/events?org=acme")).json()[
        "dead_letters"
    ]
    return letters


async def test_an_event_waiting_for_a_retry_is_never_trimmed(
    tmp_path: Path, clean_redis: str
) -> None:
    """100,000 newer events used to push a pending event out of the stream (XADD MAXLEN):
    never delivered, never dead-lettered. Only acknowledged events are trimmed now."""
    async with Receiver(then=500).running() as hook:
        # First life: the receiver is down; the event waits for a retry.
        async with instances(tmp_path, clean_redis, hook.url, 1, delivery_attempts=1000) as (app,):
            await _pending_in_retry(app, hook)
        store = redis_store(clean_redis)
        sha = await store.client.script_load(source("emit"))
        stream = keys.events("acme")
        for start in range(0, 101_000, 5_000):  # newer events no channel listens to
            pipe = store.client.pipeline(transaction=False)
            for i in range(start, start + 5_000):
                pipe.evalsha(
                    sha, 1, stream, keys.org_prefix("acme"), f"filler{i}", 60_000, "type", "x"
                )
            await pipe.execute()
        await store.close()
        # Second life (a restart keeps the backoff short): the receiver is back.
        hook.then = 200
        async with instances(tmp_path, clean_redis, hook.url, 1) as (app,):
            assert await wait_for(lambda: len(hook.received) == 1, timeout_s=20)
            assert await _dead_letters(app) == []


async def test_a_pending_event_deleted_from_the_stream_is_dead_lettered(
    tmp_path: Path, clean_redis: str
) -> None:
    """XAUTOCLAIM drops a pending entry that is gone from the stream (XDEL, a trim by hand)
    and names it; delivery dead-letters it with what it still knows."""
    async with (
        Receiver(then=500).running() as hook,
        instances(tmp_path, clean_redis, hook.url, 1, delivery_attempts=1000) as (app,),
    ):
        await _pending_in_retry(app, hook)
        store = redis_store(clean_redis)
        (stream_id, _), *_ = await store.client.xrange(keys.events("acme"))
        await store.client.xdel(keys.events("acme"), stream_id)
        await store.close()
        for _ in range(100):  # up to 10 s
            if await _dead_letters(app):
                break
            await asyncio.sleep(0.1)
        letters = await _dead_letters(app)
    assert len(letters) == 1
    assert letters[0]["stream_id"] == stream_id
    assert "deleted from the stream" in letters[0]["error"]


GLOBEX = """
org: globex
timezone: UTC
channels:
  hook: {{webhook: "{url}", secret_env: BUDGETD_TEST_HOOK_SECRET}}
defaults:
  notify: [hook]
  forecast: false
  spike_factor: null
budgets:
  - {{name: org-day, scope: org, limit_usd: 0.01, period: day}}
"""


async def test_delivery_recovers_after_redis_loses_its_data(
    tmp_path: Path, clean_redis: str
) -> None:
    """FLUSHDB (or a restart without persistence) takes the consumer groups with it: delivery
    recreates them and goes on, one org's broken stream does not stop the others, and /readyz
    and a metric say the store lost data (the pod stays ready: it can still decide)."""
    directory = tmp_path / "policies"
    async with Receiver().running() as hook:
        write_policy(directory, GLOBEX.format(url=hook.url), name="a-globex.yaml")
        write_policy(directory, POLICY.format(url=hook.url), name="b-acme.yaml")
        app = create_app(
            settings_for(directory, **FAST), store=redis_store(clean_redis, timeout_s=5)
        )
        async with asgi_client(app) as client:
            for _ in range(5):  # 50 %: one event
                await client.post("/v1/reservations", json=CALL)
            assert await wait_for(lambda: len(hook.received) == 1)
            ready = await client.get("/readyz")
            assert ready.json()["store"]["data_lost_at"] is None

            store = redis_store(clean_redis)
            await store.client.flushdb()
            # And one org's stream is beyond repair (not a stream at all).
            await store.client.set("bd:{o:globex}:events", "not a stream")
            await store.close()
            for _ in range(5):  # 50 % again: the flush took the counters and the marker
                await client.post("/v1/reservations", json=CALL)
            assert await wait_for(lambda: len(hook.received) == 2), "no delivery after a flush"
            assert {r.json()["org"] for r in hook.received} == {"acme"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["store"]["data_lost_at"] is not None
            metrics = (await client.get("/metrics")).text
            assert "budgetd_store_data_lost_total 1.0" in metrics


async def test_a_webhook_whose_secret_is_unset_is_refused_and_shown_in_readyz(
    tmp_path: Path, clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be sent unsigned, silently."""
    monkeypatch.delenv("BUDGETD_TEST_HOOK_SECRET")
    async with (
        Receiver().running() as hook,
        instances(tmp_path, clean_redis, hook.url, 1) as (app,),
    ):
        assert (await app.post("/v1/reservations", json=CALL)).status_code == 404
        ready = await app.get("/readyz")
        assert ready.status_code == 503
        (error,) = ready.json()["policy"]["errors"]
        assert error.endswith(
            "policy.yaml:5: channels.hook.secret_env: the environment variable "
            "BUDGETD_TEST_HOOK_SECRET is not set (or empty): this webhook would be sent "
            "unsigned. Set it, or remove secret_env to send unsigned on purpose"
        )
    assert hook.attempts == 0


async def test_a_hanging_receiver_does_not_slow_reserve(tmp_path: Path, clean_redis: str) -> None:
    async with (
        Receiver(hang=True).running() as hook,
        instances(tmp_path, clean_redis, hook.url, 1, delivery_timeout_s=3.0) as (app,),
    ):
        for _ in range(5):
            await app.post("/v1/reservations", json=CALL)
        assert await wait_for(lambda: hook.attempts >= 1)  # a delivery is now stuck
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            r = await app.get("/v1/budgets?org=acme")
            assert r.status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        # Each call finished while the 3-second delivery was still hanging.
        assert slowest < 1.0
        assert hook.received == []


async def test_restart_mid_delivery_loses_and_duplicates_nothing(
    tmp_path: Path, clean_redis: str
) -> None:
    hook = Receiver(statuses=[200], hang=False)
    async with hook.running():
        # First life: the receiver answers the first event, then hangs on the next ones.
        async with instances(tmp_path, clean_redis, hook.url, 2) as apps:
            hook.then = 200
            await _spend_to_the_limit(apps)
            await wait_for(lambda: len(hook.received) >= 1)
            hook.hang = True
            await asyncio.sleep(0.3)
        # Every instance stopped mid-delivery. Second life: the receiver is healthy again.
        hook.hang = False
        async with instances(tmp_path, clean_redis, hook.url, 2):
            assert await wait_for(
                lambda: len({r.json()["id"] for r in hook.received}) == 4, timeout_s=15
            )
            await asyncio.sleep(0.5)
    ids = [r.json()["id"] for r in hook.received]
    assert len(ids) == len(set(ids)) == 4


async def test_abandoned_holds_are_reclaimed_within_lease_plus_one_sweep(
    tmp_path: Path, clean_redis: str
) -> None:
    async with (
        Receiver().running() as hook,
        instances(tmp_path, clean_redis, hook.url, 1, sweep_interval_s=0.5) as (app,),
    ):
        r = await app.post("/v1/reservations", json={**CALL, "ttl_s": 1})
        assert r.status_code == 201
        started = time.monotonic()

        async def held() -> int:
            view = await app.get("/v1/budgets?org=acme")
            value: int = view.json()["scopes"][0]["held_micros"]
            return value

        for _ in range(100):  # up to 5 s
            if not await held():
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert await held() == 0
        # lease + one sweep interval, plus slack for a busy loop (the sweep runs on the same one)
        assert elapsed <= 1 + 0.5 + 1.0
