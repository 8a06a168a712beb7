"""Metrics on-call can use: the same counters from whichever worker answers the scrape, request
latency per route and outcome (the raw-ASGI fast path included), decisions once per request,
spend in dollars by org and model, org budgets' utilisation, Redis call latency; and every query
of the Grafana dashboard and the PrometheusRule names a metric the service exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from budgetd.app import create_app
from budgetd.store.connect import embedded_store
from tests.api.conftest import asgi_client, settings_for, write_policy
from tests.deploy.chart import CASES, CHART, objects
from tests.deploy.service import Service
from tests.engine.conftest import ACME

RESERVE = {
    "org": "acme",
    "user": "alice",
    "feature": "chat",
    "model": "claude-haiku-test",
    "input_tokens": 100,
    "max_tokens": 50,
}
USAGE = {"usage": {"input_tokens": 90, "output_tokens": 40}}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def workers(text: str) -> set[str]:
    """The live worker pids whose process metrics a scrape reports."""
    return {
        dict(labels)["worker"]
        for (name, labels) in samples(text)
        if name == "process_cpu_seconds_total"
    }


def wait_for_workers(service: Service, count: int, deadline_s: float = 60.0) -> None:
    """Both workers up (uvicorn starts them one after the other; a slow machine takes a while)."""
    stop = time.monotonic() + deadline_s
    while len(seen := workers(httpx.get(service.url + "/metrics", timeout=10).text)) < count:
        assert time.monotonic() < stop, f"only workers {seen} came up:\n{service.log.read_text()}"
        time.sleep(0.2)


def test_two_workers_agree_on_every_scrape(tmp_path: Path, redis_url: str) -> None:
    """BUDGETD_WORKERS=2: each scrape lands on either worker (new connection each) and reads
    the same totals, which count every request exactly once."""
    write_policy(tmp_path / "policies", ACME)
    service = Service(
        {
            "BUDGETD_REDIS_URL": redis_url,
            "BUDGETD_WORKERS": "2",
            "BUDGETD_POLICY_DIR": str(tmp_path / "policies"),
            "BUDGETD_POLICY_POLL_S": "0",
            "BUDGETD_SWEEP_INTERVAL_S": "0",
        },
        tmp_path / "budgetd.log",
    )
    try:
        service.wait_ready()
        wait_for_workers(service, 2)
        pairs, cost_micros = 12, 0
        for _ in range(pairs):  # a new connection per request: both workers serve some
            r = httpx.post(service.url + "/v1/reservations", json=RESERVE, timeout=10)
            assert r.status_code == 201, r.text
            rid = r.json()["reservation_id"]
            r = httpx.post(f"{service.url}/v1/reservations/{rid}/commit?org=acme", json=USAGE)
            assert r.status_code == 200, r.text
            cost_micros += r.json()["cost_micros"]
        denied = httpx.post(
            service.url + "/v1/reservations", json={**RESERVE, "max_tokens": 10**6}, timeout=10
        )
        assert denied.status_code in (422, 429), denied.text
        scrapes = [httpx.get(service.url + "/metrics", timeout=10).text for _ in range(8)]
    finally:
        service.stop()
    workers_seen: set[str] = set()
    for text in scrapes:
        assert "_created" not in text
        assert "alice" not in text  # never a user id in a label
        found = samples(text)
        assert value(found, "budgetd_decisions_total", outcome="granted") == pairs
        assert value(found, "budgetd_commits_total", overrun="false") == pairs
        route = {"route": "reserve", "outcome": "ok"}
        assert value(found, "budgetd_request_duration_seconds_count", **route) == pairs
        assert value(found, "budgetd_request_duration_seconds_bucket", le="+Inf", **route) == pairs
        assert (
            value(found, "budgetd_request_duration_seconds_count", route="commit", outcome="ok")
            == pairs
        )
        spend = value(found, "budgetd_spend_dollars_total", org="acme", model="claude-haiku-test")
        assert round(spend * 1_000_000) == cost_micros
        assert (
            value(found, "budgetd_store_call_duration_seconds_count", op="reserve", outcome="ok")
            >= pairs
        )
        assert (
            0 < value(found, "budgetd_budget_utilisation_ratio", org="acme", budget="org-month") < 1
        )
        workers_seen |= workers(text)
    assert len(workers_seen) >= 2  # process metrics of both workers, labelled by pid


async def test_the_fast_path_is_measured_and_ids_every_request(tmp_path: Path) -> None:
    write_policy(tmp_path / "policies", ACME)
    app = create_app(settings_for(tmp_path / "policies"), store=embedded_store())
    async with asgi_client(app) as client:
        given = await client.post(
            "/v1/reservations", json=RESERVE, headers={"X-Request-Id": "req-1"}
        )
        assert given.status_code == 201 and given.headers["x-request-id"] == "req-1"
        made = await client.post(
            f"/v1/reservations/{given.json()['reservation_id']}/release?org=acme"
        )
        assert made.status_code == 200 and re.fullmatch(
            r"[0-9a-f]{32}", made.headers["x-request-id"]
        )
        bad = await client.post("/v1/reservations", json={**RESERVE, "model": "no-such-model"})
        assert bad.status_code == 422
        found = samples((await client.get("/metrics")).text)
    assert (
        value(found, "budgetd_request_duration_seconds_count", route="reserve", outcome="ok") == 1
    )
    assert (
        value(found, "budgetd_request_duration_seconds_count", route="release", outcome="ok") == 1
    )
    assert (
        value(found, "budgetd_request_duration_seconds_count", route="reserve", outcome="invalid")
        == 1
    )
    assert value(found, "budgetd_decisions_total", outcome="granted") == 1
    assert value(found, "process_cpu_seconds_total") > 0


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name the service can export (families are listed before their first sample)."""
    write_policy(tmp_path / "policies", ACME)
    app = create_app(settings_for(tmp_path / "policies"), store=embedded_store())
    text = app.state.metrics.exposition().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if m := re.match(r"# TYPE (\S+) (\S+)", line):
            name, kind = m.groups()
            names.add(name)
            if kind == "counter":
                names.add(name.removesuffix("_total") + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names


_METRIC = re.compile(r"\b((?:budgetd|process)_[a-z_]+)\b")


def test_dashboard_loads_and_queries_only_exported_metrics(tmp_path: Path) -> None:
    dashboard: dict[str, Any] = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exported = exported_names(tmp_path)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(_METRIC.findall(expr))
        assert used, expr
        assert used <= exported, (expr, used - exported)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(_METRIC.findall(variables["job"]["definition"])) <= exported


def test_alert_rules_query_only_exported_metrics(tmp_path: Path) -> None:
    (rule,) = [o for o in objects(CASES["production"]) if o["kind"] == "PrometheusRule"]
    exported = exported_names(tmp_path)
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            used = set(_METRIC.findall(r["expr"]))
            assert used and used <= exported, (r["alert"], used - exported)


def test_the_chart_ships_the_same_dashboard() -> None:
    (config_map,) = [
        o
        for o in objects(CASES["production"])
        if o["kind"] == "ConfigMap" and "budgetd.json" in o["data"]
    ]
    assert json.loads(config_map["data"]["budgetd.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )
