"""How many times Redis ran a command: tests that work goes in bounded steps count them."""

from __future__ import annotations

from typing import Any

from budgetd.store.scripted import ScriptStore


async def calls(store: ScriptStore, command: str) -> int:
    """How many times the server(s) ran ``command`` (``INFO commandstats``, every primary)."""
    client: Any = store.client
    nodes = client.get_primaries() if hasattr(client, "get_primaries") else [None]
    total = 0
    for node in nodes:
        stats = await (
            client.info("commandstats", target_nodes=node)
            if node is not None
            else client.info("commandstats")
        )
        total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return total
