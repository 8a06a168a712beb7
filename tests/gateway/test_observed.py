"""The gateway is observed like the service (production, issue 12): each Claude call through it
is in budgetd_request_duration_seconds{route="gateway"}, in the JSON access log with its request
id, and the gateway answers /metrics for Prometheus."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import MODEL, Setup


def test_a_call_through_the_gateway_is_measured_and_logged(gateway_setup: Setup) -> None:
    url = gateway_setup.gateway.url
    r = httpx.post(
        url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "x-api-key": gateway_setup.keys.app,
            "anthropic-version": "2023-06-01",
            "x-request-id": "gw-req-1",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "gw-req-1"
    metrics = httpx.get(url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    counts = {
        (s.labels.get("route"), s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
        if s.name == "budgetd_request_duration_seconds_count"
    }
    assert counts[("gateway", "ok")] >= 1
    lines = [json.loads(line) for line in gateway_setup.gateway.log.read_text().splitlines()]
    (access,) = [line for line in lines if line.get("request_id") == "gw-req-1"]
    assert access["route"] == "gateway" and access["status"] == 200
