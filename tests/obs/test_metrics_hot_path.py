"""The hot path's metric updates (issue 13) skip prometheus_client's per-call checks, not its
values: whatever they record reads exactly as the library's own ``observe``/``inc`` would have
recorded it, bucket edges included."""

from __future__ import annotations

from prometheus_client import generate_latest

from budgetd.metrics import LATENCY_BUCKETS, Metrics

DURATIONS = [
    0.0,
    1e-7,
    *LATENCY_BUCKETS,  # exactly on an edge: counted in that bucket ("le")
    *(b * 1.000001 for b in LATENCY_BUCKETS),
    2.5000001,
    30.0,  # past the last edge: +Inf only
]


def exposition(metrics: Metrics) -> list[str]:
    return [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("budgetd_")
    ]


def test_hot_path_updates_read_as_the_librarys_own() -> None:
    fast, reference = Metrics(), Metrics()
    for i, seconds in enumerate(DURATIONS):
        route, outcome = ("reserve", "ok") if i % 3 else ("commit", "invalid")
        fast.observe_request(route, outcome, seconds)
        reference.requests.labels(route, outcome).observe(seconds)
        op, ok = ("reserve", True) if i % 2 else ("commit", False)
        fast.observe_store_call(op, seconds, ok)
        reference.store_calls.labels(op, "ok" if ok else "error").observe(seconds)
    for outcome in ("granted", "granted", "replay", "denied", "fail_open", "fail_closed"):
        fast.decided[outcome].inc()
        reference.decisions.labels(outcome=outcome).inc()
    for overrun in (True, False, False):
        fast.committed[overrun].inc()
        reference.commits.labels(overrun=str(overrun).lower()).inc()
    for org, model, micros in (("acme", "haiku", 2350), ("acme", "haiku", 1), ("b", "opus", 0)):
        fast.add_spend(org, model, micros)
        reference.spend.labels(org, model).inc(micros / 1_000_000)
    assert exposition(fast) == exposition(reference)
    assert any(
        line.startswith("budgetd_request_duration_seconds_bucket") for line in exposition(fast)
    )
