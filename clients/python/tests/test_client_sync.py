"""The sync client and guard against budgetd served over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from budgetd_client import (
    Budget,
    BudgetdClient,
    BudgetExceeded,
    InvalidRequest,
    ServiceUnavailable,
    guard,
)

from conftest import COST, HAIKU, USAGE, FakeMessagesAPI, cost_with_output

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(budgetd_url: str) -> Iterator[BudgetdClient]:
    with BudgetdClient(budgetd_url, org="acme") as c:
        yield c


def user_day(client: BudgetdClient, user: str = "alice") -> tuple[int | None, int | None]:
    state = client.budgets(user=user).budget("user-day")
    return state.spent_micros, state.held_micros


def test_sync_guard_create_stream_and_cut_stream(
    client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    claude = guard(fake_api.sync_client(), budgetd=client, org="acme", user="alice")
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert user_day(client) == (COST, 0)

    with claude.messages.stream(model=HAIKU, max_tokens=300, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Hello there!"
        assert stream.get_final_message().usage.output_tokens == 200
    assert user_day(client) == (2 * COST, 0)

    fake_api.cut = 8  # after the message_delta with output 120
    with pytest.raises(httpx2.ReadError):
        for _ in claude.messages.create(
            model=HAIKU, max_tokens=300, messages=MESSAGES, stream=True
        ):
            pass
    assert user_day(client) == (2 * COST + cost_with_output(120), 0)


def test_sync_denied_call_never_reaches_the_api(
    client: BudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    claude = guard(fake_api.sync_client(), budgetd=client, org="acme", user="alice")
    with (
        pytest.raises(BudgetExceeded),
        claude.messages.stream(model=HAIKU, max_tokens=1_000_000, messages=MESSAGES),
    ):
        pass
    assert fake_api.calls == []


def test_reservation_context_manager(client: BudgetdClient) -> None:
    budget = Budget(client, org="acme", user="alice")
    with budget.reservation(model=HAIKU, input_tokens=8000, max_tokens=300) as r:
        assert user_day(client) == (0, r.grant.held_micros)
        r.commit(USAGE, model=HAIKU)
    assert user_day(client) == (COST, 0)

    with (
        pytest.raises(RuntimeError),
        budget.reservation(model=HAIKU, input_tokens=8000, max_tokens=300),
    ):
        raise RuntimeError("the call failed")
    assert user_day(client) == (COST, 0)

    @budget.metered(model=HAIKU, input_tokens=8000, max_tokens=300)
    def call() -> dict[str, object]:
        return {"model": HAIKU, "usage": USAGE}

    call()
    assert user_day(client) == (2 * COST, 0)


def test_sync_fail_modes_with_nobody_listening(dead_url: str, fake_api: FakeMessagesAPI) -> None:
    closed = BudgetdClient(dead_url, retries=1, backoff_s=0.001)
    claude = guard(fake_api.sync_client(), budgetd=closed, org="acme")
    with pytest.raises(ServiceUnavailable):
        claude.messages.create(model=HAIKU, max_tokens=10, messages=MESSAGES)
    assert fake_api.calls == [] and closed.stats.failed_closed == 1

    opened = BudgetdClient(dead_url, retries=1, backoff_s=0.001, fail_mode="open")
    claude = guard(fake_api.sync_client(), budgetd=opened, org="acme")
    message = claude.messages.create(model=HAIKU, max_tokens=10, messages=MESSAGES)
    assert message.usage.output_tokens == 200
    assert len(fake_api.calls) == 1
    assert (opened.stats.failed_open, opened.stats.unrecorded) == (1, 1)


def test_admin_adjustment_moves_one_budget_once(client: BudgetdClient) -> None:
    first = client.adjust(
        budget="user-day", entity="carol", amount_micros=1_500, reason="outside charge"
    )
    assert (first.spent_micros, first.replayed) == (1_500, False)
    again = client.adjust(
        budget="user-day",
        entity="carol",
        amount_micros=1_500,
        reason="outside charge",
        adjustment_id=first.adjustment_id,
    )
    assert again.replayed and again.ledger_id == first.ledger_id
    assert user_day(client, "carol") == (1_500, 0)
    with pytest.raises(InvalidRequest) as refused:
        client.adjust(budget="user-day", entity="carol", amount_micros=-2_000, reason="refund")
    assert refused.value.field == "amount_micros"
    assert user_day(client, "carol") == (1_500, 0)
