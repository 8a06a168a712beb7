"""Every way the Anthropic SDK reaches the Messages API is budgeted (issue 15's bypasses).

Each test spends through one path of the real ``anthropic`` SDK (a guarded client over a fake
Messages API) against a real budgetd served over loopback HTTP, and checks the budget moved
by exactly the fake's usage priced by the table. Before the guard sat at the HTTP seam, each of
these spent without the budget moving."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx2
import pytest
from anthropic import beta_tool
from budgetd_client import BudgetdClient, BudgetExceeded, guard, settle_batch
from budgetd_client.core import plan_call

from conftest import COST, HAIKU, FakeMessagesAPI, cost_with_output

MESSAGES = [{"role": "user", "content": "Say hello."}]
BATCH_COST = COST // 2  # the batch price: 50 % off every token


@pytest.fixture
def client(budgetd_url: str) -> Iterator[BudgetdClient]:
    with BudgetdClient(budgetd_url, org="acme") as c:
        yield c


@pytest.fixture
def claude(fake_api: FakeMessagesAPI, client: BudgetdClient) -> anthropic.Anthropic:
    return guard(fake_api.sync_client(), budgetd=client, org="acme", user="alice")


def user_day(client: BudgetdClient, user: str = "alice") -> tuple[int | None, int | None]:
    state = client.budgets(user=user).budget("user-day")
    return state.spent_micros, state.held_micros


def test_guard_returns_a_real_anthropic_client(claude: anthropic.Anthropic) -> None:
    assert isinstance(claude, anthropic.Anthropic)
    assert isinstance(claude.with_options(timeout=30), anthropic.Anthropic)


def test_with_options_is_budgeted(claude: anthropic.Anthropic, client: BudgetdClient) -> None:
    claude.with_options(timeout=30).messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert user_day(client) == (COST, 0)


def test_beta_messages_create_is_budgeted(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    claude.beta.messages.create(
        model=HAIKU, max_tokens=300, messages=MESSAGES, betas=["context-1m-2025-08-07"]
    )
    assert fake_api.paths[0].startswith("POST /v1/messages")
    assert fake_api.headers[0]["anthropic-beta"] == "context-1m-2025-08-07"
    assert user_day(client) == (COST, 0)


def test_beta_tool_runner_is_budgeted_call_by_call(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    @beta_tool
    def double(x: int) -> str:
        """Double a number."""
        return str(2 * x)

    fake_api.tool_use = True
    runner = claude.beta.messages.tool_runner(
        model=HAIKU, max_tokens=300, tools=[double], messages=MESSAGES
    )
    replies = list(runner)
    assert [r.stop_reason for r in replies] == ["tool_use", "end_turn"]
    assert user_day(client) == (2 * COST, 0)


def test_raw_and_streaming_responses_are_budgeted(
    claude: anthropic.Anthropic, client: BudgetdClient
) -> None:
    raw = claude.messages.with_raw_response.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert raw.parse().usage.output_tokens == 200
    assert user_day(client) == (COST, 0)
    with claude.messages.with_streaming_response.create(
        model=HAIKU, max_tokens=300, messages=MESSAGES
    ) as response:
        assert response.parse().usage.output_tokens == 200
    assert user_day(client) == (2 * COST, 0)


def test_messages_stream_is_budgeted(claude: anthropic.Anthropic, client: BudgetdClient) -> None:
    with claude.messages.stream(model=HAIKU, max_tokens=300, messages=MESSAGES) as stream:
        assert stream.get_final_text() == "Hello there!"
    assert user_day(client) == (COST, 0)


def test_a_stream_broken_midway_commits_what_was_reported_and_releases_the_rest(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    fake_api.cut = 8  # after the message_delta with output 120, before the one with 200
    with (
        pytest.raises(httpx2.ReadError),
        claude.messages.stream(model=HAIKU, max_tokens=300, messages=MESSAGES) as stream,
    ):
        for _ in stream:
            pass
    assert user_day(client) == (cost_with_output(120), 0)


def test_denial_is_a_rate_limit_error_naming_the_scope(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    # 1,000,000 output tokens at $5/MTok = $5 > alice's $1 a day.
    with pytest.raises(anthropic.RateLimitError) as denied:
        claude.messages.create(model=HAIKU, max_tokens=1_000_000, messages=MESSAGES, timeout=60)
    error = denied.value
    assert fake_api.calls == []
    assert error.status_code == 429 and error.type == "rate_limit_error"
    assert "budgetd: budget exceeded: user-day (user alice)" in error.message
    assert isinstance(error, BudgetExceeded)
    assert [s.name for s in error.scopes] == ["user-day"]
    assert error.response.headers["x-should-retry"] == "false"
    assert user_day(client) == (0, 0)


def batch_requests(*custom_ids: str) -> list[dict[str, object]]:
    return [
        {"custom_id": c, "params": {"model": HAIKU, "max_tokens": 300, "messages": MESSAGES}}
        for c in custom_ids
    ]


def test_a_batch_holds_at_submit_and_charges_each_result_at_the_batch_price(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    batch = claude.messages.batches.create(requests=batch_requests("a", "b", "c"))  # type: ignore[arg-type]
    (one,) = plan_call(
        "POST", "/v1/messages/batches", [], json.dumps({"requests": batch_requests("a")}).encode()
    ).reserves
    worst = client.reserve(**{**one.fields(), "user": "alice"}, org="acme")
    client.release(worst.reservation_id)
    assert one.batch and user_day(client) == (0, 3 * worst.held_micros)
    fake_api.batch_results["c"] = "errored"
    settled = settle_batch(claude, batch.id, poll_s=0)
    assert settled.counts == {"succeeded": 2, "errored": 1}
    assert user_day(client) == (2 * BATCH_COST, 0)
    # Reading the results again charges nothing more.
    assert len(list(claude.messages.batches.results(batch.id))) == 3
    assert user_day(client) == (2 * BATCH_COST, 0)


def test_a_canceled_batch_releases_what_its_requests_held(
    claude: anthropic.Anthropic, client: BudgetdClient
) -> None:
    batch = claude.beta.messages.batches.create(requests=batch_requests("x", "y"))  # type: ignore[arg-type]
    assert user_day(client)[1]
    claude.beta.messages.batches.cancel(batch.id)
    settled = settle_batch(claude, batch.id, poll_s=0)
    assert settled.counts == {"canceled": 2}
    assert user_day(client) == (0, 0)


def test_a_denied_batch_holds_nothing_and_is_not_sent(
    claude: anthropic.Anthropic, client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    many = [
        {
            "custom_id": f"r{i}",
            "params": {"model": HAIKU, "max_tokens": 100_000, "messages": MESSAGES},
        }
        for i in range(10)
    ]  # 10 × 100,000 output tokens at $2.50/MTok (batch) = $2.50 > $1
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.batches.create(requests=many)  # type: ignore[arg-type]
    assert fake_api.batches == {}
    assert user_day(client) == (0, 0)


def test_an_unreadable_budgeted_request_is_refused_not_sent(
    claude: anthropic.Anthropic, fake_api: FakeMessagesAPI
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.post(
            "/v1/messages",
            cast_to=httpx2.Response,
            body={"messages": MESSAGES, "max_tokens": 10},
        )
    assert "budgetd: model" in refused.value.message
    assert fake_api.calls == []
