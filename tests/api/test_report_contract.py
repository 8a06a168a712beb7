"""The reports, audit and policy plan routes through the one validation layer: strict queries
(integers are integers, days are days, unknown and repeated parameters refused), a strict plan
body, YAML that cannot expand without bound, and Redis down as a 503 problem."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.store.connect import embedded_store, redis_store
from budgetd.yaml_errors import MAX_ALIASED_NODES
from tests.api.conftest import Client, asgi_client, settings_for, write_keys, write_policy
from tests.api.test_validation import _problem
from tests.engine.conftest import ACME
from tests.servers import free_port

USAGE = "/v1/admin/reports/usage"
DAILY = "/v1/admin/reports/daily"
BUDGETS = "/v1/admin/reports/budgets"
AUDIT = "/v1/admin/audit"
PLAN = "/v1/admin/policy/plan"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Client]:
    """A client with an admin key of acme, on the embedded store."""
    keys = tmp_path / "keys.yaml"
    (key,) = write_keys(keys, ("acme", "admin", "ops"))
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    app = create_app(settings_for(directory, keys_file=keys), store=embedded_store())
    async with asgi_client(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        # Text conversion read these as whole numbers (top=1.0 was top 1): on every route.
        (f"{USAGE}?org=acme&top=1.0", "top", "whole number, got text '1.0'"),
        (f"{BUDGETS}?org=acme&top=2e1", "top", "whole number"),
        (f"{AUDIT}?org=acme&limit=1e2", "limit", "whole number"),
        ("/v1/admin/events?org=acme&limit=1e1", "limit", "whole number"),
        (
            "/v1/admin/reconcile/anthropic?org=acme&tolerance_micros=5.0",
            "tolerance_micros",
            "whole",
        ),
        # The audit clamped a limit out of range instead of saying so.
        (f"{AUDIT}?org=acme&limit=0", "limit", "at least 1"),
        (f"{AUDIT}?org=acme&limit=1001", "limit", "at most 1000"),
        (f"{BUDGETS}?org=acme&top=1001", "top", "at most 1000"),
        (f"{USAGE}?org=acme&top=10001", "top", "at most 10000"),
        # msgspec's dates reach 9999-12-31, where the report's month arithmetic overflowed (500).
        (f"{USAGE}?org=acme&since=9999-12-01&until=9999-12-31", "since", "to 2999-12-31"),
        (f"{DAILY}?org=acme&since=1969-12-31", "since", "from 1970-01-01"),
        (f"{DAILY}?org=acme&since=2027-02-29", "since", "YYYY-MM-DD"),
        (f"{DAILY}?org=acme&since=2026-11-31", "since", "YYYY-MM-DD"),
        (f"{DAILY}?org=acme&until=20261101", "until", "YYYY-MM-DD"),
        # Unknown and repeated parameters were ignored, or one of the values taken silently.
        (f"{USAGE}?org=acme&zzz=1", "zzz", "takes org, by, since, until, top, sort, format"),
        (f"{DAILY}?org=acme&top=3", "top", "takes org, since, until, format"),
        (f"{BUDGETS}?org=acme&org=acme", "org", "given twice"),
        (f"{AUDIT}?org=acme&org=globex", "org", "given twice"),
        # Names in words, and the allowed values listed.
        (f"{AUDIT}?org=bad%20org!", "org", "starting with a letter or digit"),
        (f"{USAGE}?org=acme&by=everyone", "by", "use one of model, user"),
        (f"{USAGE}?org=acme&sort=nope", "sort", "use one of cost_micros, calls"),
        (f"{BUDGETS}?org=acme&format=xml", "format", "use one of json, csv"),
        (USAGE, "org", "query parameter org is required"),
        # Relations between parameters.
        (f"{USAGE}?org=acme&since=2026-11-02&until=2026-11-01", "until", "after since"),
        (f"{DAILY}?org=acme&since=2025-01-01&until=2026-11-01", "since", "at most 400 days"),
    ],
)
async def test_report_queries_are_strict(admin: Client, query: str, field: str, words: str) -> None:
    method = admin.post if "reconcile" in query else admin.get
    detail = str(_problem(await method(query), 422, field)["detail"])
    assert words in detail
    assert "^" not in detail and "[0-9]" not in detail  # patterns in words, never a regex


@pytest.mark.parametrize("path", [USAGE, "/v1/budgets", "/v1/admin/events", "/v1/admin/ledger"])
async def test_the_first_wrong_parameter_written_is_named(admin: Client, path: str) -> None:
    # Litestar's multi_items() walks a set: which of two wrong parameters was named depended on
    # the process's string hashes. Both orders are asked, so one of them caught it every run.
    for first, second in (("org", "zzz"), ("zzz", "org")):
        r = await admin.get(f"{path}?{first}=bad%20name!&{second}=bad%20name!")
        assert _problem(r, 422, first)["field"] == first


async def test_report_days_are_days(admin: Client) -> None:
    leap = await admin.get(f"{DAILY}?org=acme&since=2028-02-29&until=2028-03-02")
    assert leap.status_code == 200, leap.text
    assert [leap.json()["since"], leap.json()["until"]] == ["2028-02-29", "2028-03-02"]
    csv = await admin.get(f"{BUDGETS}?org=acme&top=1&format=csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")


async def test_the_key_comes_before_the_query(admin: Client) -> None:
    del admin.headers["Authorization"]
    for path in (f"{USAGE}?top=abc", f"{DAILY}?zzz=1", f"{BUDGETS}", f"{AUDIT}?limit=-1"):
        assert (await admin.get(path)).status_code == 401, path
    assert (await admin.post(PLAN, content=b"{")).status_code == 401


async def test_an_app_key_learns_nothing_of_the_plan_body(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    (app_key,) = write_keys(keys, ("acme", "app"))
    write_policy(tmp_path / "policies", ACME)
    app = create_app(settings_for(tmp_path / "policies", keys_file=keys), store=embedded_store())
    async with asgi_client(app) as client:
        r = await client.post(PLAN, content=b"{", headers={"Authorization": f"Bearer {app_key}"})
        _problem(r, 403, None)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        # An empty body said "'data'" (Litestar's parameter name).
        (b"", None, "the request body is empty: send a JSON object with files"),
        (b"{}", "files", "field files is required"),
        (b'{"files": {}}', "files", "at least 1 entry"),
        (b'{"files": {"a.yaml": "org: acme"}, "dry": true}', "dry", "takes files"),
        (b'{"files": {"a.yaml": 5}}', "files.a.yaml", "expected text"),
        (b'{"files": {"../x.yaml": ""}}', "files", "key '../x.yaml' has the wrong format"),
        (b'{"files": {"x.json": ""}}', "files", "ending in .yaml or .yml"),
        (b'{"files": {"pricing.yaml": ""}}', "files", "the live table"),
        (b'{"files": {"a.yaml": "org: acme\\nbudgets: 3\\n"}}', "files", "a.yaml:2"),
        (b'{"files": {"a.yaml": "a: &a [*a]"}}', "files", "refers to a node that contains it"),
    ],
)
async def test_the_plan_body_is_strict(
    admin: Client, body: bytes, field: str | None, words: str
) -> None:
    r = await admin.post(PLAN, content=body)
    assert words in str(_problem(r, 422, field)["detail"])


async def test_the_plan_body_is_bounded(admin: Client) -> None:
    assert _problem(await admin.post(PLAN, content=b'{"files":'), 400, None)
    big = b'{"files": {"a.yaml": "' + b"#" * (64 * 1024) + b'"}}'
    _problem(await admin.post(PLAN, content=big), 413, None)
    many = {"files": {f"f{i}.yaml": "" for i in range(101)}}
    assert "at most 100" in str(_problem(await admin.post(PLAN, json=many), 422, "files")["detail"])


async def test_yaml_aliases_cannot_expand_without_bound(admin: Client) -> None:
    # 400 bytes that stand for 10^8 nodes: the duplicate-key check and msgspec walked them all,
    # holding the service (one event loop) for minutes on an org admin's request.
    lines = ["org: acme", "timezone: UTC", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    lines.append("budgets: *a7")
    r = await admin.post(PLAN, json={"files": {"acme.yaml": "\n".join(lines)}})
    detail = str(_problem(r, 422, "files")["detail"])
    assert detail.startswith("acme.yaml:")
    assert f"aliases repeat more than {MAX_ALIASED_NODES:,} nodes" in detail
    # Anchors that share a few values stay fine.
    shared = ACME + "\nx-defaults: &d {limit_usd: 1}\nx-more: [*d, *d]\n"
    assert "alias" not in (await admin.post(PLAN, json={"files": {"a.yaml": shared}})).text
    # The bound's walk is iterative: a deep document is judged by the loader as before.
    deep = "a: " + "[" * 900 + "]" * 900
    r = await admin.post(PLAN, json={"files": {"a.yaml": deep}})
    assert "unknown key 'a'" in str(_problem(r, 422, "files")["detail"])


async def test_redis_down_is_a_503_problem_on_every_report_route(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    (key,) = write_keys(keys, ("acme", "admin"))
    write_policy(tmp_path / "policies", ACME)
    dead = redis_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    app = create_app(settings_for(tmp_path / "policies", keys_file=keys), store=dead)
    auth = {"Authorization": f"Bearer {key}"}
    async with asgi_client(app) as client:
        calls = [
            client.get(f"{USAGE}?org=acme", headers=auth),
            client.get(f"{DAILY}?org=acme", headers=auth),
            client.get(f"{BUDGETS}?org=acme", headers=auth),
            client.get(f"{AUDIT}?org=acme", headers=auth),
            client.get("/v1/admin/ledger?org=acme", headers=auth),
            client.post(PLAN, json={"files": {"a.yaml": ACME}}, headers=auth),
        ]
        for call in calls:
            r = await call
            body = _problem(r, 503, None)
            assert body["type"] == "https://budgetd.dev/problems/store-unavailable"
            assert r.headers["retry-after"] == "1"
    await dead.close()


async def test_a_revoked_admin_key_stops_reading_reports_within_the_poll(tmp_path: Path) -> None:
    # README, "Keys are live configuration", for the admin routes too.
    keys = tmp_path / "keys.yaml"
    (key,) = write_keys(keys, ("acme", "admin", "ops"))
    write_policy(tmp_path / "policies", ACME)
    settings = settings_for(tmp_path / "policies", keys_file=keys, policy_poll_s=0.05)
    app = create_app(settings, store=embedded_store())
    auth = {"Authorization": f"Bearer {key}"}
    routes = [f"{USAGE}?org=acme", f"{DAILY}?org=acme", f"{BUDGETS}?org=acme", f"{AUDIT}?org=acme"]
    async with asgi_client(app) as client:
        for route in routes:
            assert (await client.get(route, headers=auth)).status_code == 200, route
        assert (await client.post(PLAN, json={"files": {"a.yaml": ACME}}, headers=auth)).is_success
        keys.write_text("keys: []\n")
        deadline = time.monotonic() + 10
        while (await client.get(routes[0], headers=auth)).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still reads reports"
            await asyncio.sleep(0.05)
        for route in routes:
            assert (await client.get(route, headers=auth)).status_code == 401, route
        assert (await client.post(PLAN, json={"files": {}}, headers=auth)).status_code == 401
