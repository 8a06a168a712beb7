"""Benchmark: what 2 teams, a key and a session budget add to the cost of a reserve (issue 14).

    .venv/bin/python bench/scopes.py [--reserves 2000] [--concurrency 8] [--rounds 5]

It starts its own ``redis-server`` (loopback, free port, no persistence) and drives
``budgetd.engine.Engine`` directly, for two policies:

  * ``base``: the policy of ``bench/reserve_commit.py`` (3 budgets, 2 rate limits × 3 kinds:
    9 counters per call);
  * ``scoped``: the same, plus two teams every bench user belongs to with a team budget, a
    key budget (each reserve comes with the key ``bench-app``, as the HTTP API passes the
    authenticated key's name) and a session budget (each reserve names one of the users'
    sessions) when the policy has session budgets; the output says which were added.

Each round measures ``--reserves`` reserves of each policy at ``--concurrency`` in flight (the
order of the two alternates between rounds; the holds are released after each measured
phase, outside it): Redis's process CPU per reserve (``used_cpu_user + used_cpu_sys``) and
this process's CPU per reserve (``time.process_time``: resolution, the plan, the script call
and reading its answer; no HTTP, so it is the engine's share of the service's CPU). Figures
are the median of the rounds with their range, next to the load average and CPU steal of the
run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from budgetd.clock import SystemClock
from budgetd.contract import Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.metrics import Metrics
from budgetd.policy.registry import PolicyRegistry
from budgetd.store.connect import redis_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers: the same server helpers as the test suite
sys.path.insert(0, str(ROOT / "bench"))
from tests.servers import start_redis  # noqa: E402

from _machine import load_average, steal_ticks  # noqa: E402
from redis_work import run_slots  # noqa: E402
from reserve_commit import MODEL, ORG, POLICY  # noqa: E402

KEY = "bench-app"
TEAMS = """teams:
  bench-a: {match: "user-*"}
  bench-b: {match: "user-*"}
"""
TEAM_AND_KEY = """  - {name: team-day, scope: team, limit_usd: 10000000, period: day}
  - {name: key-day, scope: key, limit_usd: 10000000, period: day}
"""
SESSION_CANDIDATES = (
    "  - {name: per-session, scope: session, limit_usd: 1000000, period: session, idle: 30m}\n",
    "  - {name: per-session, scope: session, limit_usd: 1000000, period: day}\n",
)
"""The session budget, as the policy may spell it (the first one that loads is used)."""


def _loads(directory: Path, text: str) -> PolicyRegistry | None:
    """The policy, or None if it does not load (the session spellings are tried in turn)."""
    logging.getLogger("budgetd").setLevel(logging.CRITICAL)  # a candidate that fails is fine
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(text)
    registry = PolicyRegistry(directory, ROOT / "policies" / "pricing.yaml")
    loaded = registry.reload().ok
    logging.getLogger("budgetd").setLevel(logging.NOTSET)
    return registry if loaded else None


def policies(tmp: Path) -> tuple[PolicyRegistry, PolicyRegistry, list[str]]:
    """(base, scoped, what the scoped one adds)."""
    base = _loads(tmp / "base", POLICY)
    assert base is not None
    scoped_text = POLICY.replace("budgets:\n", TEAMS + "budgets:\n" + TEAM_AND_KEY, 1)
    added = ["a team budget, every user in 2 teams (2 counters)", "a key budget"]
    for i, line in enumerate(SESSION_CANDIDATES):
        with_session = scoped_text.replace(TEAM_AND_KEY, TEAM_AND_KEY + line, 1)
        scoped = _loads(tmp / f"scoped{i}", with_session)
        if scoped is not None:
            return base, scoped, [*added, f"a session budget ({line.strip()})"]
    scoped = _loads(tmp / "scoped", scoped_text)
    assert scoped is not None
    return base, scoped, [*added, "no session budget (the policy has none yet)"]


async def redis_cpu(engine: Engine) -> float:
    info: dict[str, Any] = await engine.store.client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Case:
    def __init__(self, name: str, registry: PolicyRegistry, url: str, users: int) -> None:
        self.name = name
        self.engine = Engine(registry, redis_store(url, timeout_s=10.0), SystemClock(), Metrics())
        self.users = users
        self.run = itertools.count()
        self.counters = 0

    def request(self, i: int, rid: str) -> ReserveRequest:
        user = i % self.users
        fields: dict[str, Any] = {}
        if "session" in ReserveRequest.__struct_fields__:
            fields["session"] = f"s-{user}"
        return ReserveRequest(
            org=ORG,
            user=f"user-{user}",
            feature="chat",
            model=MODEL,
            input_tokens=1000,
            max_tokens=200,
            reservation_id=rid,
            **fields,
        )

    async def reserve(self, i: int, rid: str, with_scopes: bool = False) -> None:
        """As ``POST /v1/reservations`` answers by default: without the per-scope detail."""
        grant = await self.engine.reserve(self.request(i, rid), key=KEY, with_scopes=with_scopes)
        assert isinstance(grant, Grant), grant
        if with_scopes:
            self.counters = len(grant.scopes)

    async def measure(self, n: int, concurrency: int) -> tuple[float, float]:
        """(Redis CPU µs, this process's CPU µs) per reserve."""
        rids = [f"{self.name}{next(self.run)}" for _ in range(n)]
        redis0, own0 = await redis_cpu(self.engine), time.process_time()
        await run_slots(n, concurrency, lambda i: self.reserve(i, rids[i]))
        own1, redis1 = time.process_time(), await redis_cpu(self.engine)
        await run_slots(n, concurrency, lambda i: self._release(rids[i]))
        return (redis1 - redis0) / n * 1e6, (own1 - own0) / n * 1e6

    async def _release(self, rid: str) -> None:
        await self.engine.release(ORG, rid)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


async def main_async(args: argparse.Namespace, url: str, tmp: Path) -> None:
    base_registry, scoped_registry, added = policies(tmp)
    cases = [
        Case("base", base_registry, url, args.users),
        Case("scoped", scoped_registry, url, args.users),
    ]
    for case in cases:  # warm-up: every user's keys exist, scripts loaded, caches filled
        await case.measure(args.users * 2, args.concurrency)
        await case.reserve(0, f"{case.name}-count", with_scopes=True)
    figures: dict[str, dict[str, list[float]]] = {c.name: {"redis": [], "own": []} for c in cases}
    load_before = load_average()
    steal0, total0 = steal_ticks()
    for round_ in range(args.rounds):
        for case in cases if round_ % 2 == 0 else cases[::-1]:
            redis_us, own_us = await case.measure(args.reserves, args.concurrency)
            figures[case.name]["redis"].append(redis_us)
            figures[case.name]["own"].append(own_us)
    steal1, total1 = steal_ticks()
    for case in cases:
        await case.engine.store.close()
    base, scoped = figures["base"], figures["scoped"]
    print(
        json.dumps(
            {
                "scoped_adds": added,
                "counters_per_reserve": {c.name: c.counters for c in cases},
                "redis_cpu_us_per_reserve": {k: summary(v["redis"]) for k, v in figures.items()},
                "service_cpu_us_per_reserve": {k: summary(v["own"]) for k, v in figures.items()},
                "added_redis_cpu_us": round(
                    statistics.median(scoped["redis"]) - statistics.median(base["redis"]), 1
                ),
                "added_service_cpu_us": round(
                    statistics.median(scoped["own"]) - statistics.median(base["own"]), 1
                ),
                "reserves_per_round": args.reserves,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "load_average_before_after": [load_before, load_average()],
                "steal_pct": round(100 * (steal1 - steal0) / max(1, total1 - total0), 1),
            },
            indent=1,
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reserves", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        try:
            asyncio.run(main_async(args, server.url, Path(tmp)))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
