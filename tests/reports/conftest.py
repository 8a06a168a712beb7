"""Report fixtures: the engine over a real Redis (and a Redis Cluster), a small org's traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from budgetd.clock import FrozenClock
from budgetd.contract import CommitRequest, Grant, ReserveRequest, UsageRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore
from budgetd.usage import CacheCreation, Usage
from tests.api.conftest import write_policy
from tests.conftest import TEST_PRICING
from tests.engine.conftest import ACME, make_registry

HAIKU = "claude-haiku-test"
SONNET = "claude-sonnet-test"


@pytest.fixture(params=["redis", "cluster"])
async def real_store(request: pytest.FixtureRequest) -> AsyncIterator[ScriptStore]:
    """Reports are proven on real servers: one Redis, and a Redis Cluster."""
    url = request.getfixturevalue(
        "redis_cluster_url" if request.param == "cluster" else "redis_url"
    )
    made = redis_store(url, timeout_s=5.0)
    await made.client.flushall()
    yield made
    await made.close()


@pytest.fixture
def report_engine(tmp_path: Path, real_store: ScriptStore) -> Engine:
    clock = FrozenClock(datetime.now(UTC))
    return Engine(make_registry(tmp_path, ACME), real_store, clock, Metrics())


def usage(i: int) -> Usage:
    """A varied usage object: every token kind, some calls with 1-hour cache writes."""
    return Usage(
        input_tokens=100 + i,
        output_tokens=20 + i % 7,
        cache_creation_input_tokens=30 if i % 3 == 0 else 0,
        cache_creation=CacheCreation(ephemeral_5m_input_tokens=10, ephemeral_1h_input_tokens=20)
        if i % 3 == 0
        else None,
        cache_read_input_tokens=200 if i % 2 == 0 else 0,
    )


class Call(NamedTuple):
    user: str
    feature: str
    model: str
    session: str
    cost: int
    usage: Usage


async def record(engine: Engine, i: int, user: str, feature: str, model: str, session: str) -> Call:
    """Call ``i`` recorded without a reservation (``POST /v1/usage``), as the engine charged it."""
    recorded = await engine.record(
        UsageRequest(
            org="acme",
            model=model,
            usage=usage(i),
            user=user,
            feature=feature,
            record_id=f"rec{i}",
            session=session,
        )
    )
    return Call(user, feature, model, session, recorded.cost_micros, usage(i))


async def traffic(engine: Engine, calls: int = 24) -> list[Call]:
    """Commits (with a session: the request's field, or in metadata as before it existed) and
    records (with a session) across users, features and models; returns what each call was
    and cost, as the engine answered it."""
    made: list[Call] = []
    for i in range(calls):
        user, feature = ["alice", "bob", "carol"][i % 3], ["chat", "search"][i % 2]
        model = HAIKU if i % 4 else SONNET
        if i % 5 == 4:
            made.append(await record(engine, i, user, feature, model, f"s{i % 4}"))
            continue
        grant = await engine.reserve(
            ReserveRequest(
                org="acme",
                model=model,
                input_tokens=400,
                max_tokens=100,
                user=user,
                feature=feature,
                reservation_id=f"r{i}",
                cache_ttl="1h",
                session=f"s{i % 4}" if i % 2 else None,
                metadata=None if i % 2 else {"session_id": f"s{i % 4}"},
            )
        )
        assert isinstance(grant, Grant), grant
        done = await engine.commit("acme", f"r{i}", CommitRequest(usage=usage(i)))
        made.append(Call(user, feature, model, f"s{i % 4}", done.cost_micros, usage(i)))
    return made


def real_range() -> tuple[date, date]:
    """Ledger entries are stamped with Redis time (today, UTC), whatever the frozen clock says."""
    today = datetime.now(UTC).date()
    return today - timedelta(days=2), today + timedelta(days=2)


def this_month() -> tuple[date, date]:
    """ACME's month so far (America/New_York), read as its one month bucket."""
    today = datetime.now(ZoneInfo("America/New_York")).date()
    return today.replace(day=1), today + timedelta(days=1)


@pytest.fixture
async def seeded(tmp_path: Path, redis_url: str) -> tuple[Path, list[Call]]:
    """A real Redis with ACME's traffic, and the policy directory that defines ACME."""
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    store = redis_store(redis_url, timeout_s=5.0)
    await store.client.flushall()
    registry = PolicyRegistry(directory, TEST_PRICING)
    assert registry.reload().ok
    engine = Engine(registry, store, FrozenClock(datetime.now(UTC)), Metrics())
    calls = await traffic(engine)
    await store.close()
    return directory, calls
