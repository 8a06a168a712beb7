"""The guard on ``anthropic.AsyncAnthropic`` against a real budgetd (embedded store)."""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import pytest
from budgetd_client import AsyncBudgetdClient, BudgetExceeded, asettle_batch, guard, scope

from conftest import COST, HAIKU, FakeMessagesAPI, Recorder, cost_with_output

MESSAGES = [{"role": "user", "content": "Say hello."}]


async def spent(client: AsyncBudgetdClient, user: str = "alice") -> tuple[int, int]:
    """(spent, held) micros of the user's daily budget."""
    state = (await client.budgets(org="acme", user=user)).budget("user-day")
    assert state.spent_micros is not None and state.held_micros is not None
    return state.spent_micros, state.held_micros


@pytest.fixture
def claude(fake_api: FakeMessagesAPI, budgetd: AsyncBudgetdClient) -> object:
    return guard(fake_api.async_client(), budgetd=budgetd, org="acme", user="alice", feature="chat")


async def test_create_commits_exactly_the_priced_usage(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI, recorder: Recorder
) -> None:
    system = [
        {
            "type": "text",
            "text": "You are terse." * 50,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    message = await claude.messages.create(  # type: ignore[attr-defined]
        model=HAIKU, max_tokens=300, system=system, messages=MESSAGES, inference_geo="global"
    )
    assert message.content[0].text == "Hello there!"
    assert len(fake_api.calls) == 1
    assert await spent(budgetd) == (COST, 0)
    (reserve,) = recorder.bodies("/v1/reservations")
    assert reserve["cache_ttl"] == "1h"
    assert reserve["inference_geo"] == "global"
    assert reserve["max_tokens"] == 300
    assert reserve["user"] == "alice" and reserve["feature"] == "chat"
    # An upper bound: at least one token per UTF-8 byte of the prompt's text.
    assert reserve["input_tokens"] >= 14 * 50 + len("Say hello.")
    (commit,) = recorder.bodies("/commit")
    assert commit["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == 2000
    assert commit["model"] == HAIKU


async def test_denied_call_never_reaches_the_api(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    # Worst case of 1,000,000 output tokens at $5/MTok = $5 > alice's $1 a day.
    with pytest.raises(anthropic.RateLimitError) as denied:
        await claude.messages.create(  # type: ignore[attr-defined]
            model=HAIKU, max_tokens=1_000_000, messages=MESSAGES, timeout=60
        )
    assert fake_api.calls == []
    assert isinstance(denied.value, BudgetExceeded)
    assert denied.value.status_code == 429
    assert "user-day (user alice)" in denied.value.message
    assert [s.name for s in denied.value.scopes] == ["user-day"]
    assert denied.value.retry_after is None  # more than the whole limit: waiting won't help
    assert await spent(budgetd) == (0, 0)


async def test_api_error_releases_the_hold(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI, recorder: Recorder
) -> None:
    fake_api.mode = "overloaded"
    with pytest.raises(anthropic.APIStatusError):
        await claude.messages.create(model=HAIKU, max_tokens=100, messages=MESSAGES)  # type: ignore[attr-defined]
    assert len(fake_api.calls) == 1
    assert len(recorder.bodies("/release")) == 1
    assert await spent(budgetd) == (0, 0)


async def test_stream_true_commits_the_last_cumulative_usage(
    claude: object, budgetd: AsyncBudgetdClient
) -> None:
    stream = await claude.messages.create(  # type: ignore[attr-defined]
        model=HAIKU, max_tokens=300, messages=MESSAGES, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds.count("message_delta") == 2
    # Output 200 (the last delta), never 1 + 120 + 200.
    assert await spent(budgetd) == (COST, 0)


async def test_stream_helper_commits_and_keeps_the_sdk_surface(
    claude: object, budgetd: AsyncBudgetdClient
) -> None:
    async with claude.messages.stream(model=HAIKU, max_tokens=300, messages=MESSAGES) as stream:  # type: ignore[attr-defined]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there!"
    assert final.usage.output_tokens == 200
    assert await spent(budgetd) == (COST, 0)


async def test_stream_cut_half_way_commits_what_the_last_usage_event_said(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    fake_api.deltas = (120, 200)
    fake_api.cut = 8  # after the first message_delta (output 120), before the second
    seen = []
    with pytest.raises(httpx2.ReadError):
        async with claude.messages.stream(model=HAIKU, max_tokens=300, messages=MESSAGES) as s:  # type: ignore[attr-defined]
            async for event in s:
                seen.append(event.type)
    assert "message_delta" in seen
    assert await spent(budgetd) == (cost_with_output(120), 0)


async def test_stream_stopped_early_commits_the_usage_so_far(
    claude: object, budgetd: AsyncBudgetdClient
) -> None:
    stream = await claude.messages.create(  # type: ignore[attr-defined]
        model=HAIKU, max_tokens=300, messages=MESSAGES, stream=True
    )
    async with stream:
        async for event in stream:
            if event.type == "content_block_delta":
                break
    # Only message_start's usage was seen: output 1.
    assert await spent(budgetd) == (cost_with_output(1), 0)


async def test_stream_failing_before_any_token_releases(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI, recorder: Recorder
) -> None:
    fake_api.mode = "error_event"
    stream = await claude.messages.create(  # type: ignore[attr-defined]
        model=HAIKU, max_tokens=300, messages=MESSAGES, stream=True
    )
    with pytest.raises(anthropic.APIStatusError):
        async for _ in stream:
            pass
    assert len(recorder.bodies("/release")) == 1
    assert recorder.bodies("/commit") == []
    assert await spent(budgetd) == (0, 0)


async def test_per_call_and_scoped_overrides(
    claude: object, budgetd: AsyncBudgetdClient, recorder: Recorder, fake_api: FakeMessagesAPI
) -> None:
    await claude.messages.create(  # type: ignore[attr-defined]
        model=HAIKU,
        max_tokens=10,
        messages=MESSAGES,
        extra_headers={"x-budgetd-user": "bob", "x-budgetd-session": "s1"},
    )
    with scope(user="carol", feature="search"):
        await claude.messages.create(model=HAIKU, max_tokens=10, messages=MESSAGES)  # type: ignore[attr-defined]
    first, second = recorder.bodies("/v1/reservations")
    assert (first["user"], first["feature"], first["session"]) == ("bob", "chat", "s1")
    assert "metadata" not in first
    assert not any(k.startswith("x-budgetd") for k in fake_api.headers[0])
    assert (second["user"], second["feature"]) == ("carol", "search")
    assert await spent(budgetd, "bob") == (COST, 0)
    assert await spent(budgetd, "carol") == (COST, 0)
    assert await spent(budgetd, "alice") == (0, 0)


async def test_count_tokens_estimate_when_allowed(
    fake_api: FakeMessagesAPI, budgetd: AsyncBudgetdClient, recorder: Recorder
) -> None:
    claude = guard(
        fake_api.async_client(), budgetd=budgetd, org="acme", user="alice", count_tokens=True
    )
    long = [{"role": "user", "content": "Say hello. " * 500}]
    await claude.messages.create(model=HAIKU, max_tokens=10, messages=long)
    (reserve,) = recorder.bodies("/v1/reservations")
    assert reserve["input_tokens"] == 1296  # the count_tokens answer + 5 %, below the bound
    assert len(fake_api.calls) == 2  # count_tokens + create


async def test_async_guard_is_a_real_async_client_and_budgets_every_path(
    claude: object, budgetd: AsyncBudgetdClient, fake_api: FakeMessagesAPI
) -> None:
    assert isinstance(claude, anthropic.AsyncAnthropic)
    await claude.with_options(timeout=30).messages.create(
        model=HAIKU, max_tokens=300, messages=MESSAGES
    )
    await claude.beta.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    raw = await claude.messages.with_raw_response.create(
        model=HAIKU, max_tokens=300, messages=MESSAGES
    )
    assert (await raw.parse()).usage.output_tokens == 200
    assert await spent(budgetd) == (3 * COST, 0)
    params = {"model": HAIKU, "max_tokens": 300, "messages": MESSAGES}
    batch = await claude.messages.batches.create(
        requests=[{"custom_id": "a", "params": params}, {"custom_id": "b", "params": params}]  # type: ignore[list-item]
    )
    fake_api.batch_results["b"] = "expired"
    settled = await asettle_batch(claude, batch.id, poll_s=0)
    assert settled.counts == {"succeeded": 1, "expired": 1}
    assert await spent(budgetd) == (3 * COST + COST // 2, 0)


async def test_a_call_cancelled_while_upstream_thinks_releases_its_hold(
    budgetd: AsyncBudgetdClient, recorder: Recorder
) -> None:
    arrived = asyncio.Event()

    async def never_answers(request: httpx2.Request) -> httpx2.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    claude = guard(
        anthropic.AsyncAnthropic(
            api_key="sk-test",
            base_url="http://fake-anthropic",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(never_answers)),
        ),
        budgetd=budgetd,
        org="acme",
        user="alice",
    )
    call = asyncio.create_task(
        claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    )
    await arrived.wait()
    assert (await spent(budgetd))[1] > 0
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(recorder.bodies("/release")) == 1
    assert await spent(budgetd) == (0, 0)
