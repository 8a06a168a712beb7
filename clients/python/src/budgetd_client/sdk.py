"""``guard(anthropic_client, ...)``: the same client, a real ``anthropic.Anthropic`` (or
``AsyncAnthropic``), with every Messages API call budgeted at its HTTP seam.

``guard`` swaps the client's HTTP client for one whose transport is a
:class:`~budgetd_client.transport.BudgetTransport` over the client's own (so its proxies,
limits and test transports stay underneath). Whatever the app calls (``messages.create``,
``messages.stream``, ``with_options(...)``, ``with_raw_response``, ``beta.messages``, tool
runners, ``messages.batches``) reaches ``POST /v1/messages`` or the batches endpoints through
it: reserve before, settle after, release on failure. A denial is
:class:`~budgetd_client.denial.BudgetExceededError`, an ``anthropic.RateLimitError``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import anthropic
import anyio
import httpx2

from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
from budgetd_client.transport import (
    AsyncBudgetTransport,
    AsyncClientTransport,
    BudgetTransport,
    ClientTransport,
    Settle,
)

GuardedAnthropic = anthropic.Anthropic
"""What ``guard`` returns for a sync client (kept as a name from before it returned the SDK's
own class)."""
AsyncGuardedAnthropic = anthropic.AsyncAnthropic


@overload
def guard(
    anthropic_client: anthropic.Anthropic,
    *,
    budgetd: BudgetdClient | str,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    session: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = 0.0,
    settle: Settle = "inline",
    tags: Sequence[str] = (),
) -> anthropic.Anthropic: ...


@overload
def guard(
    anthropic_client: anthropic.AsyncAnthropic,
    *,
    budgetd: AsyncBudgetdClient | str,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    session: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = 0.0,
    settle: Settle = "inline",
    tags: Sequence[str] = (),
) -> anthropic.AsyncAnthropic: ...


def guard(
    anthropic_client: anthropic.Anthropic | anthropic.AsyncAnthropic,
    *,
    budgetd: BudgetdClient | AsyncBudgetdClient | str,
    org: str,
    user: str | None = None,
    feature: str | None = None,
    session: str | None = None,
    metadata: Mapping[str, str] | None = None,
    count_tokens: bool = False,
    margin: float = 0.0,
    settle: Settle = "inline",
    tags: Sequence[str] = (),
) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
    """A copy of ``anthropic_client`` whose every Messages API call is budgeted.

    Args:
        budgetd: a budgetd client of the matching kind (sync for ``Anthropic``, async for
            ``AsyncAnthropic``), or its URL (``fail_mode="closed"``).
        org, user, feature, session, metadata: who every call is charged to by default; per
            call with ``extra_headers={"x-budgetd-user": ...}`` (also ``-feature``,
            ``-session``) or ``metadata={"user_id": ...}``; per block with
            ``budgetd_client.scope(user=...)``.
        tags: tags of every call (``["project:search"]``, at most 8 in all); per call with
            ``extra_headers={"x-budgetd-tags": "a,b"}`` or per block with ``scope(tags=...)``,
            which add to these.
        count_tokens: hold the upstream ``count_tokens`` answer (+5 %) instead of the byte
            bound: one more request per call, a tighter hold.
        margin: hold this fraction more input than the bound.
        settle: ``"background"`` returns each response before its commit reaches budgetd (the
            commit follows on background workers; ``close()`` flushes them; a crash loses the
            queued ones, whose holds then expire on their lease). ``"inline"`` by default.
    """
    options: dict[str, Any] = {
        "org": org,
        "user": user,
        "feature": feature,
        "session": session,
        "metadata": metadata,
        "count_tokens": count_tokens,
        "margin": margin,
        "settle": settle,
        "tags": tuple(tags),
    }
    own = anthropic_client._client  # the SDK's httpx2 client: kept underneath
    if isinstance(anthropic_client, anthropic.AsyncAnthropic):
        abudgetd = AsyncBudgetdClient(budgetd) if isinstance(budgetd, str) else budgetd
        if not isinstance(abudgetd, AsyncBudgetdClient) or not isinstance(own, httpx2.AsyncClient):
            raise TypeError("an AsyncAnthropic client needs an AsyncBudgetdClient")
        atransport = AsyncBudgetTransport(abudgetd, inner=AsyncClientTransport(own), **options)
        return anthropic_client.with_options(
            http_client=httpx2.AsyncClient(transport=atransport, timeout=own.timeout)
        )
    sbudgetd = BudgetdClient(budgetd) if isinstance(budgetd, str) else budgetd
    if not isinstance(sbudgetd, BudgetdClient) or not isinstance(own, httpx2.Client):
        raise TypeError("an Anthropic client needs a BudgetdClient")
    transport = BudgetTransport(sbudgetd, inner=ClientTransport(own), **options)
    return anthropic_client.with_options(
        http_client=httpx2.Client(transport=transport, timeout=own.timeout)
    )


@dataclass(frozen=True)
class BatchSettled:
    """What :func:`settle_batch` read: results per kind (``succeeded``, ``errored``, …)."""

    batch_id: str
    counts: dict[str, int]


def settle_batch(
    claude: anthropic.Anthropic, batch_id: str, *, poll_s: float = 60.0, timeout_s: float = 90_000
) -> BatchSettled:
    """Wait for a batch to end, then read its results through the guarded client: each
    succeeded request is charged (at the batch price), each errored, canceled or expired one
    releases its hold."""
    deadline = time.monotonic() + timeout_s
    while claude.messages.batches.retrieve(batch_id).processing_status != "ended":
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} did not end within {timeout_s} s")
        time.sleep(poll_s)
    counts: dict[str, int] = {}
    for item in claude.messages.batches.results(batch_id):
        counts[item.result.type] = counts.get(item.result.type, 0) + 1
    return BatchSettled(batch_id, counts)


async def asettle_batch(
    claude: anthropic.AsyncAnthropic,
    batch_id: str,
    *,
    poll_s: float = 60.0,
    timeout_s: float = 90_000,
) -> BatchSettled:
    """The asyncio :func:`settle_batch`."""
    with anyio.fail_after(timeout_s):
        # Polling a remote API: there is no event to wait on.
        while (await claude.messages.batches.retrieve(batch_id)).processing_status != "ended":  # noqa: ASYNC110
            await anyio.sleep(poll_s)
    counts: dict[str, int] = {}
    async for item in await claude.messages.batches.results(batch_id):
        counts[item.result.type] = counts.get(item.result.type, 0) + 1
    return BatchSettled(batch_id, counts)
