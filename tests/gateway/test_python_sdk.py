"""The Python ``anthropic`` SDK, unmodified, through ``budgetd gateway``: every call moves the
budgets by exactly what the fake upstream reported, priced by the table; failures release."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import pytest

from tests.gateway.conftest import MODEL, Ledger, Setup, spent, upstream_log


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[..., anthropic.AsyncAnthropic]]:
    """``sdk(setup, key, **options)``: an SDK client on the gateway, closed after the test."""
    made: list[anthropic.AsyncAnthropic] = []

    def build(setup: Setup, key: str, **options: Any) -> anthropic.AsyncAnthropic:
        options.setdefault("max_retries", 0)
        made.append(anthropic.AsyncAnthropic(base_url=setup.gateway.url, api_key=key, **options))
        return made[-1]

    yield build
    for client in made:
        await client.close()


SDK = Callable[..., anthropic.AsyncAnthropic]


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def test_create_charges_exactly_the_reported_usage(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled(user="alice", feature="chat")
    client = sdk(gateway_setup, gateway_setup.keys.app)
    message = await client.messages.create(
        **ask("hello", metadata={"user_id": "end-user-42"}),
        extra_headers={"anthropic-version": "2023-06-01", "cookie": "session=1"},
    )
    after = await ledger.settled(user="alice", feature="chat")
    cost = ledger.price(message.model, message.usage.model_dump(exclude_none=True))
    assert cost > 0
    assert spent(before, after) == {
        "org:org-month": cost,
        "user:user-day": cost,
        "feature:feature-day": cost,
    }
    seen = upstream_log(gateway_setup)[-1]
    # The org's Anthropic key went upstream, never the caller's budgetd key.
    assert seen["headers"]["x-api-key"] == "sk-ant-fake-upstream"
    assert "authorization" not in seen["headers"]
    assert "cookie" not in seen["headers"]
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["metadata"] == {"user_id": "end-user-42"}


async def test_stream_with_cache_fields_charges_the_last_cumulative_usage(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    async with client.messages.stream(**ask("cached [fake:cache] [fake:out=40]")) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == "hi"
    usage = final.usage.model_dump(exclude_none=True)
    assert usage["output_tokens"] == 40
    assert usage["cache_read_input_tokens"] == 4000
    after = await ledger.settled()
    expected = ledger.price(MODEL, upstream_log(gateway_setup)[-1]["usage"])
    assert spent(before, after)["org:org-month"] == expected
    assert expected == ledger.price(MODEL, usage)


async def test_tool_use_and_beta_route(gateway_setup: Setup, ledger: Ledger, sdk: SDK) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    tools = [{"name": "weather", "description": "weather", "input_schema": {"type": "object"}}]
    message = await client.beta.messages.create(
        **ask("weather? [fake:tool]", tools=tools), betas=["fake-beta-2026"]
    )
    assert message.stop_reason == "tool_use"
    seen = upstream_log(gateway_setup)[-1]
    assert seen["headers"]["anthropic-beta"] == "fake-beta-2026"
    after = await ledger.settled()
    assert spent(before, after)["org:org-month"] == ledger.price(MODEL, seen["usage"])


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, anthropic.BadRequestError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.InternalServerError),
    ],
)
async def test_upstream_errors_pass_through_and_release(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK, status: int, error: type[Exception]
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    with pytest.raises(error) as raised:
        await client.messages.create(**ask(f"fail [fake:error={status}]"))
    assert raised.value.status_code == status  # type: ignore[attr-defined]
    assert f"fake upstream error {status}" in str(raised.value)
    after = await ledger.settled()
    assert spent(before, after)["org:org-month"] == 0
    assert after["org:org-month"][1] == 0


async def test_broken_stream_commits_what_the_last_event_reported(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    # The gateway cuts the caller's connection as upstream cut its own: the SDK sees the
    # same broken body it would have seen from Anthropic.
    with pytest.raises(Exception, match="incomplete chunked read"):
        async with client.messages.stream(**ask("[fake:broken]")) as stream:
            await stream.get_final_message()
    after = await ledger.settled()
    reported = upstream_log(gateway_setup)[-1]["usage"]  # message_start's: 1 output token
    assert reported["output_tokens"] == 1
    assert spent(before, after)["org:org-month"] == ledger.price(MODEL, reported)
    assert after["org:org-month"][1] == 0


async def test_upstream_timeout_is_504_and_releases(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    with pytest.raises(anthropic.InternalServerError) as raised:
        await client.messages.create(**ask("[fake:hang]"))
    assert raised.value.status_code == 504
    assert "nothing was charged" in str(raised.value)
    after = await ledger.settled()
    assert spent(before, after)["org:org-month"] == 0


async def test_denial_is_a_catchable_sdk_error_naming_the_scope(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    client = sdk(gateway_setup, gateway_setup.keys.poor, max_retries=2)
    # A call whose worst case is over the whole $0.05 limit can never fit: 400, never retried.
    with pytest.raises(anthropic.BadRequestError) as never:
        await client.messages.create(**ask("big", max_tokens=20_000))
    assert "budgetd" in never.value.message
    assert "org budget 'tiny-month'" in never.value.message
    body: Any = never.value.body
    assert body["error"]["type"] == "invalid_request_error"
    # Spend the budget past its limit (the call's real usage is charged, whatever it held) ...
    await client.messages.create(**ask("spend [fake:out=12000]", max_tokens=1000))
    # ... and the next call is a 429 naming the scope, with retry-after; not worth retrying.
    with pytest.raises(anthropic.RateLimitError) as denied:
        await client.messages.create(**ask("more", max_tokens=1000))
    assert "org budget 'tiny-month'" in denied.value.message
    assert int(denied.value.response.headers["retry-after"]) > 0
    assert denied.value.response.headers["x-should-retry"] == "false"
    after = await ledger.settled("gw-poor")
    assert after["org:tiny-month"][1] == 0


async def test_attribution_headers_only_where_the_key_allows(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled(user="carol", feature="backend")
    shared = sdk(
        gateway_setup, gateway_setup.keys.shared, default_headers={"x-budgetd-user": "carol"}
    )
    message = await shared.messages.create(**ask("hi"))
    after = await ledger.settled(user="carol", feature="backend")
    cost = ledger.price(MODEL, message.usage.model_dump(exclude_none=True))
    assert spent(before, after) == {
        "org:org-month": cost,
        "user:user-day": cost,
        "feature:feature-day": cost,
    }
    assert "x-budgetd-user" not in upstream_log(gateway_setup)[-1]["headers"]

    pinned = sdk(gateway_setup, gateway_setup.keys.app, default_headers={"x-budgetd-user": "carol"})
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        await pinned.messages.create(**ask("hi"))
    assert "charged to org gw-test, user alice" in refused.value.message


async def test_an_org_without_an_anthropic_key_is_told_where_one_goes(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    client = sdk(gateway_setup, gateway_setup.keys.no_upstream)
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(**ask("hi"))
    assert failed.value.status_code == 500
    assert "no Anthropic key for org 'gw-no-upstream'" in failed.value.message
    assert "BUDGETD_GATEWAY_UPSTREAM_KEY_GW_NO_UPSTREAM" in failed.value.message
    assert (await ledger.settled("gw-no-upstream"))["org:tiny-month"] == (0, 0)


async def test_keys_paths_and_free_calls(gateway_setup: Setup, sdk: SDK) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(gateway_setup, "bdk_not-a-key").messages.create(**ask("hi"))
    client = sdk(gateway_setup, gateway_setup.keys.app)
    count = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert count.input_tokens > 0
    models = await client.models.list()
    assert [m.id for m in models.data] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.get("/v1/complete", cast_to=object)
    assert "is not served here" in missing.value.message
    with pytest.raises(anthropic.APIStatusError) as wrong:
        await client.get("/v1/messages", cast_to=object)
    assert wrong.value.status_code == 405
    async with anthropic.AsyncAnthropic(
        base_url=gateway_setup.gateway.url, auth_token=gateway_setup.keys.app, max_retries=0
    ) as bearer:
        answer = await bearer.messages.create(**ask("hi"))
    assert answer.content[0].text == "hi"


def batch_request(custom_id: str, text: str, max_tokens: int = 256) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": ask(text, max_tokens=max_tokens)}


async def test_batch_holds_at_submit_and_charges_each_result_once(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    batch = await client.messages.batches.create(
        requests=[
            batch_request("ok", "first"),
            batch_request("long", "second [fake:out=50]"),
            batch_request("bad", "third [fake:error=400]"),
        ]
    )
    held = await ledger.org()
    assert held["org:org-month"][1] > 0  # three worst cases at the batch price
    assert spent(before, held)["org:org-month"] == 0
    # The SDK follows the batch's results_url: the gateway hands out its own.
    assert batch.results_url is not None
    assert batch.results_url.startswith(gateway_setup.gateway.url)
    results = {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}
    assert {k: r.type for k, r in results.items()} == {
        "ok": "succeeded",
        "long": "succeeded",
        "bad": "errored",
    }
    expected = sum(
        ledger.price(MODEL, r.message.usage.model_dump(exclude_none=True), batch=True)  # type: ignore[union-attr]
        for r in results.values()
        if r.type == "succeeded"
    )
    after = await ledger.settled()
    assert spent(before, after)["org:org-month"] == expected
    assert after["org:org-month"][1] == 0
    # Reading the results again charges nothing more.
    again = [r async for r in await client.messages.batches.results(batch.id)]
    assert len(again) == 3
    assert await ledger.settled() == after


async def test_batch_cancel_releases_and_denial_refuses_the_batch(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    batch = await client.messages.batches.create(
        requests=[batch_request("a", "one"), batch_request("b", "two")]
    )
    canceled = await client.messages.batches.cancel(batch.id)
    assert canceled.results_url is not None and canceled.results_url.startswith(
        gateway_setup.gateway.url
    )
    kinds = [r.result.type async for r in await client.messages.batches.results(batch.id)]
    assert kinds == ["canceled", "canceled"]
    assert await ledger.settled() == before

    poor = sdk(gateway_setup, gateway_setup.keys.poor)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await poor.messages.batches.create(requests=[batch_request("x", "big", max_tokens=100_000)])
    assert "tiny-month" in refused.value.message
    assert (await ledger.settled("gw-poor"))["org:tiny-month"][1] == 0


async def test_gzip_answer_passes_through_compressed_and_is_still_charged(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    raw = await client.messages.with_raw_response.create(**ask("zip it [fake:gzip] [fake:out=21]"))
    # The SDK decompressed it; the gateway relayed the compressed bytes and read its own copy.
    assert raw.headers["content-encoding"] == "gzip"
    message = await raw.parse()
    assert message.usage.output_tokens == 21
    after = await ledger.settled()
    cost = ledger.price(MODEL, message.usage.model_dump(exclude_none=True))
    assert spent(before, after)["org:org-month"] == cost


async def test_abandoned_stream_commits_what_was_reported_and_releases_the_rest(
    gateway_setup: Setup, ledger: Ledger, sdk: SDK
) -> None:
    before = await ledger.settled()
    client = sdk(gateway_setup, gateway_setup.keys.app)
    async with client.messages.stream(**ask("slowly [fake:slow=300] [fake:out=500]")) as stream:
        async for event in stream:
            if event.type == "message_start":
                started = event.message.usage.model_dump(exclude_none=True)
                break  # the reader walks away after the first event
    assert started["output_tokens"] == 1
    after = await ledger.settled()
    # Charged what message_start reported (1 output token so far), not the 500 it would have
    # reached, and nothing is left held.
    assert spent(before, after)["org:org-month"] == ledger.price(MODEL, started)
    assert after["org:org-month"][1] == 0
