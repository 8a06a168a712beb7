"""The audit trail: one stream per org of admin reads (ledger, reports) and one for policy
reloads and plans, readable by admins. Entries are appended, never edited."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from redis.exceptions import RedisError
from redis.typing import EncodableT

from budgetd.auth import Principal
from budgetd.engine import Engine
from budgetd.policy.model import PolicySet
from budgetd.reports import plan as plan_module
from budgetd.store import keys
from budgetd.store.base import StoreUnavailable
from budgetd.store.scripted import ScriptStore

log = logging.getLogger(__name__)

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


async def policy_reloaded(engine: Engine, before: PolicySet | None, trigger: str) -> int:
    """Write an applied reload to the audit stream of every org it changed (or loaded first):
    digest, files, trigger and the plan's budget-level summary (`budgetd policy plan` shows the
    entities a change affects, before it is applied); returns how many orgs' streams were written.
    An audit that cannot be written (Redis down) is logged, never fails the reload."""
    store = engine.store
    if not isinstance(store, ScriptStore) or not engine.registry.loaded:
        return 0
    try:
        return await _policy_reloaded(store, engine, before, trigger)
    except (StoreUnavailable, RedisError, OSError, TimeoutError) as exc:
        log.warning("policy reload not audited: %s", exc)
        return 0


async def _policy_reloaded(
    store: ScriptStore, engine: Engine, before: PolicySet | None, trigger: str
) -> int:
    after = engine.registry.current
    new_digest = plan_module.digest(engine.registry.directory)
    old_digest = str(await store.client.get(keys.policy_digest()) or "")
    if old_digest == new_digest:
        return 0
    # Race: every replica reloads the same files within a poll interval; SET NX on the
    # (old, new) pair picks one writer.
    marker = f"{keys.policy_digest()}:{old_digest or 'none'}:{new_digest}"
    if not await store.client.set(marker, "1", nx=True, ex=60):
        return 0
    await store.client.set(keys.policy_digest(), new_digest)
    # Budget-level changes only: a reload must not wait on reading every entity's counters.
    # The first audited load (no digest recorded yet) is written as every org's budgets added.
    prior = before if old_digest else None
    result = await plan_module.plan(store, engine.clock, prior, after, analyse=False)
    written = 0
    for org_plan in result.orgs:
        if org_plan.change == "unchanged":
            continue
        changes = [
            f"{b.change} {b.budget}" + (f" ({', '.join(b.what)})" if b.change == "changed" else "")
            for b in org_plan.budgets
            if b.change != "changed" or b.what
        ]
        await append(
            store,
            keys.audit(org_plan.org),
            {
                "action": "policy_reload",
                "digest": new_digest,
                "previous_digest": old_digest,
                "files": " ".join(Path(f).name for f in after.files),
                "trigger": trigger,
                "org_change": org_plan.change,
                "summary": "; ".join(changes) or "no budget changes",
                "wall_ms": str(int(time.time() * 1000)),
            },
        )
        written += 1
    return written
