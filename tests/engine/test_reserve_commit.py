"""Reserve → commit → release behaviour, on the embedded store and on real Redis."""

from __future__ import annotations

from budgetd.contract import CommitRequest, Denied, Grant, ReserveRequest
from budgetd.engine import Engine
from budgetd.usage import Usage

# claude-haiku-test: $1/MTok input, $5/MTok output → 1 µ$ per input token, 5 µ$ per output token.
HAIKU = "claude-haiku-test"


def req(**kw: object) -> ReserveRequest:
    base: dict[str, object] = {
        "org": "acme",
        "model": HAIKU,
        "input_tokens": 1000,
        "max_tokens": 1000,
        "user": "bob",
        "feature": "chat",
    }
    base.update(kw)
    return ReserveRequest(**base)  # type: ignore[arg-type]


async def test_grant_holds_worst_case_on_every_budget(engine: Engine) -> None:
    grant = await engine.reserve(req(reservation_id="r1"))
    assert isinstance(grant, Grant)
    assert grant.held_micros == 1000 * 1 + 1000 * 5
    budgets = {s.name: s for s in grant.scopes if s.kind == "budget"}
    assert set(budgets) == {"org-month", "feature-day", "user-day"}
    for scope in budgets.values():
        assert scope.held_micros == 6000
        assert scope.spent_micros == 0
    assert budgets["user-day"].remaining == 1_000_000 - 6000


async def test_commit_settles_actual_cost_and_frees_rest(engine: Engine) -> None:
    await engine.reserve(req(reservation_id="r1"))
    result = await engine.commit(
        "acme", "r1", CommitRequest(usage=Usage(input_tokens=400, output_tokens=100))
    )
    assert result.cost_micros == 400 + 500
    assert result.released_micros == 6000 - 900
    assert not result.overrun
    view = await engine.budgets("acme", "bob", "chat", None)
    for scope in view.scopes:
        if scope.kind == "budget":
            assert (scope.spent_micros, scope.held_micros) == (900, 0)


async def test_denial_names_every_denying_scope_and_writes_nothing(engine: Engine) -> None:
    # bob's daily budget is $1 = 1,000,000 µ$; each call holds 120,000 × 5 µ$ = 600,000 µ$.
    assert isinstance(await engine.reserve(req(max_tokens=120_000, input_tokens=0)), Grant)
    before = await engine.budgets("acme", "bob", "chat", HAIKU)
    result = await engine.reserve(req(max_tokens=120_000, input_tokens=0))
    assert isinstance(result, Denied)
    assert [(s.kind, s.name) for s in result.scopes] == [("budget", "user-day")]
    denied = result.scopes[0]
    assert (denied.spent_micros, denied.held_micros, denied.requested) == (0, 600_000, 600_000)
    # 15:00 UTC is 10:00 in New York: the day ends in 14 hours.
    assert result.retry_after_s == denied.retry_after_s == 14 * 3600
    after = await engine.budgets("acme", "bob", "chat", HAIKU)
    budgets = [s for s in before.scopes if s.kind == "budget"]
    assert budgets == [s for s in after.scopes if s.kind == "budget"]
    # Buckets only refill (Redis time moves on): the denied call took no token from them.
    for b, a in zip(before.scopes, after.scopes, strict=True):
        if b.kind == "rate":
            assert a.remaining >= b.remaining


async def test_request_larger_than_the_limit_has_no_retry_after(engine: Engine) -> None:
    result = await engine.reserve(req(max_tokens=200_001, input_tokens=0))
    assert isinstance(result, Denied)
    assert result.retry_after_s is None
    assert result.scopes[0].requested == 1_000_005


async def test_override_applies(engine: Engine) -> None:
    grant = await engine.reserve(req(user="alice", max_tokens=300_000, input_tokens=0))
    assert isinstance(grant, Grant)  # alice has $2: 1.5 M µ$ fits
    user = next(s for s in grant.scopes if s.name == "user-day")
    assert (user.limit, user.source) == (2_000_000, "override")


async def test_release_frees_hold_once(engine: Engine) -> None:
    await engine.reserve(req(reservation_id="r1"))
    first = await engine.release("acme", "r1")
    second = await engine.release("acme", "r1")
    assert (first.state, first.released_micros) == ("released", 6000)
    assert (second.state, second.released_micros) == ("released", 0)
    view = await engine.budgets("acme", "bob", "chat", None)
    assert all(s.held_micros == 0 for s in view.scopes if s.kind == "budget")
