"""Policy + request → store call → decision. No HTTP here, and no Redis details: the engine
turns resolved limits into keys and amounts, asks the store, and reads the answer back."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from budgetd import attribution, bounds
from budgetd import contract as c
from budgetd.clock import Clock
from budgetd.errors import (
    Conflict,
    InvalidRequest,
    ReservationNotFound,
    Retired,
    StoreDown,
    UnknownModel,
    UnknownOrg,
)
from budgetd.metrics import Metrics
from budgetd.periods import PeriodWindow, window
from budgetd.policy.model import OrgPolicy
from budgetd.policy.registry import PolicyRegistry
from budgetd.policy.resolve import Applicable, AppliedBudget, AppliedRate, Subject, resolve
from budgetd.pricing import Cost, NotOffered, PricingError, cost, worst_case
from budgetd.pricing_table import PricingTable, UnknownModelError
from budgetd.store import keys
from budgetd.store.base import (
    BucketSlot,
    BudgetLabel,
    BudgetSlot,
    CommitCall,
    RecordCall,
    ReserveCall,
    ReserveOutcome,
    Store,
    StoreUnavailable,
)
from budgetd.store.plan import budget_tokens
from budgetd.usage import Usage

log = logging.getLogger(__name__)

KEEP_RESOLVED_MS = int(timedelta(days=7).total_seconds() * 1000)
"""How long a reservation or usage record stays for idempotent replays."""
DEGRADED_PREFIX = "deg."
CACHE_BOUND = 20_000
"""Entries per engine cache (resolutions, budget slots): a few kB each at most; past the bound
the cache starts over, which costs a rebuild per entry, not correctness."""
_BUCKET_KIND = {
    "requests": "requests",
    "input_tokens": "input",
    "output_tokens": "output",
    "cost_micros": "cost",
}
"""Policy rate kind → the store's bucket kind (a ``cost`` bucket takes the hold's micros)."""


class _Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Applicable limits with their windows and store slots, index-aligned."""

    applicable: Applicable
    windows: tuple[PeriodWindow, ...]
    budgets: tuple[BudgetSlot, ...]
    buckets: tuple[BucketSlot, ...]


class _DegradedSubject(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    org: str
    user: str | None
    feature: str | None
    model: str
    tags: tuple[str, ...] = ()
    """Not the key: the commit is charged to the committing caller's key (a degraded id is
    the client's to send back, and must not name a key to charge)."""
    session: str | None = None
    """Left out of the id when None (ids made before sessions decode the same)."""


def _mode(applied: AppliedBudget) -> Literal["block", "warn", "shadow"]:
    if applied.rule.mode == "shadow":
        return "shadow"
    return "block" if applied.rule.on_hard_limit == "block" else "warn"


def _cost(table: PricingTable, model: str, usage: Usage, batch: bool, now: datetime) -> Cost:
    """The price of a usage object on ``now``'s day, with pricing errors as request errors."""
    try:
        return cost(table, model, usage, batch=batch, on=now.date())
    except UnknownModelError as exc:
        raise UnknownModel(str(exc)) from None
    except PricingError as exc:
        raise InvalidRequest(str(exc), field="usage.speed") from None


def _within_bound(amount: int, field: str) -> int:
    """``amount``, if one call may cost that much (bounds.py: what keeps counters exact)."""
    if amount > bounds.MAX_CALL_MICROS:
        raise InvalidRequest(
            f"this call prices at {amount} µ$, more than one call may cost "
            f"({bounds.MAX_CALL_MICROS} µ$)",
            field=field,
        )
    return amount


def fingerprint(value: msgspec.Struct, key: str | None = None) -> str:
    """Identifies a request body for idempotent replays (same id, different body: conflict),
    with the caller's key name when there is one: the same id and body from another key is
    another request (it would be charged to other key budgets), so a conflict too."""
    encoded = msgspec.json.encode(value)
    if key is not None:
        encoded += b"\x00key:" + key.encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Engine:
    """Reserve, commit, release, record, cost and budgets, for every org in the registry."""

    def __init__(
        self, registry: PolicyRegistry, store: Store, clock: Clock, metrics: Metrics
    ) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock
        self.metrics = metrics
        # Per loaded policy set (both are cleared when it changes): what applies to a subject
        # and model, and the store's view of each budget in each window.
        self._resolved: dict[tuple[str | None, ...], Applicable] = {}
        self._slots: dict[tuple[str, str, str, int, str], BudgetSlot] = {}
        self._caches_for: object = None
        # reservation id → model, so most commits need no extra read to know what to price.
        self._models: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._decided = metrics.decided
        self._committed = metrics.committed

    # -- helpers ---------------------------------------------------------------------------

    def policy(self, org: str) -> OrgPolicy:
        policy = self.registry.org(org)
        if policy is None:
            raise UnknownOrg(f"no policy defines org {org!r}")
        return policy

    def _caches_current(self) -> None:
        current = self.registry.current
        if self._caches_for is not current:
            self._resolved.clear()
            self._slots.clear()
            self._caches_for = current

    def _applicable(self, policy: OrgPolicy, subject: Subject, model: str) -> Applicable:
        """``resolve``, remembered per subject and model (per loaded policy set)."""
        self._caches_current()
        key = (
            policy.org,
            subject.user,
            subject.feature,
            subject.key,
            subject.session,
            model,
            *subject.tags,
        )
        found = self._resolved.get(key)
        if found is None:
            found = resolve(policy, subject, model)
            if len(self._resolved) >= CACHE_BOUND:
                self._resolved.clear()  # a crude bound, as for the slots
            self._resolved[key] = found
        return found

    def budget_slot(self, policy: OrgPolicy, b: AppliedBudget, win: PeriodWindow) -> BudgetSlot:
        """The store's view of one applied budget in one window; the same for every request of
        that entity in that window, so it is built once (per loaded policy set)."""
        self._caches_current()
        cache_key = (policy.org, b.rule.name, b.entity, b.limit, win.charge_id)
        slot = self._slots.get(cache_key)
        if slot is not None:
            return slot
        name, entity = b.rule.name, b.entity
        spec = b.rule.period
        end_ms = _ms(win.end) if win.end is not None else 0  # 0: a session has no end
        label = BudgetLabel(
            name=name,
            scope=b.rule.scope,
            entity=entity,
            period=win.charge_id,
            period_end_ms=end_ms,
        )
        field = keys.budget_field(name, entity)
        mode = _mode(b)
        if spec.session or spec.calendar:
            # One hash holds spent and held; a session's expiry slides (idle_ms: 0 otherwise).
            key = (
                keys.session_counters(policy.org, entity)
                if spec.session
                else keys.counters(policy.org, win.charge_id)
            )
            slot = BudgetSlot(
                field=field,
                counter_key=key,
                held_key=key,
                limit=b.limit,
                mode=mode,
                thresholds_pct=b.rule.thresholds_pct,
                label=label,
                expire_at_ms=_ms(win.expire_at),
                slide_ms=win.idle_ms,
            )
        else:
            slot = BudgetSlot(
                field=field,
                counter_key=keys.rolling_prefix(policy.org, spec.bucket_s),
                held_key=keys.rolling_held(policy.org),
                limit=b.limit,
                mode=mode,
                thresholds_pct=b.rule.thresholds_pct,
                label=label,
                expire_at_ms=_ms(win.expire_at),
                sub_bucket_ms=spec.bucket_s * 1000,
                sub_bucket=int(win.charge_id[1:]),
                expire_after_ms=_ms(win.expire_at) - end_ms,
            )
        slot = msgspec.structs.replace(slot, packed=budget_tokens(slot))
        if len(self._slots) >= CACHE_BOUND:
            self._slots.clear()  # a crude bound: rebuilding is cheap, memory is not
        self._slots[cache_key] = slot
        return slot

    def _limits(
        self,
        policy: OrgPolicy,
        subject: Subject,
        model: str,
        now: datetime,
        input_tokens: int,
        output_tokens: int,
        cost_micros: int = 0,
    ) -> _Limits:
        applicable = self._applicable(policy, subject, model)
        windows: list[PeriodWindow] = []
        budgets: list[BudgetSlot] = []
        for b in applicable.budgets:
            win = window(b.rule.period, policy.tz, now)
            windows.append(win)
            budgets.append(self.budget_slot(policy, b, win))
        amounts = {
            "requests": 1,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_micros": cost_micros,
        }
        buckets = tuple(
            BucketSlot(
                key=keys.bucket(policy.org, r.rule.name, r.entity),
                per_minute=r.per_minute,
                capacity=r.per_minute,
                amount=amounts[r.kind],
                enforce=r.rule.mode == "enforce",
                kind=_BUCKET_KIND[r.kind],  # type: ignore[arg-type]
            )
            for r in applicable.rates
        )
        return _Limits(
            applicable=applicable, windows=tuple(windows), budgets=tuple(budgets), buckets=buckets
        )

    def _scopes(
        self,
        limits: _Limits,
        budget_values: tuple[tuple[int, int], ...],
        bucket_levels: tuple[int, ...],
    ) -> list[c.ScopeState]:
        out: list[c.ScopeState] = []
        for b, win, (spent, held) in zip(
            limits.applicable.budgets, limits.windows, budget_values, strict=True
        ):
            out.append(
                c.ScopeState(
                    kind="budget",
                    name=b.rule.name,
                    scope=b.rule.scope,
                    entity=b.entity,
                    source=b.source,
                    limit=b.limit,
                    remaining=max(0, b.limit - spent - held),
                    spent_micros=spent,
                    held_micros=held,
                    period=b.rule.period.text,
                    period_start=win.start,
                    period_end=win.end,
                    mode=b.rule.mode,
                )
            )
        for r, level in zip(limits.applicable.rates, bucket_levels, strict=True):
            out.append(
                c.ScopeState(
                    kind="rate",
                    name=r.rule.name,
                    scope=r.rule.scope,
                    entity=r.entity,
                    source=r.source,
                    limit=r.per_minute,
                    remaining=max(0, level),
                    rate_kind=r.kind,
                    mode=r.rule.mode,
                )
            )
        return out

    def _observe_org_budgets(self, org: str, budgets: Iterable[tuple[str, str, int, int]]) -> None:
        """Utilisation and remaining of the org-wide budgets (never per user or feature), from
        ``(scope, name, limit, used)`` of budgets."""
        self.metrics.observe_budgets(
            org, ((name, limit, used) for scope, name, limit, used in budgets if scope == "org")
        )

    @staticmethod
    def _budget_use(
        limits: _Limits, budget_values: tuple[tuple[int, int], ...]
    ) -> Iterator[tuple[str, str, int, int]]:
        for b, (spent, held) in zip(limits.applicable.budgets, budget_values, strict=True):
            yield b.rule.scope, b.rule.name, b.limit, spent + held

    @staticmethod
    def _warnings(limits: _Limits, outcome: ReserveOutcome, amount: int) -> list[c.Warning]:
        warnings: list[c.Warning] = []
        for b, (spent, held) in zip(limits.applicable.budgets, outcome.budgets_after, strict=True):
            after = spent + held
            before = after - amount
            rule = b.rule
            for pct in rule.thresholds_pct:
                # Crossed by this reserve: below the mark before, at or above it after.
                if before * 100 < pct * b.limit <= after * 100:
                    warnings.append(
                        c.Warning(
                            kind="threshold",
                            name=rule.name,
                            scope=rule.scope,
                            entity=b.entity,
                            used_micros=after,
                            limit=b.limit,
                            threshold_pct=pct,
                        )
                    )
            if after > b.limit and rule.mode == "enforce" and rule.on_hard_limit == "warn":
                warnings.append(
                    c.Warning(
                        kind="over_limit",
                        name=rule.name,
                        scope=rule.scope,
                        entity=b.entity,
                        used_micros=after,
                        limit=b.limit,
                    )
                )
        for d in outcome.shadow_denials:
            target: AppliedBudget | AppliedRate
            if d.kind == "budget":
                target = limits.applicable.budgets[d.index]
                used: int | None = d.spent + d.held
                limit = target.limit
            else:
                target = limits.applicable.rates[d.index]
                used, limit = None, target.per_minute
            if d.kind == "budget" and target.rule.mode == "enforce":
                continue  # a warn-only budget: reported as over_limit above
            warnings.append(
                c.Warning(
                    kind="shadow_would_deny",
                    name=target.rule.name,
                    scope=target.rule.scope,
                    entity=target.entity,
                    used_micros=used,
                    limit=limit,
                )
            )
        return warnings

    def _denied(
        self,
        limits: _Limits,
        outcome: ReserveOutcome,
        amount: int,
        now: datetime,
    ) -> c.Denied:
        scopes: list[c.DeniedScope] = []
        for d in outcome.denials:
            if d.kind == "budget":
                b = limits.applicable.budgets[d.index]
                win = limits.windows[d.index]
                # A full session stays full: it ends only after idle time without calls, and a
                # client waiting for that is no longer one session.
                retry = (
                    None
                    if amount > b.limit or win.end is None
                    else max(1, math.ceil((win.end - now).total_seconds()))
                )
                scopes.append(
                    c.DeniedScope(
                        kind="budget",
                        name=b.rule.name,
                        scope=b.rule.scope,
                        entity=b.entity,
                        limit=b.limit,
                        requested=amount,
                        spent_micros=d.spent,
                        held_micros=d.held,
                        period_end=win.end,
                        retry_after_s=retry,
                        reason="larger_than_limit" if amount > b.limit else "full",
                    )
                )
            else:
                r = limits.applicable.rates[d.index]
                requested = limits.buckets[d.index].amount
                scopes.append(
                    c.DeniedScope(
                        kind="rate",
                        name=r.rule.name,
                        scope=r.rule.scope,
                        entity=r.entity,
                        limit=r.per_minute,
                        requested=requested,
                        available=d.level,
                        retry_after_s=None
                        if d.wait_ms is None
                        else max(1, math.ceil(d.wait_ms / 1000)),
                        reason="larger_than_limit" if requested > r.per_minute else "full",
                    )
                )
        waits = [s.retry_after_s for s in scopes]
        # Every denying scope must clear: the answer is the longest wait, or none at all.
        retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
        self._decided["denied"].inc()
        for s in scopes:
            self.metrics.denials.labels(kind=s.kind, scope=s.scope).inc()
        return c.Denied(scopes=scopes, retry_after_s=retry)

    # -- operations ------------------------------------------------------------------------

    async def reserve(
        self, request: c.ReserveRequest, key: str | None = None, *, with_scopes: bool = True
    ) -> c.Grant | c.Denied:
        """Hold the request's worst case on every applicable limit, or say which deny it.

        ``with_scopes=False`` leaves the grant's ``scopes`` empty: answer v2's default over
        HTTP (``?detail=scopes`` asks for them), which saves building and encoding them."""
        policy = self.policy(request.org)
        if request.reservation_id and request.reservation_id.startswith(DEGRADED_PREFIX):
            # Commit and release route ids of this namespace to the degraded path (nothing held,
            # the spend recorded): a held reservation in it would never be charged.
            raise InvalidRequest(
                f"reservation ids starting with {DEGRADED_PREFIX!r} are budgetd's own "
                "(degraded grants); choose another id",
                field="reservation_id",
            )
        if request.ttl_s is not None and request.ttl_s > policy.hold_ttl_s:
            raise InvalidRequest(
                f"ttl_s is {request.ttl_s} s; org {request.org!r} holds for at most "
                f"{policy.hold_ttl_s} s (its policy's hold_ttl_s)",
                field="ttl_s",
            )
        now = self.clock.now()
        try:
            amount = worst_case(
                policy.pricing,
                request.model,
                request.input_tokens,
                request.max_tokens,
                request.cache_ttl,
                batch=request.batch,
                us_inference=request.inference_geo == "us",
                fast=request.speed == "fast",
                web_searches=request.web_searches,
                on=now.date(),
            )
            model = policy.pricing.model(request.model).id
            _within_bound(amount, "max_tokens")
        except UnknownModelError as exc:
            raise UnknownModel(str(exc)) from None
        except NotOffered as exc:
            raise Retired(str(exc), field=exc.field) from None
        except PricingError as exc:
            raise InvalidRequest(str(exc), field="speed") from None
        subject = Subject(
            org=request.org,
            user=request.user,
            feature=request.feature,
            key=key,
            tags=tuple(request.tags),
            session=request.session,
        )
        limits = self._limits(
            policy, subject, model, now, request.input_tokens, request.max_tokens, amount
        )
        rid = request.reservation_id or uuid.uuid4().hex
        lease_s = request.ttl_s or policy.hold_ttl_s
        meta = msgspec.json.encode(
            {
                "org": request.org,
                "user": request.user,
                "feature": request.feature,
                "session": request.session,
                "model": model,
                "input_tokens": request.input_tokens,
                "max_tokens": request.max_tokens,
                "metadata": request.metadata,
                # What the ledger entry of its commit is attributed to (attribution.py).
                **attribution.fields(limits.applicable.teams, key, subject.tags),
            }
        ).decode()
        call = ReserveCall(
            org=request.org,
            reservation_id=rid,
            fingerprint=fingerprint(msgspec.structs.replace(request, reservation_id=None), key),
            amount=amount,
            lease_ms=lease_s * 1000,
            keep_ms=KEEP_RESOLVED_MS,
            budgets=limits.budgets,
            buckets=limits.buckets,
            meta=meta,
            input_tokens=request.input_tokens,
            output_tokens=request.max_tokens,
        )
        try:
            outcome = await self.store.reserve(call)
        except StoreUnavailable as exc:
            return self._fail_open_or_closed(limits, subject, model, exc, now)
        if outcome.status == "conflict":
            raise Conflict(
                f"reservation {rid!r} exists with a different request", state=outcome.state
            )
        if outcome.status == "denied":
            denied = self._denied(limits, outcome, amount, now)
            self._observe_org_budgets(
                request.org,
                (
                    (s.scope, s.name, s.limit, (s.spent_micros or 0) + (s.held_micros or 0))
                    for s in denied.scopes
                    if s.kind == "budget"
                ),
            )
            return denied
        self._remember_model(request.org, rid, model)
        replayed = outcome.status == "replay"
        self._decided["replay" if replayed else "granted"].inc()
        if replayed and (
            len(outcome.budgets_after) != len(limits.budgets)
            or len(outcome.buckets_after) != len(limits.buckets)
        ):
            # The first answer's counters, of the limits that applied then: a policy reload
            # since changed which apply, so there is no per-scope detail to rebuild. The hold
            # stands as it was granted.
            return c.Grant(
                reservation_id=rid,
                held_micros=amount,
                expires_at=_from_ms(outcome.deadline_ms),
                scopes=[],
                warnings=[],
                replayed=True,
                durability=self.store.durability,
            )
        self._observe_org_budgets(request.org, self._budget_use(limits, outcome.budgets_after))
        return c.Grant(
            reservation_id=rid,
            held_micros=amount,
            expires_at=_from_ms(outcome.deadline_ms),
            scopes=self._scopes(limits, outcome.budgets_after, outcome.buckets_after)
            if with_scopes
            else [],
            warnings=self._warnings(limits, outcome, amount),
            replayed=replayed,
            durability=self.store.durability,
        )

    def _fail_open_or_closed(
        self, limits: _Limits, subject: Subject, model: str, exc: StoreUnavailable, now: datetime
    ) -> c.Grant:
        closed = [
            b.rule.name
            for b in limits.applicable.budgets
            if b.rule.failure == "fail_closed" and b.rule.mode == "enforce"
        ]
        closed += [
            r.rule.name
            for r in limits.applicable.rates
            if r.rule.failure == "fail_closed" and r.rule.mode == "enforce"
        ]
        if closed:
            self._decided["fail_closed"].inc()
            self.metrics.store_failures.labels(decision="fail_closed").inc()
            raise StoreDown(
                f"budget store unreachable ({exc}); fail-closed limits apply: "
                + ", ".join(sorted(set(closed)))
            )
        self._decided["fail_open"].inc()
        self.metrics.store_failures.labels(decision="fail_open").inc()
        log.warning("store unreachable; granting without a hold (every limit fails open): %s", exc)
        # The id carries who and what, so the commit can still record the spend later.
        token = (
            base64.urlsafe_b64encode(
                msgspec.json.encode(
                    _DegradedSubject(
                        org=subject.org,
                        user=subject.user,
                        feature=subject.feature,
                        model=model,
                        tags=subject.tags,
                        session=subject.session,
                    )
                )
            )
            .decode()
            .rstrip("=")
        )
        return c.Grant(
            reservation_id=f"{DEGRADED_PREFIX}{token}.{uuid.uuid4().hex[:12]}",
            held_micros=0,
            expires_at=now,
            scopes=[],
            warnings=[],
            degraded=True,
            durability=self.store.durability,
        )

    def _remember_model(self, org: str, rid: str, model: str) -> None:
        self._models[(org, rid)] = model
        if len(self._models) > 100_000:
            self._models.popitem(last=False)

    async def _reserved_model(self, org: str, rid: str) -> str:
        model = self._models.get((org, rid))
        if model is not None:
            return model
        view = await self.store.reservation(org, rid)
        if view is None:
            raise ReservationNotFound(f"no reservation {rid!r} in org {org!r}")
        return str(msgspec.json.decode(view.meta)["model"])

    def _price(
        self, policy: OrgPolicy, model: str, usage: Usage, batch: bool, now: datetime
    ) -> tuple[str, int, str]:
        priced = _cost(policy.pricing, model, usage, batch, now)
        _within_bound(priced.cost_micros, "usage")
        lines = msgspec.json.encode({ln.kind: ln.picos for ln in priced.lines}).decode()
        return priced.model, priced.cost_micros, lines

    async def commit(
        self, org: str, rid: str, request: c.CommitRequest, key: str | None = None
    ) -> c.CommitResult:
        """``key``: the caller's key name, which a fail-open grant's spend is charged to (a
        held reservation's counters, key ones included, were fixed at its reserve)."""
        policy = self.policy(org)
        now = self.clock.now()
        if rid.startswith(DEGRADED_PREFIX):
            return await self._commit_degraded(org, rid, request, key)
        model = request.model or await self._reserved_model(org, rid)
        priced_model, amount, lines = self._price(policy, model, request.usage, request.batch, now)
        usage = request.usage
        five, hour = usage.cache_writes
        outcome = await self.store.commit(
            CommitCall(
                org=org,
                reservation_id=rid,
                cost=amount,
                fingerprint=fingerprint(request),
                keep_ms=KEEP_RESOLVED_MS,
                input_tokens=usage.uncached_input + five + hour,
                output_tokens=usage.output,
                clock_ms=_ms(now),
                ledger_fields=(
                    ("model", priced_model),
                    ("pricing_version", policy.pricing.version),
                    ("usage", msgspec.json.encode(usage).decode()),
                    ("lines_picos", lines),
                ),
            )
        )
        if outcome.status == "missing":
            raise ReservationNotFound(f"no reservation {rid!r} in org {org!r}")
        if outcome.status == "conflict":
            raise Conflict(
                f"reservation {rid!r} is already {outcome.state}"
                + (" with a different usage" if outcome.state == "committed" else ""),
                state=outcome.state,
            )
        self._models.pop((org, rid), None)
        if outcome.status == "committed":
            self._committed[outcome.overrun].inc()
            self.metrics.add_spend(org, priced_model, amount)
        return c.CommitResult(
            reservation_id=rid,
            state="committed",
            cost_micros=outcome.cost,
            released_micros=outcome.released,
            overrun=outcome.overrun,
            late=outcome.late,
            ledger_id=outcome.ledger_id,
            pricing_version=policy.pricing.version,
            replayed=outcome.status == "replay",
            durability=self.store.durability,
        )

    async def _commit_degraded(
        self, org: str, rid: str, request: c.CommitRequest, key: str | None
    ) -> c.CommitResult:
        token = rid[len(DEGRADED_PREFIX) :].rsplit(".", 1)[0]
        try:
            subject = msgspec.json.decode(
                base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), type=_DegradedSubject
            )
        except (ValueError, msgspec.DecodeError):
            raise ReservationNotFound(f"no reservation {rid!r} in org {org!r}") from None
        if subject.org != org:
            raise ReservationNotFound(f"no reservation {rid!r} in org {org!r}")
        recorded = await self.record(
            c.UsageRequest(
                org=org,
                model=request.model or subject.model,
                usage=request.usage,
                user=subject.user,
                feature=subject.feature,
                session=subject.session,
                record_id=rid,
                batch=request.batch,
                tags=list(subject.tags),
            ),
            key=key,
        )
        return c.CommitResult(
            reservation_id=rid,
            state="committed",
            cost_micros=recorded.cost_micros,
            released_micros=0,
            overrun=True,
            late=True,
            ledger_id=recorded.ledger_id,
            pricing_version=recorded.pricing_version,
            replayed=recorded.replayed,
            durability=self.store.durability,
        )

    async def release(self, org: str, rid: str) -> c.ReleaseResult:
        self.policy(org)
        if rid.startswith(DEGRADED_PREFIX):
            return c.ReleaseResult(
                reservation_id=rid,
                state="released",
                released_micros=0,
                durability=self.store.durability,
            )
        outcome = await self.store.release(org, rid, KEEP_RESOLVED_MS)
        if outcome.status == "missing":
            raise ReservationNotFound(f"no reservation {rid!r} in org {org!r}")
        self._models.pop((org, rid), None)
        return c.ReleaseResult(
            reservation_id=rid,
            state=outcome.state,
            released_micros=outcome.released,
            durability=self.store.durability,
        )

    async def record(self, request: c.UsageRequest, key: str | None = None) -> c.RecordResult:
        policy = self.policy(request.org)
        now = self.clock.now()
        model, priced, lines = self._price(policy, request.model, request.usage, request.batch, now)
        reported = request.cost_micros is not None
        amount = request.cost_micros if request.cost_micros is not None else priced
        usage = request.usage
        five, hour = usage.cache_writes
        limits = self._limits(
            policy,
            Subject(
                org=request.org,
                user=request.user,
                feature=request.feature,
                key=key,
                tags=tuple(request.tags),
                session=request.session,
            ),
            model,
            now,
            usage.uncached_input + five + hour,
            usage.output,
            amount,
        )
        record_id = request.record_id or uuid.uuid4().hex
        outcome = await self.store.record(
            RecordCall(
                org=request.org,
                record_id=record_id,
                fingerprint=fingerprint(msgspec.structs.replace(request, record_id=None), key),
                cost=amount,
                keep_ms=KEEP_RESOLVED_MS,
                budgets=limits.budgets,
                buckets=limits.buckets,
                input_tokens=usage.uncached_input + five + hour,
                output_tokens=usage.output,
                ledger_fields=(
                    ("model", model),
                    ("pricing_version", policy.pricing.version),
                    ("usage", msgspec.json.encode(usage).decode()),
                    ("lines_picos", lines),
                    ("user", request.user or ""),
                    ("feature", request.feature or ""),
                    ("session", request.session or ""),
                    ("cost_source", "reported" if reported else "priced"),
                    ("priced_micros", str(priced)),
                    *attribution.fields(limits.applicable.teams, key, tuple(request.tags)).items(),
                ),
            )
        )
        if outcome.status == "conflict":
            raise Conflict(f"usage record {record_id!r} exists with a different body")
        if outcome.status == "recorded":
            self.metrics.add_spend(request.org, model, amount)
        return c.RecordResult(
            record_id=record_id,
            cost_micros=amount,
            priced_micros=priced,
            ledger_id=outcome.ledger_id,
            pricing_version=policy.pricing.version,
            replayed=outcome.status == "replay",
            durability=self.store.durability,
        )

    def price(self, request: c.CostRequest) -> c.CostResult:
        table = self.policy(request.org).pricing if request.org else (self.registry.current.pricing)
        now = self.clock.now()
        if request.on is not None:  # the entries in force on another day
            now = datetime.combine(request.on, now.timetz())
        priced = _cost(table, request.model, request.usage, request.batch, now)
        return c.CostResult(
            model=priced.model,
            cost_micros=priced.cost_micros,
            breakdown=[
                c.CostLineOut(kind=ln.kind, quantity=ln.quantity, picos=ln.picos)
                for ln in priced.lines
            ],
            pricing_version=priced.pricing_version,
            price_effective=priced.price_effective.isoformat(),
            band=priced.band,
            speed=priced.speed,
            batch=priced.batch,
            us_inference=priced.us_inference,
        )

    async def budgets(
        self,
        org: str,
        user: str | None,
        feature: str | None,
        model: str | None,
        key: str | None = None,
        tags: tuple[str, ...] = (),
        session: str | None = None,
    ) -> c.BudgetsResult:
        policy = self.policy(org)
        now = self.clock.now()
        if model is not None:
            try:
                model = policy.pricing.model(model).id
            except UnknownModelError as exc:
                raise UnknownModel(str(exc)) from None
        limits = self._limits(
            policy,
            Subject(org=org, user=user, feature=feature, key=key, tags=tags, session=session),
            model or "",
            now,
            0,
            0,
        )
        status = await self.store.status(limits.budgets, limits.buckets)
        self._observe_org_budgets(org, self._budget_use(limits, status.budgets))
        return c.BudgetsResult(org=org, scopes=self._scopes(limits, status.budgets, status.buckets))

    async def expire(self, org: str, limit: int = 1000) -> tuple[int, int]:
        """Reclaim holds of ``org`` whose lease ran out (the sweep calls this per org)."""
        return await self.store.expire(org, limit)
