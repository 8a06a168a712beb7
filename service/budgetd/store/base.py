"""The store interface and the plain values that cross it. The store knows keys and scripts,
never policies: the engine hands it keys, limits and amounts, and reads back numbers."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from budgetd.errors import InvalidRequest, StoreDown

Durability = Literal["fast", "strict"]
"""fast: acknowledged once the script ran; strict: once the AOF is fsynced too."""


class BudgetLabel(msgspec.Struct, frozen=True, kw_only=True):
    """What a budget's events say about it."""

    name: str
    scope: str
    entity: str
    period: str
    """The period id (or the rolling sub-bucket) the hold is charged to."""
    period_end_ms: int = 0


class BudgetSlot(msgspec.Struct, frozen=True, kw_only=True):
    """One cost budget as the store sees it (store/keys.py says the layout).

    A calendar budget: ``counter_key`` is its period's counter hash, which holds both its spent
    and its held field. A sliding one (``slide_ms``, e.g. a session's): the same, with an expiry
    that moves to now + ``slide_ms`` on every write. A rolling one (``sub_bucket_ms``):
    ``counter_key`` is the prefix of its sub-bucket hashes (``keys.rolling_prefix``), its held
    amount lives in ``held_key`` (``keys.rolling_held``)."""

    field: str
    """``<budget>|<entity>`` (keys.budget_field): the counter fields are ``<field>|s``/``|h``."""
    counter_key: str
    held_key: str
    limit: int
    mode: Literal["block", "warn", "shadow"]
    """block: deny past the limit; warn and shadow: allow, and say so in an event."""
    expire_at_ms: int
    """When the counter hash may expire (calendar: period end + grace); for a rolling budget,
    the held hash (this window's end + window + grace). Unused when ``slide_ms`` is set."""
    thresholds_pct: tuple[int, ...] = ()
    label: BudgetLabel | None = None
    sub_bucket_ms: int = 0
    """Rolling windows: the width of a sub-bucket (a commit charges the one of its own time);
    0 for a calendar period (a commit settles in the hold's period)."""
    sub_bucket: int = 0
    """Rolling windows: the index of the current sub-bucket (time // width)."""
    expire_after_ms: int = 0
    """Rolling windows: how long after a sub-bucket hash's last sub-bucket ends it is kept."""
    slide_ms: int = 0
    """> 0: ``counter_key`` (spent and held) expires ``slide_ms`` after its last write."""
    packed: tuple[str, ...] = ()
    """The slot's plan tokens (store/plan.py, budget_tokens), packed once by whoever caches the
    slot; empty: packed on each call."""

    @property
    def enforce(self) -> bool:
        return self.mode == "block"


class BucketSlot(msgspec.Struct, frozen=True, kw_only=True):
    """One token bucket as the store sees it."""

    key: str
    """The rule's hash for the entity (keys.bucket); each kind is a field pair in it."""
    per_minute: int
    capacity: int
    amount: int
    enforce: bool
    kind: Literal["requests", "input", "output", "cost"]
    """A ``cost`` bucket counts micros per minute: a reserve takes the hold's amount, a commit
    gives back (or takes) the difference to the actual cost, as for tokens."""


class ReserveCall(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    reservation_id: str
    fingerprint: str
    amount: int
    lease_ms: int
    keep_ms: int
    """How long a resolved reservation stays for idempotent replays."""
    budgets: tuple[BudgetSlot, ...]
    buckets: tuple[BucketSlot, ...]
    meta: str
    input_tokens: int = 0
    """What the ``input`` buckets take (the estimate); ``output``: ``output_tokens``."""
    output_tokens: int = 0
    """JSON describing the request, copied into the ledger entry at commit."""


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["budget", "bucket"]
    index: int
    """0-based index into the call's budgets or buckets."""
    spent: int = 0
    held: int = 0
    level: int = 0
    wait_ms: int | None = None


class ReserveOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["granted", "denied", "replay", "conflict"]
    now_ms: int
    deadline_ms: int
    budgets_after: tuple[tuple[int, int], ...] = ()
    """(spent, held) of each budget after the hold."""
    buckets_after: tuple[int, ...] = ()
    denials: tuple[Denial, ...] = ()
    shadow_denials: tuple[Denial, ...] = ()
    state: str = ""


class CommitCall(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    reservation_id: str
    cost: int
    fingerprint: str
    keep_ms: int
    input_tokens: int
    output_tokens: int
    ledger_fields: tuple[tuple[str, str], ...]
    clock_ms: int
    """The service's period clock at the commit: which sub-bucket of a rolling window it
    charges (the same clock that chose the windows at reserve)."""


class CommitOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["committed", "replay", "conflict", "missing"]
    cost: int = 0
    released: int = 0
    overrun: bool = False
    late: bool = False
    ledger_id: str = ""
    state: str = ""


class ReleaseOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["released", "resolved", "missing"]
    released: int
    state: str


class RecordCall(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    record_id: str
    fingerprint: str
    cost: int
    keep_ms: int
    budgets: tuple[BudgetSlot, ...]
    buckets: tuple[BucketSlot, ...]
    ledger_fields: tuple[tuple[str, str], ...]
    input_tokens: int = 0
    """The tokens actually used, which the ``input`` and ``output`` buckets take."""
    output_tokens: int = 0


class RecordOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["recorded", "replay", "conflict"]
    ledger_id: str = ""


class AdjustCall(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    adjustment_id: str
    fingerprint: str
    amount: int
    """Micros added to the budget's current counter; negative for a credit."""
    keep_ms: int
    budget: BudgetSlot
    ledger_fields: tuple[tuple[str, str], ...]


class AdjustOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["adjusted", "replay", "conflict", "negative"]
    ledger_id: str = ""
    spent: int = 0
    """The counter's spend after the adjustment (``negative``: before it, unchanged)."""
    period: str = ""
    """The period id of the counter that moved (on a replay: the first call's)."""


class StatusOutcome(msgspec.Struct, frozen=True, kw_only=True):
    now_ms: int
    budgets: tuple[tuple[int, int], ...]
    buckets: tuple[int, ...]


class ReservationView(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    meta: str
    deadline_ms: int


class StoreUnavailable(StoreDown):
    """The store could not be reached within the configured timeout.

    A ``StoreDown``, so every store call that is not handled on purpose (the reserve's fail-open
    or fail-closed decision) answers 503 ``store-unavailable``: one mapping for every read and
    write path, none can slip through as a 500."""


class OutOfBounds(InvalidRequest):
    """A counter would leave the exact range (bounds.py): the script refused, writing nothing."""

    def __init__(self, counter: str, *, field: str) -> None:
        super().__init__(
            f"this call would take counter {counter} past the largest amount budgetd keeps "
            "(2^53 - 1 µ$); nothing was changed",
            field=field,
        )


class Store(Protocol):
    """What the engine needs from Redis. One implementation; two ways to connect."""

    description: str
    durability: Durability

    async def reserve(self, call: ReserveCall) -> ReserveOutcome: ...
    async def commit(self, call: CommitCall) -> CommitOutcome: ...
    async def release(self, org: str, reservation_id: str, keep_ms: int) -> ReleaseOutcome: ...
    async def expire(self, org: str, limit: int) -> tuple[int, int]: ...
    async def record(self, call: RecordCall) -> RecordOutcome: ...
    async def adjust(self, call: AdjustCall) -> AdjustOutcome: ...
    async def status(
        self, budgets: tuple[BudgetSlot, ...], buckets: tuple[BucketSlot, ...]
    ) -> StatusOutcome: ...
    async def reservation(self, org: str, reservation_id: str) -> ReservationView | None: ...
    async def server_time(self) -> float: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...
