"""Every Prometheus metric, named once. Labels never carry user ids or raw paths: routes are
named, budgets are labelled by org and budget name only (never per user or feature entity).

With several uvicorn workers, ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the workers start: each worker writes its samples to memory-mapped files there, and
whichever worker answers ``/metrics`` reads all of them (prometheus-client's multiprocess mode),
so counters are the sum over workers instead of one worker's view per scrape.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from budgetd.money import MICROS_PER_USD

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A `_created` sample beside every counter and histogram doubles the output and no dashboard
# or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Request and Redis latencies: budgetd answers in about a millisecond, so the buckets are fine
# below 10 ms and coarse above (a p99 alert at 50 ms needs buckets around it).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


# uvicorn's supervisor kills a worker that has not answered its ping within this (default 5 s):
# on a CPU-throttled pod or a busy machine a worker's start-up (imports, the app) takes longer,
# and with 5 s the workers were killed and restarted in a loop, never serving.
WORKER_HEALTHCHECK_S = 30


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess() -> Path:
    """A fresh, empty directory for the workers' sample files, exported in the environment
    the workers inherit (call before they start; remove it after they stop)."""
    directory = Path(tempfile.mkdtemp(prefix="budgetd-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def cleanup_multiprocess(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(MULTIPROC_ENV, None)


class _Observe:
    """``observe`` of one labelled histogram child, without what the library checks on every
    call (observability, exemplars: settled once, here): the bucket found by bisection, then
    the same two increments on the same value objects, so the exposition and the multiprocess
    files read exactly as the library's own ``observe`` would have left them. About half its
    CPU on the hot path, which observes twice per request (issue 13)."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child: Histogram) -> None:
        child._raise_if_not_observable()  # type: ignore[no-untyped-call]
        self.bounds: list[float] = child._upper_bounds
        self.buckets: list[Any] = child._buckets
        self.sum: Any = child._sum

    def observe(self, seconds: float) -> None:
        self.sum.inc(seconds)
        # The first bucket whose upper bound is >= seconds: the library's ``le`` (the last
        # bound is +Inf, so there always is one; durations are never NaN).
        self.buckets[bisect_left(self.bounds, seconds)].inc(1)


class _Inc:
    """``inc`` of one labelled counter child, on its value object (as ``_Observe``)."""

    __slots__ = ("value",)

    def __init__(self, child: Counter) -> None:
        child._raise_if_not_observable()  # type: ignore[no-untyped-call]
        self.value: Any = child._value

    def inc(self, amount: float = 1) -> None:
        self.value.inc(amount)


class WorkerProcesses:
    """``process_*`` metrics of every live worker, labelled ``worker=<pid>``: in multiprocess
    mode the standard ProcessCollector would report only the worker that answers the scrape."""

    _PID = re.compile(r"_(\d+)\.db$")

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _pids(self) -> set[int]:
        pids = {
            int(m.group(1)) for p in self.directory.glob("*.db") if (m := self._PID.search(p.name))
        }
        return {pid for pid in pids if Path(f"/proc/{pid}").exists()}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in sorted(self._pids()):
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for metric in collector.collect():
                into = merged.setdefault(
                    metric.name, Metric(metric.name, metric.documentation, metric.type)
                )
                for s in metric.samples:
                    into.add_sample(s.name, {**s.labels, "worker": str(pid)}, s.value)
        yield from merged.values()


class Metrics:
    """One set of metrics on its own registry (tests and several apps per process stay apart;
    in multiprocess mode the samples also go to the shared directory)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        if multiprocess_dir() is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Histogram(
            "budgetd_request_duration_seconds",
            "HTTP requests by route and outcome, from the first byte in to the last byte out",
            ["route", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_calls = Histogram(
            "budgetd_store_call_duration_seconds",
            "Redis script calls (including the timeout bound), by script and outcome",
            ["op", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "budgetd_decisions_total",
            "Reservations decided, once per request: granted, replay, denied, fail_open, "
            "fail_closed",
            ["outcome"],
            registry=r,
        )
        self.denials = Counter(
            "budgetd_denials_total",
            "Denying scopes, by limit kind and scope (a denied request may count several)",
            ["kind", "scope"],
            registry=r,
        )
        self.commits = Counter("budgetd_commits_total", "Settled commits", ["overrun"], registry=r)
        self.spend = Counter(
            "budgetd_spend_dollars_total",
            "Spend recorded (commits and usage records), in US dollars",
            ["org", "model"],
            registry=r,
        )
        self.utilisation = Gauge(
            "budgetd_budget_utilisation_ratio",
            "(spent + held) / limit of each org-scope budget, as of its last decision",
            ["org", "budget"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.remaining = Gauge(
            "budgetd_budget_remaining_dollars",
            "limit - spent - held of each org-scope budget, as of its last decision, in dollars",
            ["org", "budget"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.store_failures = Counter(
            "budgetd_store_unavailable_total",
            "Requests that met an unreachable store, by what was decided",
            ["decision"],
            registry=r,
        )
        self.store_up = Gauge(
            "budgetd_store_up",
            "1 when the store answered the last readiness check",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.policy_load_errors = Counter(
            "budgetd_config_load_error_total", "Policy reloads that failed", registry=r
        )
        self.policy_loaded = Gauge(
            "budgetd_policy_loaded",
            "1 when a valid policy is active",
            multiprocess_mode="min",
            registry=r,
        )
        self.reconcile_differences = Gauge(
            "budgetd_reconcile_differences",
            "Differences the last reconcile of an org found (0: counters = ledger + holds)",
            ["org"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.events_read = Counter(
            "budgetd_events_emitted_total",
            "Events read from the org streams for delivery",
            registry=r,
        )
        self.events_delivered = Counter(
            "budgetd_events_delivered_total",
            "Event deliveries, by channel kind",
            ["channel_kind"],
            registry=r,
        )
        self.events_retried = Counter(
            "budgetd_events_retried_total", "Failed deliveries scheduled for a retry", registry=r
        )
        self.ledger_trimmed = Counter(
            "budgetd_ledger_trimmed_total",
            "Ledger entries exported and trimmed by the retention job",
            registry=r,
        )
        self.store_data_lost = Counter(
            "budgetd_store_data_lost_total",
            "Org event streams found gone with their delivery group: Redis lost its data",
            registry=r,
        )
        self.events_dead = Counter(
            "budgetd_events_dead_lettered_total",
            "Deliveries given up after the last attempt",
            registry=r,
        )
        self.sweep_lag = Gauge(
            "budgetd_sweep_lag_seconds",
            "Seconds between a sweep's scheduled and actual start",
            multiprocess_mode="max",
            registry=r,
        )
        self.expired_holds = Counter(
            "budgetd_expired_holds_total", "Holds reclaimed by the sweep", registry=r
        )
        # The hot path's labelled children, looked up once: ``labels()`` validates and locks on
        # every call. The keys are bounded by the policy (scripts, routes, orgs x budget names,
        # orgs x models).
        self.decided = {
            o: _Inc(self.decisions.labels(outcome=o))
            for o in ("granted", "replay", "denied", "fail_open", "fail_closed")
        }
        """Decisions by outcome, for the engine (once per reserve)."""
        self.committed = {
            o: _Inc(self.commits.labels(overrun=str(o).lower())) for o in (True, False)
        }
        """Settled commits by overrun, for the engine."""
        self._store_children: dict[tuple[str, bool], _Observe] = {}
        self._request_children: dict[tuple[str, str], _Observe] = {}
        self._budget_children: dict[tuple[str, str], tuple[Gauge, Gauge]] = {}
        self._spend_children: dict[tuple[str, str], _Inc] = {}

    def observe_store_call(self, op: str, seconds: float, ok: bool) -> None:
        key = (op, ok)
        child = self._store_children.get(key)
        if child is None:
            child = self._store_children[key] = _Observe(
                self.store_calls.labels(op, "ok" if ok else "error")
            )
        child.observe(seconds)

    def observe_request(self, route: str, outcome: str, seconds: float) -> None:
        key = (route, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = _Observe(self.requests.labels(route, outcome))
        child.observe(seconds)

    def observe_budgets(self, org: str, states: Iterable[tuple[str, int, int]]) -> None:
        """``(budget name, limit, used)`` of org-scope budgets, in micro-dollars."""
        for name, limit, used in states:
            key = (org, name)
            pair = self._budget_children.get(key)
            if pair is None:
                pair = self._budget_children[key] = (
                    self.utilisation.labels(org, name),
                    self.remaining.labels(org, name),
                )
            pair[0].set(used / limit if limit else 0.0)
            pair[1].set(max(0, limit - used) / MICROS_PER_USD)

    def add_spend(self, org: str, model: str, micros: int) -> None:
        key = (org, model)
        child = self._spend_children.get(key)
        if child is None:
            child = self._spend_children[key] = _Inc(self.spend.labels(org, model))
        child.inc(micros / MICROS_PER_USD)

    def exposition(self) -> bytes:
        """The text for ``/metrics``: every worker's samples in multiprocess mode."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(WorkerProcesses(directory))
        return generate_latest(registry)
