"""Background work shares the event loop that serves reserves and commits: it gives the loop a
turn every few milliseconds (docs/decisions.md, "Nothing else stops the hot path")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

STEP = 100
"""Items of per-entry Python work between two turns of the loop: a ledger entry parsed, or
resolved against a budget rule, costs 10-30 µs, so ~1-3 ms a step."""


async def paced(items: Iterable[T], step: int = STEP) -> AsyncIterator[T]:
    """``items``, with a turn of the event loop after every ``step`` of them."""
    for n, item in enumerate(items, 1):
        yield item
        if n % step == 0:
            await asyncio.sleep(0)
