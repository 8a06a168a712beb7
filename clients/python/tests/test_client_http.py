"""The async client on a real budgetd (embedded store): results, errors, retries, fail modes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from budgetd_client import (
    AsyncBudgetdClient,
    BudgetExceeded,
    Conflict,
    Grant,
    NotFound,
    ServiceUnavailable,
    UnknownModel,
)

from conftest import COST, HAIKU, USAGE, Recorder


async def user_day(client: AsyncBudgetdClient, user: str = "alice") -> tuple[int, int]:
    state = (await client.budgets(org="acme", user=user)).budget("user-day")
    assert state.spent_micros is not None and state.held_micros is not None
    return state.spent_micros, state.held_micros


async def test_reserve_commit_moves_the_budget_by_the_exact_cost(
    budgetd: AsyncBudgetdClient,
) -> None:
    grant = await budgetd.reserve(
        org="acme", user="alice", model=HAIKU, input_tokens=8000, max_tokens=300
    )
    assert grant.held_micros > COST and not grant.degraded
    assert await user_day(budgetd) == (0, grant.held_micros)
    result = await budgetd.commit(grant.reservation_id, USAGE, org="acme")
    assert result.cost_micros == COST
    assert result.released_micros == grant.held_micros - COST
    assert await user_day(budgetd) == (COST, 0)
    priced = await budgetd.cost(model=HAIKU, usage=USAGE)
    assert priced.cost_micros == COST


async def test_a_grant_lists_the_scopes_only_when_asked(budgetd: AsyncBudgetdClient) -> None:
    short = await budgetd.reserve(
        org="acme", user="alice", model=HAIKU, input_tokens=10, max_tokens=10
    )
    assert short.scopes == [] and short.held_micros > 0
    full = await budgetd.reserve(
        org="acme", user="alice", model=HAIKU, input_tokens=10, max_tokens=10, detail=True
    )
    user = next(s for s in full.scopes if s.name == "user-day")
    assert (user.entity, user.held_micros) == ("alice", short.held_micros + full.held_micros)
    assert user.period_start is not None and user.period_end is not None


def test_an_answer_v1_grant_still_decodes() -> None:
    # A service before answer v2 always listed the scopes: the client reads both shapes.
    v1 = {
        "reservation_id": "r1",
        "held_micros": 5,
        "expires_at": datetime(2026, 11, 30, tzinfo=UTC).isoformat(),
        "scopes": [
            {
                "kind": "budget",
                "name": "org-day",
                "scope": "org",
                "entity": "acme",
                "source": "org",
                "limit": 10,
                "remaining": 5,
            }
        ],
        "warnings": [],
        "replayed": False,
        "degraded": False,
        "durability": "fast",
    }
    grant = msgspec.json.decode(msgspec.json.encode(v1), type=Grant)
    assert [s.name for s in grant.scopes] == ["org-day"]
    v2 = {k: v for k, v in v1.items() if k != "scopes"}
    assert msgspec.json.decode(msgspec.json.encode(v2), type=Grant).scopes == []


async def test_denial_carries_scopes_and_retry_after(budgetd: AsyncBudgetdClient) -> None:
    # Spend most of alice's $1 day, then ask for more than what is left but less than $1.
    await budgetd.record_usage(
        org="acme", user="alice", model=HAIKU, usage={"output_tokens": 150_000}
    )
    with pytest.raises(BudgetExceeded) as denied:
        await budgetd.reserve(
            org="acme", user="alice", model=HAIKU, input_tokens=0, max_tokens=100_000
        )
    (scope,) = denied.value.scopes
    assert (scope.name, scope.scope, scope.entity) == ("user-day", "user", "alice")
    assert scope.spent_micros == 750_000
    # The day ends at midnight UTC; the frozen clock says 15:00.
    assert denied.value.retry_after == 9 * 3600


async def test_release_conflict_not_found_unknown_model(budgetd: AsyncBudgetdClient) -> None:
    grant = await budgetd.reserve(
        org="acme",
        user="alice",
        model=HAIKU,
        input_tokens=10,
        max_tokens=10,
        reservation_id="job-1",
    )
    assert grant.reservation_id == "job-1"
    with pytest.raises(Conflict):
        await budgetd.reserve(
            org="acme",
            user="alice",
            model=HAIKU,
            input_tokens=11,
            max_tokens=10,
            reservation_id="job-1",
        )
    released = await budgetd.release("job-1", org="acme")
    assert released.released_micros == grant.held_micros
    with pytest.raises(Conflict) as conflict:
        await budgetd.commit("job-1", USAGE, org="acme")
    assert conflict.value.state == "released"
    with pytest.raises(NotFound):
        await budgetd.release("nope", org="acme")
    with pytest.raises(UnknownModel):
        await budgetd.reserve(org="acme", model="gpt-0", input_tokens=1, max_tokens=1)
    assert await user_day(budgetd) == (0, 0)


async def test_retries_after_a_dropped_connection_do_not_double_charge(
    budgetd: AsyncBudgetdClient, recorder: Recorder
) -> None:
    # budgetd handles each first attempt, but its answer is lost on the way back.
    recorder.drop_after = {"/v1/reservations": 1, "/commit": 1}
    grant = await budgetd.reserve(
        org="acme", user="alice", model=HAIKU, input_tokens=8000, max_tokens=300
    )
    assert grant.replayed  # the second attempt was answered as a replay of the first
    first, second = recorder.bodies("/v1/reservations")
    assert first == second and first["reservation_id"] == grant.reservation_id
    result = await budgetd.commit(grant.reservation_id, USAGE, org="acme")
    assert result.replayed and result.cost_micros == COST
    assert len(recorder.bodies("/commit")) == 2
    assert await user_day(budgetd) == (COST, 0)
    assert budgetd.stats.retries == 2


async def test_fail_closed_when_budgetd_is_unreachable(recorder: Recorder) -> None:
    recorder.down = True
    client = AsyncBudgetdClient("http://budgetd", transport=recorder, retries=1, backoff_s=0.001)
    with pytest.raises(ServiceUnavailable) as down:
        await client.reserve(org="acme", model=HAIKU, input_tokens=1, max_tokens=1)
    assert down.value.unreachable
    assert (client.stats.failed_closed, client.stats.failed_open, client.stats.unreachable) == (
        1,
        0,
        1,
    )
    assert client.stats.requests == 2


async def test_fail_open_grants_locally_and_records_the_usage_later(recorder: Recorder) -> None:
    client = AsyncBudgetdClient("http://budgetd", transport=recorder, fail_mode="open", retries=0)
    recorder.down = True
    grant = await client.reserve(
        org="acme", user="alice", model=HAIKU, input_tokens=1, max_tokens=300, session="run-1"
    )
    assert grant.degraded and grant.held_micros == 0
    assert client.stats.failed_open == 1
    recorder.down = False  # budgetd is back before the call finished
    result = await client.commit(grant.reservation_id, USAGE, org="acme")
    assert result.cost_micros == COST and result.overrun
    assert await user_day(client) == (COST, 0)
    assert recorder.bodies("/v1/usage")[-1]["session"] == "run-1"  # who the call was for
    # Recorded under the reservation id: a repeat is a replay, never a second charge.
    again = await client.record_usage(
        org="acme",
        user="alice",
        model=HAIKU,
        usage=USAGE,
        record_id=grant.reservation_id,
        session="run-1",
    )
    assert again.replayed
    assert await user_day(client) == (COST, 0)
    assert client.stats.degraded_commits == 1


async def test_fail_open_commit_while_still_down_is_logged_not_raised(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    client = AsyncBudgetdClient("http://budgetd", transport=recorder, fail_mode="open", retries=0)
    recorder.down = True
    grant = await client.reserve(org="acme", model=HAIKU, input_tokens=1, max_tokens=300)
    result = await client.commit(grant.reservation_id, USAGE, org="acme")
    assert result.state == "unrecorded"
    assert client.stats.unrecorded == 1
    assert "NOT recorded" in caplog.text and '"output_tokens":200' in caplog.text
    other = await client.reserve(org="acme", model=HAIKU, input_tokens=1, max_tokens=300)
    assert (await client.release(other.reservation_id, org="acme")).state == "released"


async def test_budgetd_store_down_answer_is_not_overridden_by_fail_open() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            503,
            headers={"content-type": "application/problem+json"},
            json={
                "type": "https://budgetd.dev/problems/store-unavailable",
                "title": "Store unavailable",
                "status": 503,
                "detail": "budget store unreachable; fail-closed limits apply: org-month",
            },
        )

    client = AsyncBudgetdClient(
        "http://budgetd", transport=httpx.MockTransport(handler), fail_mode="open", backoff_s=0.001
    )
    with pytest.raises(ServiceUnavailable) as down:
        await client.reserve(org="acme", model=HAIKU, input_tokens=1, max_tokens=1)
    assert not down.value.unreachable
    assert "org-month" in down.value.detail
    assert client.stats.failed_open == 0 and client.stats.requests == 3
