"""What the engine takes and answers. These Structs are also the HTTP bodies (msgspec encodes
them directly), so the wire contract is written once."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from budgetd import bounds
from budgetd.usage import Usage
from budgetd.yaml_errors import describe_pattern

IDENTIFIER_WORDS = (
    "an id of up to 128 letters, digits, '_', '.', ':', '@' or '-', starting with a letter or digit"
)
Identifier = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$", IDENTIFIER_WORDS),
        description=f"{IDENTIFIER_WORDS[0].upper()}{IDENTIFIER_WORDS[1:]}.",
        examples=["bob@example.com"],
    ),
]
ORG_WORDS = "a name of up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
OrgName = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", ORG_WORDS),
        description=f"The org: {ORG_WORDS}.",
        examples=["acme-research"],
    ),
]
RESERVATION_ID_WORDS = (
    "an id of up to 256 letters, digits, '_', '.', ':', '@' or '-', starting with a letter or digit"
)
RESERVATION_ID_PATTERN = describe_pattern(
    r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,255}$", RESERVATION_ID_WORDS
)
"""A reservation id in a path: a client's ``reservation_id`` (an ``Identifier``) or a generated
one (a degraded grant's id carries org, user, feature and model, so it may be longer)."""
MODEL_ID_TITLE = "ModelId"
"""Marks model fields in the JSON Schema: the served OpenAPI lists the priced ids there."""
MODEL_WORDS = (
    "a model id of up to 128 letters, digits, '_', '.', ':', '@' or '-', starting with a letter "
    "or digit"
)
ModelId = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$", MODEL_WORDS),
        title=MODEL_ID_TITLE,
        description="A model id of the price table (or an alias the org's policy defines); "
        "any other id is 422 unknown-model.",
        examples=["claude-haiku-4-5", "claude-sonnet-4-6"],
    ),
]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=bounds.MAX_TOKENS)]
Metadata = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)],
        Annotated[str, msgspec.Meta(max_length=256)],
    ],
    msgspec.Meta(
        max_length=32,
        description="Up to 32 string pairs, keys 1–64 characters, "
        "values at most 256, kept in the ledger entry.",
    ),
]
MAX_TAGS = 8
"""Tags one call may carry: each is an entity of every tag-scope budget it matches."""
_TAG = r"[a-z0-9][a-z0-9_.:=/\-]{0,63}"
Tags = Annotated[
    list[
        Annotated[
            str,
            msgspec.Meta(
                pattern=rf"^{_TAG}$",
                description="lowercase letters, digits and _ . : = / -, up to 64, e.g. "
                "project:search",
            ),
        ]
    ],
    msgspec.Meta(
        max_length=MAX_TAGS,
        description=f"Up to {MAX_TAGS} free-form tags (project:search, env:staging), each a "
        "counter of every tag-scope budget it matches.",
    ),
]


class ReserveRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    model: ModelId
    input_tokens: TokenCount
    """Estimate of the prompt's tokens."""
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=bounds.MAX_OUTPUT_TOKENS)]
    user: Identifier | None = None
    feature: Identifier | None = None
    reservation_id: Identifier | None = None
    """Client-chosen id; also the idempotency key. Generated when absent. Ids starting with
    ``deg.`` are refused (422): they name degraded grants."""
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] | None = None
    """Lease of the hold; the policy's ``hold_ttl_s`` when absent, and never longer (422)."""
    cache_ttl: Literal["5m", "1h"] | None = None
    """The longest prompt-cache TTL the request writes, if it uses prompt caching."""
    batch: bool = False
    inference_geo: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    speed: Literal["standard", "fast"] | None = None
    web_searches: Annotated[int, msgspec.Meta(ge=0, le=bounds.MAX_WEB_SEARCHES)] = 0
    """Most web searches the call may run."""
    metadata: Metadata | None = None
    tags: Tags = msgspec.field(default_factory=list)
    session: Identifier | None = None
    """The session (an agent run, a conversation) the call belongs to: the entity of
    session-scope budgets and rate limits, and the session of reports."""


class ReserveQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The query of reserve (answer v2, issue 13)."""

    detail: Annotated[
        Literal["scopes"] | None,
        msgspec.Meta(
            description="`scopes`: the grant lists the state of every applicable limit "
            "(`scopes`, as every grant did before answer v2); without it `scopes` is empty."
        ),
    ] = None


class OrgQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``?org=`` of commit and release: the key's org when absent (required without keys)."""

    org: OrgName | None = None


TagList = Annotated[
    str,
    msgspec.Meta(
        pattern=rf"^{_TAG}(,{_TAG}){{0,{MAX_TAGS - 1}}}$",
        description=f"Up to {MAX_TAGS} tags, comma-separated (project:search,env:staging)",
    ),
]


class BudgetsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    user: Identifier | None = None
    feature: Identifier | None = None
    model: ModelId | None = None
    tags: TagList | None = None
    """The tag budgets these tags count in, as a call carrying them would."""
    session: Identifier | None = None


class CommitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    usage: Usage
    model: ModelId | None = None
    """The response's model; the reserved model when absent."""
    batch: bool = False


class UsageRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: OrgName
    model: ModelId
    usage: Usage
    user: Identifier | None = None
    feature: Identifier | None = None
    record_id: Identifier | None = None
    """Idempotency key: the same id records once."""
    batch: bool = False
    metadata: Metadata | None = None
    tags: Tags = msgspec.field(default_factory=list)
    session: Identifier | None = None
    """The session the call belonged to (counts on its session-scope budgets)."""
    cost_micros: Annotated[int, msgspec.Meta(ge=0, le=bounds.MAX_CALL_MICROS)] | None = None
    """Charge this reported cost instead of pricing ``usage`` (e.g. the Agent SDK's
    ``total_cost_usd`` when the caller prefers it). The ledger keeps both, marked
    ``cost_source=reported``; budgets move by the reported amount."""


class AdjustmentRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An admin's correction of one budget counter in its current period."""

    org: OrgName
    budget: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    """The budget's name in the org's policy."""
    amount_micros: Annotated[
        int,
        msgspec.Meta(
            ge=-bounds.MAX_ADJUSTMENT_MICROS,
            le=bounds.MAX_ADJUSTMENT_MICROS,
            extra_json_schema={"not": {"const": 0}},
        ),
    ]
    """Added to the counter's spend; negative for a credit or refund. Never zero."""
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    entity: Identifier | None = None
    """The user or feature whose counter moves; required unless the budget's scope is org."""
    adjustment_id: Identifier | None = None
    """Idempotency key: the same id adjusts once. Generated when absent."""


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
    durability: str = "fast"


class CostRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: ModelId
    usage: Usage
    batch: bool = False
    org: OrgName | None = None
    """Price with this org's model aliases."""
    on: date | None = None
    """Price with the entries in force on this day (default: today, by the service's clock)."""


class ScopeState(msgspec.Struct, frozen=True, kw_only=True):
    """One applicable limit: where it stands now."""

    kind: Literal["budget", "rate"]
    name: str
    scope: Literal["org", "feature", "user", "team", "key", "tag", "session"]
    entity: str
    source: Literal["org", "default", "override"]
    limit: int
    """Micros for budgets; tokens, requests or (``rate_kind`` cost_micros) micros per minute
    for rates."""
    remaining: int
    spent_micros: int | None = None
    held_micros: int | None = None
    period: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    """None for ``period: session``: a session has no calendar (it ends after its idle time
    without calls)."""
    rate_kind: Literal["requests", "input_tokens", "output_tokens", "cost_micros"] | None = None
    """Rates: what is counted per minute (``cost_micros``: micro-dollars, cost velocity)."""
    mode: Literal["enforce", "shadow"] = "enforce"


class Warning(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["threshold", "shadow_would_deny", "over_limit"]
    name: str
    scope: str
    entity: str
    used_micros: int | None = None
    limit: int | None = None
    threshold_pct: int | None = None


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """A granted reservation, answer v2 (docs/decisions.md, "Reserve answer v2 (issue 13)"):
    what the caller acts on. The state of every limit it was held on is in `scopes` only
    when asked (`?detail=scopes`); v1 always listed it."""

    reservation_id: str
    held_micros: int
    expires_at: datetime
    scopes: Annotated[
        list[ScopeState],
        msgspec.Meta(
            description="Every applicable limit after the hold, when the request asked "
            "`?detail=scopes`; otherwise empty (as on a degraded grant)."
        ),
    ]
    warnings: list[Warning]
    replayed: bool = False
    degraded: bool = False
    """True when Redis was unreachable and every applicable limit fails open: nothing is held."""
    durability: str = "fast"
    """What acknowledged this answer: ``fast`` (the script ran) or ``strict`` (on disk too)."""


class DeniedScope(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["budget", "rate"]
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
    reason: Literal["full", "larger_than_limit"] = "full"
    """``full``: the limit has no room for this request now (spent and held); waiting may help.
    ``larger_than_limit``: the request alone is more than the whole limit (a budget) or the
    bucket's capacity (a rate); it can never be granted, and it is not the budget's exhaustion
    (no hard-limit event)."""


class Denied(msgspec.Struct, frozen=True, kw_only=True):
    scopes: list[DeniedScope]
    retry_after_s: int | None


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    state: str
    cost_micros: int
    released_micros: int
    overrun: bool
    late: bool
    ledger_id: str
    pricing_version: str
    replayed: bool = False
    durability: str = "fast"


class ReleaseResult(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    state: str
    released_micros: int
    durability: str = "fast"


class RecordResult(msgspec.Struct, frozen=True, kw_only=True):
    record_id: str
    cost_micros: int
    """What was charged: the price of the usage, or the reported cost when one was given."""
    priced_micros: int
    """What the price table says the usage costs."""
    ledger_id: str
    pricing_version: str
    replayed: bool = False
    durability: str = "fast"


class CostLineOut(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    quantity: int
    picos: int


class CostResult(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    cost_micros: int
    breakdown: list[CostLineOut]
    pricing_version: str
    price_effective: str
    band: str
    speed: str
    batch: bool
    us_inference: bool


class BudgetsResult(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    scopes: list[ScopeState]
