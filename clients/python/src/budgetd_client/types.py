"""The service's wire bodies, mirrored here so the client never imports the service.

Response Structs accept unknown fields (a newer service may add some); their field names and
meanings follow ``budgetd.contract``. Money is integer micro-dollars (fields ending ``_micros``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class ScopeState(msgspec.Struct, frozen=True, kw_only=True):
    """One applicable limit and where it stands now."""

    kind: Literal["budget", "rate"]
    name: str
    scope: str
    entity: str
    source: str
    limit: int
    """Micros for budgets; tokens (or requests) per minute for rates."""
    remaining: int
    spent_micros: int | None = None
    held_micros: int | None = None
    period: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    rate_kind: str | None = None
    mode: str = "enforce"


class Warning(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    scope: str
    entity: str
    used_micros: int | None = None
    limit: int | None = None
    threshold_pct: int | None = None


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """A granted reservation (201 from ``POST /v1/reservations``, answer v2)."""

    reservation_id: str
    held_micros: int
    expires_at: datetime
    warnings: list[Warning]
    scopes: list[ScopeState] = msgspec.field(default_factory=list)
    """Every applicable limit after the hold, when reserved with ``detail=True``; empty
    otherwise (answer v2), and on a degraded grant."""
    replayed: bool = False
    degraded: bool = False
    """True when nothing is held: the service failed open (Redis down, every limit fail-open),
    or this client failed open because budgetd itself could not be reached."""


class DeniedScope(msgspec.Struct, frozen=True, kw_only=True):
    """One limit that denied a reservation."""

    kind: str
    name: str
    scope: str
    entity: str
    limit: int
    requested: int
    spent_micros: int | None = None
    held_micros: int | None = None
    available: int | None = None
    period_end: datetime | None = None
    retry_after_s: int | None = None
    """None: waiting alone will not help (the request exceeds the whole limit)."""


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    state: str
    """``committed`` from the service; ``unrecorded`` when this client could not reach budgetd
    to record a fail-open call (see the README)."""
    cost_micros: int
    released_micros: int
    overrun: bool
    late: bool
    ledger_id: str
    pricing_version: str
    replayed: bool = False


class ReleaseResult(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    state: str
    released_micros: int


class RecordResult(msgspec.Struct, frozen=True, kw_only=True):
    record_id: str
    cost_micros: int
    """What was charged: the usage's price, or the reported cost when one was sent."""
    ledger_id: str
    pricing_version: str
    replayed: bool = False
    priced_micros: int | None = None
    """What budgetd's price table says the usage costs (services before 0.1 omit it)."""


class AdjustmentResult(msgspec.Struct, frozen=True, kw_only=True):
    adjustment_id: str
    ledger_id: str
    budget: str
    entity: str
    period: str
    """The period (or rolling sub-bucket) whose counter moved."""
    amount_micros: int
    spent_micros: int
    """That counter's spend after the adjustment."""
    replayed: bool = False


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    quantity: int
    picos: int
    """Pico-dollars (10⁻¹² USD) before the single final rounding up to micros."""


class CostResult(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    cost_micros: int
    breakdown: list[CostLine]
    pricing_version: str
    price_effective: str
    band: str
    speed: str
    batch: bool
    us_inference: bool


class BudgetsResult(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    scopes: list[ScopeState]

    def budget(self, name: str, entity: str | None = None) -> ScopeState:
        """The budget named ``name`` (and ``entity``, when several entities share the rule)."""
        for s in self.scopes:
            if s.kind == "budget" and s.name == name and (entity is None or s.entity == entity):
                return s
        raise KeyError(name)


class CacheCreation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ephemeral_5m_input_tokens: int | None = None
    ephemeral_1h_input_tokens: int | None = None


class ServerToolUse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    web_search_requests: int | None = None
    web_fetch_requests: int | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A Messages API ``usage`` object, for callers that build one by hand. The client also
    takes plain mappings and the SDK's pydantic ``Usage``; those are sent verbatim."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: ServerToolUse | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
