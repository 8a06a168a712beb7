"""What the sync and async clients share: request bodies, answer decoding, the retry policy's
bookkeeping, counters, and the record of reservations granted locally while failing open."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx
import msgspec

from budgetd_client.errors import BudgetdError, ServiceUnavailable, from_problem
from budgetd_client.types import CommitResult, Grant, RecordResult, ReleaseResult

log = logging.getLogger("budgetd_client")

FailMode = Literal["open", "closed"]
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


class Unreachable(Exception):
    """Internal: one attempt could not get an answer from budgetd."""


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
    ) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode must be 'open' or 'closed'")
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.fail_mode: FailMode = fail_mode
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
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

    def _delay(self, attempt: int) -> float:
        return float(self.backoff_s * (2 ** (attempt - 1)))

    @staticmethod
    def _decode(response: httpx.Response, into: type[T]) -> T:
        """The answer as ``into``, or the typed error it stands for."""
        if response.status_code < 300:
            return msgspec.json.decode(response.content, type=into, strict=False)
        raise Base._error(response)

    @staticmethod
    def _error(response: httpx.Response) -> BudgetdError:
        try:
            body = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            body = {"detail": response.text[:500] or f"HTTP {response.status_code}"}
        return from_problem(response.status_code, body, response.headers.get("retry-after"))

    @staticmethod
    def _is_answer(response: httpx.Response) -> bool:
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
