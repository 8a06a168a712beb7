"""The audit trail: one stream per org of admin reads (ledger, reports) and one for policy
reloads and plans, readable by admins. Entries are appended, never edited."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from redis.typing import EncodableT

from budgetd.auth import Principal
from budgetd.store import keys
from budgetd.store.scripted import ScriptStore

MAX_ENTRIES = 100_000
"""Each audit stream keeps about this many entries (XADD MAXLEN ~)."""


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    at_ms: int
    fields: dict[str, str]


async def append(store: ScriptStore, key: str, fields: dict[str, str]) -> str:
    entry: dict[EncodableT, EncodableT] = {k: v for k, v in fields.items()}
    return str(await store.client.xadd(key, entry, maxlen=MAX_ENTRIES, approximate=True))


async def admin_read(store: ScriptStore, org: str, who: Principal, what: str, query: str) -> None:
    """Record that ``who`` read ``what`` (a route) of ``org`` with ``query``."""
    await append(
        store,
        keys.audit(org),
        {
            "action": "read",
            "what": what,
            "query": query,
            "who": f"{who.role}:{who.name}",
            "wall_ms": str(int(time.time() * 1000)),
        },
    )


async def recent(store: ScriptStore, key: str, count: int) -> list[AuditEntry]:
    rows: Any = await store.client.xrevrange(key, count=count)
    return [AuditEntry(id=str(i), at_ms=int(str(i).split("-")[0]), fields=dict(f)) for i, f in rows]
