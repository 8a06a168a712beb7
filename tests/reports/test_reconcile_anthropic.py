"""Reconciliation with Anthropic's bill: the shipped samples (Admin API JSON, Console CSV)
parse to the same money, and a bill compared with a real ledger on a real Redis sorts every
day and model into matched, differs, budgetd-only and Anthropic-only."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from litestar import Litestar

from budgetd.api.reports import RECONCILE_MAX_BODY_BYTES
from budgetd.app import create_app
from budgetd.cli import main
from budgetd.contract import UsageRequest
from budgetd.engine import Engine
from budgetd.pricing_table import load_pricing
from budgetd.reports import anthropic_bill
from budgetd.store.connect import redis_store
from budgetd.usage import Usage
from tests.api.conftest import asgi_client, settings_for, write_keys
from tests.reports.conftest import Call, traffic

DATA = Path(__file__).parent / "data"
SHIPPED = load_pricing(Path(__file__).resolve().parents[2] / "policies" / "pricing.yaml")


def totals(rows: list[anthropic_bill.BillRow]) -> dict[tuple[date, str], int]:
    out: dict[tuple[date, str], int] = defaultdict(int)
    for r in rows:
        out[(r.day, anthropic_bill._canonical(SHIPPED, r.model))] += r.micros
    return dict(out)


def test_the_samples_parse_to_the_same_money() -> None:
    api = anthropic_bill.parse((DATA / "cost_report.json").read_text())
    console = anthropic_bill.parse((DATA / "cost_report.csv").read_text())
    assert totals(api) == totals(console)
    day = date(2026, 11, 3)
    # "1843.2150" + "4120.5000" + "96.3312" + "312.0000" cents of Sonnet 4.5 (a dated id).
    assert totals(api)[(day, "claude-sonnet-4-5")] == 63_720_462
    assert totals(api)[(day, "(non-token)")] == 1_200_000
    assert totals(api)[(date(2026, 11, 5), "claude-opus-4-5")] == 15_005_000  # "1500.5" cents
    assert {r.workspace for r in api} == {"wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ", None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"object": "error"}', "no 'data' list"),
        ('{"data": [{"starting_at": "yesterday", "results": []}]}', "not RFC 3339"),
        (
            '{"data": [{"starting_at": "2026-11-03T00:00:00Z", "results": [{"amount": "1,0"}]}]}',
            "is not a decimal number",
        ),
        ("day,model,spend\n2026-11-03,x,1\n", "no 'cost_usd' column"),
        ("usage_date_utc,cost_usd\nnot-a-day,1\n", "line 2: usage_date_utc 'not-a-day'"),
    ],
)
def test_bad_bills_say_where(text: str, message: str) -> None:
    with pytest.raises(anthropic_bill.BillError, match=message):
        anthropic_bill.parse(text)


def bill_for(calls: list[Call], day: date) -> dict[str, object]:
    """What Anthropic would say for these calls: Haiku to the cent's fraction (matched), Sonnet
    5 % under (differs), and a web search budgetd never saw (Anthropic-only)."""
    haiku = sum(c.cost for c in calls if c.model == "claude-haiku-test")
    sonnet = sum(c.cost for c in calls if c.model == "claude-sonnet-test")
    start = f"{day}T00:00:00Z"

    def cents(micros: float) -> str:
        return f"{micros / 10_000:.4f}"

    return {
        "data": [
            {
                "starting_at": start,
                "ending_at": f"{day}T23:59:59Z",
                "results": [
                    {
                        "currency": "USD",
                        "amount": cents(haiku),
                        "model": "claude-haiku-test",
                        "workspace_id": None,
                        "cost_type": "tokens",
                    },
                    {
                        "currency": "USD",
                        "amount": cents(sonnet * 0.95),
                        "model": "claude-sonnet-test",
                        "workspace_id": None,
                        "cost_type": "tokens",
                    },
                    {
                        "currency": "USD",
                        "amount": "250",
                        "model": None,
                        "workspace_id": None,
                        "cost_type": "web_search",
                    },
                ],
            }
        ],
        "has_more": False,
        "next_page": None,
    }


async def test_reconcile_against_the_ledger(report_engine: Engine) -> None:
    calls = await traffic(report_engine)
    await report_engine.record(
        UsageRequest(
            org="acme",
            model="claude-opus-test",
            usage=Usage(input_tokens=10, output_tokens=10),
            user="dave",
            record_id="opus-1",
        )
    )
    day = datetime.now(UTC).date()
    policy = report_engine.policy("acme")
    result = await anthropic_bill.reconcile(
        report_engine.store,
        "acme",
        policy.pricing,
        json.dumps(bill_for(calls, day)),  # type: ignore[arg-type]
        tolerance_micros=0,  # the test's calls cost cents: judge by percent only
    )
    status = {line.model: line.status for line in result.lines}
    assert status == {
        "claude-haiku-test": "matched",
        "claude-sonnet-test": "differs",
        "claude-opus-test": "budgetd_only",
        "(non-token)": "anthropic_only",
    }
    sonnet = next(line for line in result.lines if line.model == "claude-sonnet-test")
    assert sonnet.difference_pct == pytest.approx(100 / 95 * 100 - 100, abs=0.01)
    assert result.counts == {"matched": 1, "differs": 1, "budgetd_only": 1, "anthropic_only": 1}
    assert not result.ok
    # A wider tolerance matches Sonnet's 5 %; the others stay what they are.
    wide = await anthropic_bill.reconcile(
        report_engine.store,
        "acme",
        policy.pricing,
        json.dumps(bill_for(calls, day)),  # type: ignore[arg-type]
        tolerance_pct=6,
        tolerance_micros=0,
    )
    assert {line.model: line.status for line in wide.lines}["claude-sonnet-test"] == "matched"


def test_cli_and_http(
    seeded: tuple[Path, list[Call]],
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, calls = seeded
    day = datetime.now(UTC).date()
    bill = tmp_path / "bill.json"
    bill.write_text(json.dumps(bill_for(calls, day)))
    monkeypatch.setenv("BUDGETD_REDIS_URL", redis_url)
    monkeypatch.setenv("BUDGETD_POLICY_DIR", str(live))
    exact = ["--tolerance-usd", "0"]
    assert main(["reconcile", "anthropic", "--org", "acme", str(bill), *exact]) == 2
    out = capsys.readouterr().out
    assert "differs" in out and "anthropic only" in out
    assert (
        main(
            [
                "reconcile",
                "anthropic",
                "--org",
                "acme",
                str(bill),
                "--tolerance-pct",
                "6",
                "--format",
                "json",
            ]
        )
        == 2
    )  # the web search is still Anthropic-only
    assert json.loads(capsys.readouterr().out)["counts"]["matched"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("when,what\n1,2\n")
    with pytest.raises(SystemExit, match="no 'usage_date_utc' column"):
        main(["reconcile", "anthropic", "--org", "acme", str(bad)])


@pytest.fixture
async def admin_app(
    seeded: tuple[Path, list[Call]], tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[Litestar, str]]:
    """The service on the seeded Redis, and an admin key of ACME."""
    live, _ = seeded
    keys_file = tmp_path / "keys.yaml"
    [admin] = write_keys(keys_file, ("acme", "admin", "finance"))
    store = redis_store(redis_url, timeout_s=5.0)
    yield create_app(settings_for(live, keys_file=keys_file), store=store), admin
    await store.close()


async def test_http(seeded: tuple[Path, list[Call]], admin_app: tuple[Litestar, str]) -> None:
    _, calls = seeded
    app, admin = admin_app
    headers = {"Authorization": f"Bearer {admin}", "content-type": "application/json"}
    day = datetime.now(UTC).date()
    async with asgi_client(app) as client:
        got = await client.post(
            "/v1/admin/reconcile/anthropic?org=acme&tolerance_micros=0",
            content=json.dumps(bill_for(calls, day)),
            headers=headers,
        )
        assert got.status_code == 200, got.text
        assert got.json()["counts"]["differs"] == 1
        bad = await client.post(
            "/v1/admin/reconcile/anthropic?org=acme", content="{}", headers=headers
        )
        assert bad.status_code == 422 and bad.json()["field"] == "body"


def month_of_console_csv(days: int = 30) -> str:
    """A Console cost CSV as a month of a mid-sized org comes out: a row per day, model,
    workspace and token type (~2,700 rows, ~250 KB: past the 64 KiB of the hot routes)."""
    kinds = [
        ("Input Tokens", "uncached_input_tokens"),
        ("Output Tokens", "output_tokens"),
        ("Cache Read", "cache_read_input_tokens"),
        ("Cache Write (5m)", "cache_creation.ephemeral_5m_input_tokens"),
        ("Cache Write (1h)", "cache_creation.ephemeral_1h_input_tokens"),
    ]
    lines = ["usage_date_utc,model,workspace,description,token_type,cost_usd"]
    for day in range(1, days + 1):
        for model in ("claude-haiku-test", "claude-sonnet-test", "claude-opus-test"):
            for workspace in ("Production", "Staging", "Research", "Evals", "Batch", "Sandbox"):
                for description, kind in kinds:
                    lines.append(
                        f"2026-11-{day:02d},{model},{workspace},{description},{kind},12.345678"
                    )
    return "\n".join(lines) + "\n"


async def test_http_takes_a_month_of_console_csv(admin_app: tuple[Litestar, str]) -> None:
    """A month's bill is far past the 64 KiB the hot routes take; this route takes up to
    ``RECONCILE_MAX_BODY_BYTES`` (decisions: "Bounds"), and past that says so as a problem."""
    app, admin = admin_app
    headers = {"Authorization": f"Bearer {admin}", "content-type": "text/csv"}
    bill = month_of_console_csv()
    assert len(bill) > 3 * 64 * 1024
    async with asgi_client(app) as client:
        got = await client.post(
            "/v1/admin/reconcile/anthropic?org=acme", content=bill, headers=headers
        )
        assert got.status_code == 200, got.text
        billed = [line for line in got.json()["lines"] if line["anthropic_micros"]]
        # 30 days x 3 models, each 6 workspaces x 5 kinds x $12.345678.
        assert len(billed) == 90
        assert {line["anthropic_micros"] for line in billed} == {30 * 12_345_678}
        too_big = await client.post(
            "/v1/admin/reconcile/anthropic?org=acme",
            content=b"x" * (RECONCILE_MAX_BODY_BYTES + 1),
            headers=headers,
        )
        assert too_big.status_code == 413, too_big.text
        assert too_big.headers["content-type"].startswith("application/problem+json")
        problem = too_big.json()
        assert problem["type"] == "https://budgetd.dev/problems/payload-too-large"
        assert str(RECONCILE_MAX_BODY_BYTES) in problem["detail"]
