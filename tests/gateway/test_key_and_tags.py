"""Key scope and tags through the gateway (issue 14), with the real ``anthropic`` SDK: a call is
charged to the caller's budgetd key, and to the tags of its ``x-budgetd-tags`` header."""

from __future__ import annotations

import anthropic
import pytest

from tests.gateway.conftest import MODEL, Ledger, Setup

ORG = "gw-keyed"


def ask(text: str, max_tokens: int = 1000) -> dict[str, object]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }


async def test_a_key_budget_denies_at_its_limit_and_tags_are_charged(
    gateway_setup: Setup, ledger: Ledger
) -> None:
    url = gateway_setup.gateway.url
    keyed = anthropic.AsyncAnthropic(
        base_url=url,
        api_key=gateway_setup.keys.keyed,
        max_retries=0,
        default_headers={"x-budgetd-tags": "project:search, env:prod"},
    )
    other = anthropic.AsyncAnthropic(
        base_url=url, api_key=gateway_setup.keys.keyed_other, max_retries=0
    )
    try:
        # Spend keyed-a's $0.05 past its limit (the real usage is charged, whatever it held).
        await keyed.messages.create(**ask("spend [fake:out=12000]"))  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as denied:
            await keyed.messages.create(**ask("more"))  # type: ignore[arg-type]
        assert "key budget 'per-key'" in denied.value.message
        # The other key has its own counter.
        await other.messages.create(**ask("hi"))  # type: ignore[arg-type]

        view = await ledger.engine.budgets(
            ORG, None, None, None, key="keyed-a", tags=("project:search",)
        )
        spent = {(s.name, s.entity): s.spent_micros for s in view.scopes if s.kind == "budget"}
        assert spent[("per-key", "keyed-a")] == spent[("per-project", "project:search")] > 50_000
        assert spent[("org-month", ORG)] > spent[("per-key", "keyed-a")]

        # Tags are bounded like the API's: nine are refused before anything is held.
        many = ",".join(f"t{i}" for i in range(9))
        with pytest.raises(anthropic.BadRequestError) as refused:
            await other.messages.create(  # type: ignore[call-overload]
                **ask("hi"), extra_headers={"x-budgetd-tags": many}
            )
        assert "tags" in refused.value.message
    finally:
        await keyed.close()
        await other.close()


async def test_batch_results_are_charged_to_the_submits_tags(
    gateway_setup: Setup, ledger: Ledger
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway_setup.gateway.url,
        api_key=gateway_setup.keys.keyed_other,
        max_retries=0,
        default_headers={"x-budgetd-tags": "project:batch"},
    ) as client:
        batch = await client.messages.batches.create(
            requests=[{"custom_id": "one", "params": ask("first", max_tokens=256)}]  # type: ignore[list-item]
        )
        results = [r async for r in await client.messages.batches.results(batch.id)]
    assert [r.result.type for r in results] == ["succeeded"]
    view = await ledger.engine.budgets(
        ORG, None, None, None, key="keyed-b", tags=("project:batch",)
    )
    spent = {(s.name, s.entity): s.spent_micros for s in view.scopes if s.kind == "budget"}
    assert spent[("per-project", "project:batch")] > 0
    assert spent[("per-project", "project:batch")] <= spent[("per-key", "keyed-b")]
