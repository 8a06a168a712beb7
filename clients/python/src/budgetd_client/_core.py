"""Everything the sync and async clients do, written once.

Each endpoint is a *flow*: a generator that yields the HTTP calls it needs (:class:`Http`) and
gets each decoded answer (or its typed error, thrown in) back. :class:`BudgetdClient` and
:class:`AsyncBudgetdClient` only run flows, one with plain calls and one with ``await``; the
retry policy (stamina: exponential backoff with jitter under an overall deadline) is the same
object in both."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec
import stamina

from budgetd_client._wire import Reply
from budgetd_client.errors import BudgetdError, NotFound, ServiceUnavailable, from_problem
from budgetd_client.types import (
    AdjustmentResult,
    BudgetsResult,
    CommitResult,
    CostResult,
    Grant,
    RecordResult,
    ReleaseResult,
)

log = logging.getLogger("budgetd_client")

FailMode = Literal["open", "closed"]
Speed = Literal["standard", "fast"]
CacheTTL = Literal["5m", "1h"]
T = TypeVar("T")
USER_AGENT = "budgetd-client/0.1.0"
LOCAL_DEGRADED_KEEP = 10_000
"""How many fail-open reservations the client remembers until they are committed or released."""


def new_id() -> str:
    """A fresh reservation / record id. Chosen here, before the first attempt, so a retry of the
    same call carries the same id and budgetd answers it as a replay, never a second hold."""
    return "r-" + uuid.uuid4().hex


def usage_dict(usage: Any) -> dict[str, Any]:
    """The usage object as JSON-ready data, unchanged: a mapping, one of our Structs, or the
    Anthropic SDK's pydantic ``Usage`` (only the fields the API actually sent)."""
    if isinstance(usage, msgspec.Struct):
        built = msgspec.to_builtins(usage)
        assert isinstance(built, dict)
        return built
    if isinstance(usage, Mapping):
        return dict(usage)
    to_dict = getattr(usage, "to_dict", None)
    if callable(to_dict):
        out = to_dict(mode="json")
        if isinstance(out, dict):
            return out
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        out = dump(mode="json")
        if isinstance(out, dict):
            return out
    raise TypeError(f"not a usage object: {type(usage).__name__}")


def body_of(**fields: Any) -> bytes:
    """JSON of the fields that are set (the service fills in its defaults for the rest; its
    idempotency fingerprint is taken after that, so omitting a default changes nothing)."""
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not None})


@dataclass
class ClientStats:
    """Counters of the client's dealings with budgetd (read them, export them as you like)."""

    requests: int = 0
    retries: int = 0
    unreachable: int = 0
    """Operations that gave up: budgetd could not be reached (after retries)."""
    failed_open: int = 0
    """Reserves granted locally, without a hold, because budgetd was unreachable (fail_open)."""
    failed_closed: int = 0
    """Reserves refused because budgetd was unreachable (fail_closed)."""
    degraded_commits: int = 0
    """Fail-open calls whose usage reached budgetd later, at commit."""
    unrecorded: int = 0
    """Commits whose usage could not be recorded at all (budgetd still unreachable)."""
    settle_errors: int = 0
    """Guard commits/releases that failed (logged; the Claude response was still returned)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A reservation granted locally while failing open: what a later commit needs to record
    the spend through ``/v1/usage``."""

    org: str
    model: str
    user: str | None
    feature: str | None
    metadata: dict[str, str] | None
    batch: bool
    tags: list[str] | None = None
    session: str | None = None


class Unreachable(Exception):
    """Internal: one attempt could not get an answer from budgetd (retried)."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Http:
    """One call to budgetd: the flow gets ``into`` back, or the typed error."""

    method: str
    path: str
    into: type[Any]
    body: bytes | None = None
    params: dict[str, str] | None = None


Flow = Generator[Http, Any, T]


class Base:
    """Configuration and pure helpers of both clients."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        org: str | None,
        fail_mode: FailMode,
        retries: int,
        backoff_s: float,
        deadline_s: float,
    ) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode must be 'open' or 'closed'")
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.fail_mode: FailMode = fail_mode
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s
        self.stats = ClientStats()
        self._headers = {"user-agent": USER_AGENT, "content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._pending_lock = threading.Lock()

    def _org(self, org: str | None) -> str:
        chosen = org or self.org
        if not chosen:
            raise ValueError("org is required (pass org=... here or to the client)")
        return chosen

    def _first_retry_in(self, started: float) -> float | None:
        """After a failed first attempt: how long to wait before the second (``backoff_s`` plus
        up to as much again of jitter, none in stamina's testing mode), or None to give up (no
        retries, stamina deactivated, or the wait would end past ``deadline_s``).

        The first attempt runs outside stamina: building its retry loop (tenacity's state, a
        future, a lock) cost as much client CPU as the request itself, on every call, for the
        rare call that fails. The schedule is stamina's all the same: this first wait is its
        first backoff, and :meth:`_retrying` continues from its second."""
        if not self.retries or not stamina.is_active():
            return None
        wait = 0.0 if stamina.is_testing() else self.backoff_s + random.uniform(0, self.backoff_s)
        return wait if time.monotonic() - started + wait < self.deadline_s else None

    def _retrying(self, started: float) -> Any:
        """stamina's retry loop for the attempts after the first and its wait: ``retries`` more,
        exponential backoff continuing from ``2 × backoff_s`` with up to ``backoff_s`` of
        jitter, all within what is left of ``deadline_s`` since ``started``."""
        return stamina.retry_context(
            on=Unreachable,
            attempts=self.retries,
            timeout=max(0.001, self.deadline_s - (time.monotonic() - started)),
            wait_initial=2 * self.backoff_s,
            wait_max=max(self.backoff_s, 1.0),
            wait_jitter=self.backoff_s,
        )

    def _attempt(self, number: int) -> None:
        self.stats.bump("requests")
        if number > 1:
            self.stats.bump("retries")

    def _answer(self, http: Http, response: Reply) -> Any:
        """The decoded answer; raises :class:`Unreachable` for a 5xx worth retrying."""
        if response.status_code >= 500:
            # budgetd's own 503 (store down, fail-closed limit) is an answer, raised as is
            # once retries run out; any other 5xx means budgetd is not working.
            raise Unreachable(
                self._error(response)
                if self._is_answer(response)
                else f"HTTP {response.status_code}"
            )
        return self._decode(response, http.into)

    def _failed(self, http: Http, exc: BaseException) -> Unreachable:
        log.info("budgetd %s %s attempt failed: %r", http.method, http.path, exc)
        return Unreachable(exc)

    def _gave_up(self, http: Http, last: Unreachable) -> BudgetdError:
        if isinstance(last.cause, ServiceUnavailable) and not last.cause.unreachable:
            return last.cause
        return self._unreachable(f"{http.method} {http.path}", last.cause)

    # -- the flows -------------------------------------------------------------------------

    def reserve_flow(
        self,
        *,
        model: str,
        input_tokens: int,
        max_tokens: int,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        reservation_id: str | None = None,
        ttl_s: int | None = None,
        cache_ttl: CacheTTL | None = None,
        batch: bool = False,
        inference_geo: str | None = None,
        speed: Speed | None = None,
        web_searches: int = 0,
        metadata: dict[str, str] | None = None,
        detail: bool = False,
        tags: list[str] | None = None,
        session: str | None = None,
    ) -> Flow[Grant]:
        """Hold the worst-case cost of a call on every applicable limit. ``session`` names
        the session (an agent run, a conversation) the call belongs to.

        ``detail=True`` asks for the state of every applicable limit in ``Grant.scopes``
        (``?detail=scopes``); without it the answer is the short one (answer v2).

        Raises:
            BudgetExceeded: a limit denied it (``.scopes``, ``.retry_after``); nothing is held.
            ServiceUnavailable: budgetd unreachable and ``fail_mode="closed"``, or budgetd's
                store is down and a fail-closed limit applies.
        """
        org = self._org(org)
        rid = reservation_id or new_id()
        body = body_of(
            org=org,
            model=model,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            user=user,
            feature=feature,
            reservation_id=rid,
            ttl_s=ttl_s,
            cache_ttl=cache_ttl,
            batch=batch or None,
            inference_geo=inference_geo,
            speed=speed,
            web_searches=web_searches or None,
            metadata=metadata,
            tags=tags or None,
            session=session,
        )
        try:
            grant: Grant = yield Http(
                "POST",
                "/v1/reservations",
                Grant,
                body=body,
                params={"detail": "scopes"} if detail else None,
            )
        except ServiceUnavailable as exc:
            if not exc.unreachable:
                raise
            if self.fail_mode == "closed":
                raise self._refuse(rid, org, exc) from None
            pending = Pending(
                org=org,
                model=model,
                user=user,
                feature=feature,
                metadata=metadata,
                batch=batch,
                tags=tags or None,
                session=session,
            )
            return self._grant_locally(rid, pending, exc)
        return grant

    def commit_flow(
        self,
        reservation_id: str,
        usage: Any,
        *,
        model: str | None = None,
        batch: bool = False,
        org: str | None = None,
    ) -> Flow[CommitResult]:
        """Settle the actual cost from the response's ``usage`` (sent verbatim).

        ``model`` is the response's model (the reserved one when None). A fail-open reservation
        is recorded through ``/v1/usage`` instead; if budgetd is still unreachable the result's
        ``state`` is ``"unrecorded"`` (logged and counted, never raised).
        """
        org = self._org(org)
        used = usage_dict(usage)
        call = Http(
            "POST",
            f"/v1/reservations/{reservation_id}/commit",
            CommitResult,
            body=body_of(usage=used, model=model, batch=batch or None),
            params={"org": org},
        )
        pending = self._pending_of(reservation_id)
        if pending is None:
            committed: CommitResult = yield call
            return committed
        try:
            try:
                # An attempt of the reserve may have reached budgetd before it went away.
                result: CommitResult = yield call
            except NotFound:
                record = yield from self.record_flow(
                    org=pending.org,
                    model=model or pending.model,
                    usage=used,
                    user=pending.user,
                    feature=pending.feature,
                    record_id=reservation_id,
                    batch=batch or pending.batch,
                    metadata=pending.metadata,
                    tags=pending.tags,
                    session=pending.session,
                )
                result = self._as_commit(reservation_id, record)
        except ServiceUnavailable as exc:
            self._forget(reservation_id)
            return self._unrecorded(reservation_id, org, used, exc)
        self._forget(reservation_id)
        self.stats.bump("degraded_commits")
        return result

    def release_flow(self, reservation_id: str, *, org: str | None = None) -> Flow[ReleaseResult]:
        """Void the hold (the call failed). Releasing twice answers the state it is in."""
        org = self._org(org)
        call = Http(
            "POST", f"/v1/reservations/{reservation_id}/release", ReleaseResult, params={"org": org}
        )
        if self._pending_of(reservation_id) is None:
            released: ReleaseResult = yield call
            return released
        self._forget(reservation_id)
        try:
            released = yield call
        except (NotFound, ServiceUnavailable):
            return self._released_locally(reservation_id)
        return released

    def record_flow(
        self,
        *,
        model: str,
        usage: Any,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        record_id: str | None = None,
        batch: bool = False,
        metadata: dict[str, str] | None = None,
        cost_micros: int | None = None,
        tags: list[str] | None = None,
        session: str | None = None,
    ) -> Flow[RecordResult]:
        """Record a call made without a reservation (batch results, agent runs). The same
        ``record_id`` records once; one is generated when None, so retries are safe.
        ``cost_micros`` charges a reported cost instead of budgetd's price of ``usage``."""
        body = body_of(
            org=self._org(org),
            model=model,
            usage=usage_dict(usage),
            user=user,
            feature=feature,
            record_id=record_id or new_id(),
            batch=batch or None,
            metadata=metadata,
            cost_micros=cost_micros,
            tags=tags or None,
            session=session,
        )
        recorded: RecordResult = yield Http("POST", "/v1/usage", RecordResult, body=body)
        return recorded

    def adjust_flow(
        self,
        *,
        budget: str,
        amount_micros: int,
        reason: str,
        entity: str | None = None,
        org: str | None = None,
        adjustment_id: str | None = None,
    ) -> Flow[AdjustmentResult]:
        """Admin keys: move one budget's spend in its current period by ``amount_micros``
        (negative for a refund or credit), with a ledger entry saying why. The same
        ``adjustment_id`` adjusts once; one is generated when None, so retries are safe."""
        body = body_of(
            org=self._org(org),
            budget=budget,
            entity=entity,
            amount_micros=amount_micros,
            reason=reason,
            adjustment_id=adjustment_id or new_id(),
        )
        adjusted: AdjustmentResult = yield Http(
            "POST", "/v1/admin/adjustments", AdjustmentResult, body=body
        )
        return adjusted

    def cost_flow(
        self, *, model: str, usage: Any, batch: bool = False, org: str | None = None
    ) -> Flow[CostResult]:
        """What ``usage`` costs, recorded nowhere."""
        body = body_of(model=model, usage=usage_dict(usage), batch=batch or None, org=org)
        cost: CostResult = yield Http("POST", "/v1/cost", CostResult, body=body)
        return cost

    def budgets_flow(
        self,
        *,
        org: str | None = None,
        user: str | None = None,
        feature: str | None = None,
        model: str | None = None,
        session: str | None = None,
        tags: Sequence[str] = (),
    ) -> Flow[BudgetsResult]:
        """Each limit that applies to the scope: limit, spent, held, remaining, period;
        ``tags``: the tag budgets these tags count in."""
        params = {"org": self._org(org)}
        named = (
            ("user", user),
            ("feature", feature),
            ("model", model),
            ("session", session),
            ("tags", ",".join(tags)),
        )
        params.update({k: v for k, v in named if v})
        budgets: BudgetsResult = yield Http("GET", "/v1/budgets", BudgetsResult, params=params)
        return budgets

    @staticmethod
    def _decode(response: Reply, into: type[T]) -> T:
        """The answer as ``into``, or the typed error it stands for."""
        if response.status_code < 300:
            return msgspec.json.decode(response.content, type=into, strict=False)
        raise Base._error(response)

    @staticmethod
    def _error(response: Reply) -> BudgetdError:
        try:
            body = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            body = {"detail": response.text[:500] or f"HTTP {response.status_code}"}
        return from_problem(response.status_code, body, response.headers.get("retry-after"))

    @staticmethod
    def _is_answer(response: Reply) -> bool:
        """Whether a 5xx is budgetd's own decision (it reached its store and chose 503 for a
        fail-closed limit) rather than budgetd (or a proxy before it) not working."""
        return (
            response.status_code == 503
            and response.headers.get("content-type", "").startswith("application/problem+json")
            and b"store-unavailable" in response.content
        )

    def _unreachable(self, what: str, cause: BaseException | str) -> ServiceUnavailable:
        self.stats.bump("unreachable")
        return ServiceUnavailable(
            f"budgetd unreachable at {self.base_url} ({what}): {cause}", unreachable=True
        )

    # -- fail-open bookkeeping -------------------------------------------------------------

    def _grant_locally(self, rid: str, pending: Pending, exc: ServiceUnavailable) -> Grant:
        self.stats.bump("failed_open")
        log.warning(
            "budgetd unreachable; failing OPEN: reservation %s (org=%s user=%s feature=%s "
            "model=%s) proceeds without a hold: %s",
            rid,
            pending.org,
            pending.user,
            pending.feature,
            pending.model,
            exc.detail,
        )
        with self._pending_lock:
            self._pending[rid] = pending
            while len(self._pending) > LOCAL_DEGRADED_KEEP:
                self._pending.popitem(last=False)
        return Grant(
            reservation_id=rid,
            held_micros=0,
            expires_at=datetime.now(UTC),
            scopes=[],
            warnings=[],
            degraded=True,
        )

    def _refuse(self, rid: str, org: str, exc: ServiceUnavailable) -> ServiceUnavailable:
        self.stats.bump("failed_closed")
        log.error(
            "budgetd unreachable; failing CLOSED: reservation %s (org=%s) refused: %s",
            rid,
            org,
            exc.detail,
        )
        return exc

    def _pending_of(self, rid: str) -> Pending | None:
        with self._pending_lock:
            return self._pending.get(rid)

    def _forget(self, rid: str) -> None:
        with self._pending_lock:
            self._pending.pop(rid, None)

    @staticmethod
    def _as_commit(rid: str, record: RecordResult) -> CommitResult:
        # Recorded without a hold: by definition an overrun of a zero hold, and late.
        return CommitResult(
            reservation_id=rid,
            state="committed",
            cost_micros=record.cost_micros,
            released_micros=0,
            overrun=True,
            late=True,
            ledger_id=record.ledger_id,
            pricing_version=record.pricing_version,
            replayed=record.replayed,
        )

    def _unrecorded(
        self, rid: str, org: str, usage: dict[str, Any], exc: Exception
    ) -> CommitResult:
        self.stats.bump("unrecorded")
        log.error(
            "budgetd unreachable; usage of fail-open reservation %s (org=%s) NOT recorded: "
            "usage=%s: %s",
            rid,
            org,
            msgspec.json.encode(usage).decode(),
            exc,
        )
        return CommitResult(
            reservation_id=rid,
            state="unrecorded",
            cost_micros=0,
            released_micros=0,
            overrun=False,
            late=False,
            ledger_id="",
            pricing_version="",
        )

    @staticmethod
    def _released_locally(rid: str) -> ReleaseResult:
        return ReleaseResult(reservation_id=rid, state="released", released_micros=0)
