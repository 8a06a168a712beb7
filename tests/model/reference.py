"""The reference model of the engine: plain Python, written from DESIGN.md and docs/decisions.md,
not from the scripts. It knows the policies the model test writes, the time, every reservation
and what it should have done to each counter; the model test compares the store with it after
every step.

Only key *names* come from budgetd (``store.keys``): where a number lives is not what is tested.
Amounts and period ids are computed here, independently: prices of the test table's haiku
(1 µ$ per input token, 5 µ$ per output token), calendar periods with ``zoneinfo``.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from budgetd.store import keys

MODEL = "claude-haiku-test"
INPUT_MICROS, OUTPUT_MICROS = 1, 5
"""The test price table's haiku: $1 and $5 per million tokens = 1 and 5 µ$ per token."""

Period = Literal["hour", "day", "week", "month", "1h", "session"]
"""Calendar periods, one rolling window (an hour, in 24 sub-buckets of 150 s), and sessions (no
calendar: one counter hash per session id, which expires ``idle`` after its last write)."""
ROLLING_MS = {"1h": 3_600_000}
Scope = Literal["org", "user", "feature", "team", "key", "tag", "session"]
State = Literal["held", "committed", "released", "expired"]
LAZY_EXPIRY = 8
"""Due holds a reserve reclaims first (DESIGN: stale holds never deny a request)."""
RateKind = Literal["requests", "input_tokens", "output_tokens", "cost_micros"]
RATE_KINDS: tuple[RateKind, ...] = ("requests", "input_tokens", "output_tokens", "cost_micros")
"""A rate rule's kinds, in the order a rule lists its buckets (and a policy file its fields)."""
SCALE = 60_000
"""A bucket's level is kept in units × 60,000, so a bucket of ``per_minute`` capacity refills by
exactly ``per_minute`` every ms (docs/decisions.md: token buckets, refilled continuously)."""


@dataclass(frozen=True)
class BudgetDef:
    name: str
    scope: Scope
    period: Period
    limit: int
    """µ$"""
    match: str = "*"
    """Tag budgets: a glob on the call's tags (each matching tag is its own counter)."""
    idle_s: int = 0
    """Session budgets: the idle TTL (the counter expires this long after its last write)."""
    overrides: tuple[tuple[str, int], ...] = ()
    """Per-entity limits (µ$) that replace ``limit`` for the named entity."""

    def limit_for(self, entity: str) -> int:
        """Within a rule, an override beats the default (docs/decisions.md, Scopes)."""
        return dict(self.overrides).get(entity, self.limit)

    def scaled(self, pct: int) -> BudgetDef:
        return replace(
            self,
            limit=self.limit * pct // 100,
            overrides=tuple((e, v * pct // 100) for e, v in self.overrides),
        )


@dataclass(frozen=True)
class RateDef:
    """A rate rule: per kind, a token bucket of capacity = its per-minute value."""

    name: str
    scope: Scope
    limits: tuple[tuple[RateKind, int], ...]
    overrides: tuple[tuple[str, tuple[tuple[RateKind, int], ...]], ...] = ()
    """Per entity: the kinds it overrides (the others keep the rule's value)."""
    match: str = "*"

    def per_minute(self, entity: str) -> tuple[tuple[RateKind, int], ...]:
        """The entity's limits, in RATE_KINDS order: an override's kinds beat the rule's."""
        values = dict(self.limits) | dict(dict(self.overrides).get(entity, ()))
        return tuple((k, values[k]) for k in RATE_KINDS if k in values)

    def scaled(self, pct: int) -> RateDef:
        return replace(
            self,
            limits=tuple((k, v * pct // 100) for k, v in self.limits),
            overrides=tuple(
                (e, tuple((k, v * pct // 100) for k, v in kinds)) for e, kinds in self.overrides
            ),
        )

    def yaml(self) -> list[str]:
        def fields(kinds: tuple[tuple[RateKind, int], ...]) -> list[str]:
            return [
                f"cost_usd_per_minute: {usd(v)}" if k == "cost_micros" else f"{k}_per_minute: {v}"
                for k, v in kinds
            ]

        lines = [f"  - name: {self.name}", f"    scope: {self.scope}"]
        if self.match != "*":
            lines.append(f'    match: "{self.match}"')
        lines += [f"    {f}" for f in fields(self.limits)]
        if self.overrides:
            lines.append("    overrides:")
            lines += [f'      "{e}": {{{", ".join(fields(kinds))}}}' for e, kinds in self.overrides]
        return lines


def usd(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass(frozen=True)
class OrgDef:
    org: str
    tz: str
    hold_ttl_s: int
    budgets: tuple[BudgetDef, ...]
    rates: tuple[RateDef, ...] = ()
    fail_open: bool = False
    teams: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Team name → its users (a user may be in several)."""

    def scaled(self, pct: int) -> OrgDef:
        """The same policy with every limit (budgets, overrides, rates) at ``pct`` %."""
        return replace(
            self,
            budgets=tuple(b.scaled(pct) for b in self.budgets),
            rates=tuple(r.scaled(pct) for r in self.rates),
        )

    def yaml(self) -> str:
        lines = [
            f"org: {self.org}",
            f"timezone: {self.tz}",
            "defaults:",
            f"  hold_ttl_s: {self.hold_ttl_s}",
            f"  failure: {'fail_open' if self.fail_open else 'fail_closed'}",
        ]
        if self.teams:
            lines.append("teams:")
            lines += [f"  {name}: {{users: [{', '.join(users)}]}}" for name, users in self.teams]
        lines.append("budgets:")
        for b in self.budgets:
            match = "" if b.match == "*" else f', match: "{b.match}"'
            if b.period == "session":
                match += f", idle: {b.idle_s}s"
            if b.overrides:
                pairs = ", ".join(f'"{e}": {usd(v)}' for e, v in b.overrides)
                match += f", overrides: {{{pairs}}}"
            lines.append(
                f"  - {{name: {b.name}, scope: {b.scope}, limit_usd: {usd(b.limit)}, "
                f"period: {b.period}{match}}}"
            )
        if self.rates:
            lines.append("rate_limits:")
            for r in self.rates:
                lines += r.yaml()
        return "\n".join(lines) + "\n"


def period_id(period: Period, tz: str, at_ms: int) -> str:
    """Which calendar period ``at_ms`` falls in, as budgetd names it (docs/decisions.md: hours
    carry their UTC offset, so the repeated hour of a DST fall-back is a period of its own)."""
    local = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(ZoneInfo(tz))
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H%z")
    if period == "day":
        return local.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return local.strftime("%Y-%m")


def entities(
    policy: OrgDef,
    b: BudgetDef | RateDef,
    user: str | None,
    feature: str | None,
    key: str | None,
    tags: tuple[str, ...],
    session: str | None = None,
) -> tuple[str, ...]:
    """The counters of budget (or rate rule) ``b`` a call counts on (docs/decisions.md, issue
    14): the org; the user, feature, key or session the call names; each team the user is in;
    each tag matching the rule's glob, once."""
    if b.scope == "team":
        return tuple(name for name, users in policy.teams if user in users)
    if b.scope == "tag":
        return tuple(t for t in dict.fromkeys(tags) if fnmatch.fnmatchcase(t, b.match))
    named = {"org": policy.org, "user": user, "feature": feature, "key": key, "session": session}
    entity = named[b.scope]
    return () if entity is None else (entity,)


def price(input_tokens: int, output_tokens: int) -> int:
    return input_tokens * INPUT_MICROS + output_tokens * OUTPUT_MICROS


@dataclass(frozen=True)
class Entry:
    """One budget a hold (or a record) counts against."""

    budget: BudgetDef
    entity: str
    key: str
    """Which counter pair it is, as ``<hash>#<budget>|<entity>``: the period's counter hash
    (calendar budgets: the commit is charged there too), or the org's rolling held hash (a
    rolling budget's spend lands in sub-bucket hashes, and is added up under this name)."""
    limit: int
    """The entity's limit: its override, or the budget's default."""

    @property
    def rolling(self) -> bool:
        return self.budget.period in ROLLING_MS


@dataclass(frozen=True)
class Take:
    """One kind of one rate rule's buckets: what a call takes from it."""

    kind: RateKind
    per_minute: int
    """The bucket's capacity and its refill per minute (the entity's override, or the rule's)."""
    amount: int
    """Requests: 1; tokens: the call's; cost_micros: its amount (a reserve's: the hold)."""


@dataclass(frozen=True)
class BucketPlan:
    """A rate rule's buckets for one entity (one hash in the store), as a call plans them."""

    key: str
    name: str
    entity: str
    takes: tuple[Take, ...]


STORE_KIND = {
    "requests": "requests",
    "input_tokens": "input",
    "output_tokens": "output",
    "cost_micros": "cost",
}
"""A rate kind's name in its bucket hash (``<kind>.t``)."""


@dataclass
class Bucket:
    """A rule's buckets for one entity: one time for every kind (each write sets them all)."""

    ms: int
    levels: dict[RateKind, tuple[int, int]] = field(default_factory=dict)
    """Per kind: (level × SCALE, per minute it was written with)."""


@dataclass
class Reservation:
    org: str
    rid: str
    body: tuple[object, ...]
    """What identifies the request for idempotency (fingerprinted by the engine)."""
    amount: int
    deadline_ms: int
    entries: tuple[Entry, ...]
    input_tokens: int
    max_tokens: int
    state: State = "held"
    commit_body: tuple[int, int] | None = None
    commit_answer: tuple[int, int, bool, bool, str] | None = None
    """(cost, released, overrun, late, ledger id) of the first commit."""
    grant_answer: tuple[int, int] | None = None
    """(held micros, expires-at ms) of the first grant."""
    generations: dict[str, int] = field(default_factory=dict)
    """Per session counter hash it holds on: that hash's generation when it was granted."""
    buckets: tuple[BucketPlan, ...] = ()
    """The rate buckets it took from, with their limits as of the reserve (its commit or
    release gives back to those, whatever the policy says by then)."""


@dataclass(frozen=True)
class Charge:
    """Spend that landed on one counter, and how much of it the limit need not cover."""

    key: str
    cost: int
    excused: int
    """Overrun beyond the call's own hold, a late commit, or a record (never checked)."""
    limit: int
    """The limit in force where the hold (or record) was granted."""


@dataclass
class Reference:
    now_ms: int
    policies: list[dict[str, OrgDef]]
    """Per engine (replica): the policy it has loaded."""
    reservations: dict[tuple[str, str], Reservation] = field(default_factory=dict)
    records: dict[tuple[str, str], tuple[tuple[object, ...], int]] = field(default_factory=dict)
    spent: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    charges: list[Charge] = field(default_factory=list)
    ledger: Counter[str] = field(default_factory=Counter)
    """Ledger entries per org."""
    rolling: dict[tuple[str, str], list[tuple[int, Charge]]] = field(default_factory=dict)
    """Per rolling budget and entity's held key: (when, charge) of every spend, by time."""
    sessions: dict[str, int] = field(default_factory=dict)
    """Per live session counter hash: when it expires (its last write + idle, ms). Redis drops
    a key once its time is past that instant (now > expiry), on both stores."""
    session_undo: dict[str, int | None] = field(default_factory=dict)
    """What the last ``expire_due`` changed in ``sessions`` (``unexpire`` puts it back)."""
    generation: dict[str, int] = field(default_factory=dict)
    """Per session counter hash: when it was (last) created (ms): a hold voided after its hash
    idled out (gone, or created again) frees nothing there."""
    buckets: dict[str, Bucket] = field(default_factory=dict)
    """Per rate rule and entity (the store's bucket hash name): its buckets as last written."""

    # -- what applies ----------------------------------------------------------------------

    def entries(
        self,
        engine: int,
        org: str,
        user: str | None,
        feature: str | None,
        at_ms: int,
        key: str | None = None,
        tags: tuple[str, ...] = (),
        session: str | None = None,
    ) -> tuple[Entry, ...]:
        policy = self.policies[engine][org]
        out = []
        for b in policy.budgets:
            for entity in entities(policy, b, user, feature, key, tags, session):
                out.append(self._entry(policy, b, entity, at_ms))
        return tuple(out)

    def _entry(self, policy: OrgDef, b: BudgetDef, entity: str, at_ms: int) -> Entry:
        org = policy.org
        if b.period in ROLLING_MS:
            hash_key = keys.rolling_held(org)
        elif b.period == "session":
            hash_key = keys.session_counters(org, entity)
        else:
            hash_key = keys.counters(org, period_id(b.period, policy.tz, at_ms))
        key = keys.charged(hash_key, keys.budget_field(b.name, entity))
        return Entry(b, entity, key, b.limit_for(entity))

    def rate_plan(
        self,
        engine: int,
        org: str,
        user: str | None,
        feature: str | None,
        key: str | None,
        tags: tuple[str, ...],
        session: str | None,
        amounts: tuple[int, int, int],
    ) -> tuple[BucketPlan, ...]:
        """The buckets a call takes from: every rate rule that applies, each entity it counts
        for (as budgets), each kind the entity's limits name. ``amounts``: (input tokens,
        output tokens, µ$)."""
        policy = self.policies[engine][org]
        need = dict(zip(RATE_KINDS, (1, *amounts), strict=True))
        return tuple(
            BucketPlan(
                keys.bucket(org, r.name, entity),
                r.name,
                entity,
                tuple(Take(k, v, need[k]) for k, v in r.per_minute(entity)),
            )
            for r in policy.rates
            for entity in entities(policy, r, user, feature, key, tags, session)
        )

    # -- token buckets ---------------------------------------------------------------------

    def level(self, key: str, t: Take) -> int:
        """A bucket's level now (× SCALE): refilled at its per-minute rate since it was last
        written, never above its capacity; a bucket never written (or dropped) is full."""
        b = self.buckets.get(key)
        if b is None or t.kind not in b.levels:
            return t.per_minute * SCALE
        level = b.levels[t.kind][0] + (self.now_ms - b.ms) * t.per_minute
        return min(level, t.per_minute * SCALE)

    def rate_denials(
        self, plan: tuple[BucketPlan, ...]
    ) -> list[tuple[str, str, int, int, int, int | None, str]]:
        """Every bucket without room for its take, as a denial names it: (rule, entity, per
        minute, requested, available, Retry-After s (None: waiting cannot help), reason)."""
        out = []
        for p in plan:
            for t in p.takes:
                level = self.level(p.key, t)
                if level >= t.amount * SCALE:
                    continue
                retry = None
                if t.per_minute > 0 and t.amount <= t.per_minute:
                    wait_ms = -(-(t.amount * SCALE - level) // t.per_minute)
                    retry = max(1, -(-wait_ms // 1000))
                reason = "larger_than_limit" if t.amount > t.per_minute else "full"
                available = level // SCALE
                out.append((p.name, p.entity, t.per_minute, t.amount, available, retry, reason))
        return out

    def _write(self, p: BucketPlan, levels: dict[RateKind, int]) -> None:
        """A write of one rule's buckets: every kind as of now; a debt at most one capacity."""
        b = self.buckets.setdefault(p.key, Bucket(self.now_ms))
        b.ms = self.now_ms
        for t in p.takes:
            b.levels[t.kind] = (max(levels[t.kind], -t.per_minute * SCALE), t.per_minute)

    def take(self, plan: tuple[BucketPlan, ...]) -> dict[tuple[str, str, RateKind], int]:
        """A grant takes each amount; (rule, entity, kind) → the level it leaves (units)."""
        after = {}
        for p in plan:
            levels = {t.kind: self.level(p.key, t) - t.amount * SCALE for t in p.takes}
            self._write(p, levels)
            after.update({(p.name, p.entity, k): v // SCALE for k, v in levels.items()})
        return after

    def give(self, plan: tuple[BucketPlan, ...], back: Callable[[Take], int]) -> None:
        """Give ``back(t)`` (negative: take) to each bucket, never above its capacity; a
        rule's buckets with anything to give are written whole."""
        for p in plan:
            if any(back(t) for t in p.takes):
                cap = {t.kind: t.per_minute * SCALE for t in p.takes}
                self._write(
                    p,
                    {
                        t.kind: min(self.level(p.key, t) + back(t) * SCALE, cap[t.kind])
                        for t in p.takes
                    },
                )

    def bucket_dropped(self, key: str) -> None:
        """The store dropped a bucket hash (its expiry): allowed once every kind of it is full
        at the rate it was written with; a dropped hash reads full."""
        b = self.buckets.pop(key)
        for kind, (level, per_minute) in b.levels.items():
            refilled = level + (self.now_ms - b.ms) * per_minute
            assert refilled >= per_minute * SCALE, f"{key} {kind} dropped at {refilled} × 1/SCALE"

    def used(self, entry: Entry) -> int:
        """Calendar budgets only: what the counter has used (a rolling window's sum depends on
        how budgetd splits it; the window bound is checked on commit times instead)."""
        return self.spent[entry.key] + self.held[entry.key]

    # -- sessions --------------------------------------------------------------------------

    def _touch(self, e: Entry) -> None:
        """A write to a session's counter: its expiry slides to now + idle."""
        if e.budget.period == "session":
            hash_key = e.key.partition("#")[0]
            self.session_undo.setdefault(hash_key, self.sessions.get(hash_key))
            if hash_key not in self.sessions:
                self.generation[hash_key] = self.now_ms
            self.sessions[hash_key] = self.now_ms + e.budget.idle_s * 1000

    def _holds_on(self, r: Reservation, e: Entry) -> bool:
        """Whether ``r``'s hold is still on ``e``'s counter (a session hash of its generation)."""
        if e.budget.period != "session":
            return True
        hash_key = e.key.partition("#")[0]
        live = hash_key in self.sessions
        return live and r.generations.get(hash_key) == self.generation.get(hash_key)

    def expire_sessions(self) -> list[str]:
        """Session counters idle past their TTL at ``now_ms`` are gone: a session id used
        again starts at zero (its earlier spend was checked against the limit while it lived)."""
        gone = [h for h, at in self.sessions.items() if self.now_ms > at]
        for hash_key in gone:
            del self.sessions[hash_key]
            prefix = hash_key + "#"
            for counter in (self.spent, self.held):
                for k in [k for k in counter if k.startswith(prefix)]:
                    del counter[k]
            self.charges = [c for c in self.charges if not c.key.startswith(prefix)]
        return gone

    def _charge(self, e: Entry, cost: int, excused: int) -> None:
        self._touch(e)
        charge = Charge(e.key, cost, excused, e.limit)
        if e.rolling:
            self.rolling.setdefault(e.key, []).append((self.now_ms, charge))
            self.spent[e.key] += cost  # the sum over the rolling budget's sub-buckets
        else:
            self.spent[e.key] += cost
            self.charges.append(charge)

    # -- lifecycle -------------------------------------------------------------------------

    def open_holds(self, org: str | None = None) -> list[Reservation]:
        return [
            r
            for r in self.reservations.values()
            if r.state == "held" and (org is None or r.org == org)
        ]

    def _void(self, r: Reservation, state: State) -> None:
        for e in r.entries:
            if self._holds_on(r, e):
                self._touch(e)
                self.held[e.key] -= r.amount
        r.state = state

    def expire_one(self, r: Reservation) -> None:
        self._void(r, "expired")

    def unexpire(self, org: str, rids: list[str]) -> None:
        """Undo ``expire_due`` for a call that never reached the store."""
        for hash_key, at in self.session_undo.items():
            if at is None:
                self.sessions.pop(hash_key, None)
            else:
                self.sessions[hash_key] = at
        for rid in rids:
            r = self.reservations[(org, rid)]
            for e in r.entries:
                if self._holds_on(r, e):
                    self.held[e.key] += r.amount
            r.state = "held"

    def expire_due(self, org: str | None, limit: int | None = None) -> list[str]:
        """Reclaim holds whose lease ran out (deadline ≤ now), oldest deadline first, ties by
        id (the hold index is a sorted set scored by deadline)."""
        due = sorted(
            (r for r in self.open_holds(org) if r.deadline_ms <= self.now_ms),
            key=lambda r: (r.deadline_ms, r.rid),
        )
        if limit is not None:
            due = due[:limit]
        self.session_undo = {}
        for r in due:
            self._void(r, "expired")
        return [r.rid for r in due]

    def grant(self, r: Reservation) -> dict[tuple[str, str, RateKind], int]:
        """Hold ``r`` on its budgets and take from its buckets; the buckets' levels after."""
        self.reservations[(r.org, r.rid)] = r
        for e in r.entries:
            self._touch(e)
            self.held[e.key] += r.amount
            if e.budget.period == "session":
                hash_key = e.key.partition("#")[0]
                r.generations[hash_key] = self.generation[hash_key]
        return self.take(r.buckets)

    def commit(
        self, r: Reservation, input_tokens: int, output_tokens: int
    ) -> tuple[int, int, bool, bool]:
        """(cost, released, overrun, late) of a first commit; moves the counters."""
        cost = price(input_tokens, output_tokens)
        holding = r.state == "held"
        late = not holding or self.now_ms > r.deadline_ms
        overrun = late or cost > r.amount
        released = max(0, r.amount - cost) if holding and not late else 0
        if holding and not late:
            # The buckets give back what the estimate over-took (take what it under-took);
            # the request stays counted.
            actual = {"input_tokens": input_tokens, "output_tokens": output_tokens}
            actual["cost_micros"] = cost
            self.give(r.buckets, lambda t: t.amount - actual.get(t.kind, t.amount))
        if holding:
            self._void(r, "held")
        excused = cost if late else max(0, cost - r.amount)
        for e in r.entries:
            self._charge(e, cost, excused)
        r.state = "committed"
        r.commit_body = (input_tokens, output_tokens)
        self.ledger[r.org] += 1
        return cost, released, overrun, late

    def release(self, r: Reservation) -> tuple[str, int]:
        """(state, released micros)."""
        if r.state != "held":
            return r.state, 0
        if self.now_ms > r.deadline_ms:
            self._void(r, "expired")
            return "expired", 0
        self._void(r, "released")
        # The call never ran: estimates go back, the request stays counted.
        self.give(r.buckets, lambda t: 0 if t.kind == "requests" else t.amount)
        return "released", r.amount

    def record(
        self,
        entries: tuple[Entry, ...],
        org: str,
        cost: int,
        buckets: tuple[BucketPlan, ...] = (),
    ) -> None:
        """Spend without a hold: charged everywhere, never checked; its buckets take it."""
        for e in entries:
            self._charge(e, cost, cost)
        self.give(buckets, lambda t: -t.amount)
        self.ledger[org] += 1

    # -- the bound -------------------------------------------------------------------------

    def over_limit(self) -> list[str]:
        """Counters whose spend exceeds the limit plus what was excused: for each, every hold
        charged to it was granted against a limit at most the largest one recorded."""
        by_key: dict[str, list[Charge]] = {}
        for c in self.charges:
            by_key.setdefault(c.key, []).append(c)
        out = []
        for key, charges in by_key.items():
            total = sum(c.cost for c in charges)
            limit = max(c.limit for c in charges)
            excused = sum(c.excused for c in charges)
            if total > limit + excused:
                out.append(f"{key}: spent {total} > limit {limit} + excused {excused}")
        for key, spends in self.rolling.items():
            window = ROLLING_MS["1h"]
            for end, _ in spends:
                # Every window of the stated length that ends at a spend: (end - window, end].
                inside = [c for at, c in spends if end - window < at <= end]
                total = sum(c.cost for c in inside)
                limit = max(c.limit for c in inside)
                excused = sum(c.excused for c in inside)
                if total > limit + excused:
                    out.append(
                        f"{key}: {total} µ$ committed within {window // 60_000} min"
                        f" ending at {end} > limit {limit} + excused {excused}"
                    )
        return out
