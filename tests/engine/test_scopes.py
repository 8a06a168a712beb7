"""The engineering manager's policy (issue 14): each developer $30/day in Claude Code, the
platform team $2,000/month. Each rule denies at its own limit while the others still have room,
and one reserve checks the user's, every team's and the org's budgets in one atomic step."""

from __future__ import annotations

from collections.abc import Callable

from budgetd.contract import Denied, Grant, ReserveRequest
from budgetd.engine import Engine

MANAGER = """
org: acme
timezone: UTC
teams:
  platform: {users: [alice, bob]}
  infra: {match: "infra-*", users: [alice]}
budgets:
  - {name: org-month, scope: org, limit_usd: 100000, period: month}
  - {name: claude-code-daily, scope: user, feature: claude-code, limit_usd: 30, period: day}
  - {name: team-monthly, scope: team, match: platform, limit_usd: 2000, period: month}
  - {name: infra-daily, scope: team, match: infra, limit_usd: 1000, period: day,
     overrides: {infra: 50}}
"""
# claude-opus-test prices input at $5 per million tokens (tests/data/pricing.yaml): 2,000,000
# input tokens and 1 output token reserve a little over $10.
BIG = 2_000_000


def _reserve(user: str, feature: str, rid: str) -> ReserveRequest:
    return ReserveRequest(
        org="acme",
        model="claude-opus-test",
        input_tokens=BIG,
        max_tokens=1,
        user=user,
        feature=feature,
        reservation_id=rid,
    )


def _denied_by(result: Grant | Denied) -> set[str]:
    assert isinstance(result, Denied), result
    return {s.name for s in result.scopes if s.kind == "budget"}


async def test_each_developer_is_capped_in_claude_code_only(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(MANAGER)
    first = await engine.reserve(_reserve("bob", "claude-code", "b1"))
    assert isinstance(first, Grant)
    scopes = {s.name: s for s in first.scopes}
    assert scopes["claude-code-daily"].entity == "bob"
    assert scopes["team-monthly"].entity == "platform"
    assert isinstance(await engine.reserve(_reserve("bob", "claude-code", "b2")), Grant)
    # $20 of $30 held: a third $10 call would pass $30.
    assert _denied_by(await engine.reserve(_reserve("bob", "claude-code", "b3"))) == {
        "claude-code-daily"
    }
    # The same developer outside Claude Code, and another developer in it, still have room.
    assert isinstance(await engine.reserve(_reserve("bob", "chat", "b4")), Grant)
    assert isinstance(await engine.reserve(_reserve("carol", "claude-code", "c1")), Grant)


async def test_the_team_budget_denies_every_member_while_their_own_budgets_have_room(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(MANAGER.replace("limit_usd: 2000", "limit_usd: 25"))
    assert isinstance(await engine.reserve(_reserve("bob", "chat", "b1")), Grant)
    assert isinstance(await engine.reserve(_reserve("alice", "batch", "a1")), Grant)
    # $20 of $25 held by the team: bob's next call would pass $25.
    assert _denied_by(await engine.reserve(_reserve("bob", "chat", "b2"))) == {"team-monthly"}
    # carol is in no team: only the org counts for her, and it has room.
    assert isinstance(await engine.reserve(_reserve("carol", "chat", "c1")), Grant)


async def test_a_user_in_two_teams_is_checked_against_both(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(MANAGER)
    grant = await engine.reserve(_reserve("alice", "chat", "a1"))
    assert isinstance(grant, Grant)
    teams = {(s.name, s.entity, s.limit) for s in grant.scopes if s.scope == "team"}
    assert teams == {
        ("team-monthly", "platform", 2_000_000_000),
        ("infra-daily", "infra", 50_000_000),
    }
    assert isinstance(await engine.reserve(_reserve("alice", "chat", "a2")), Grant)
    assert isinstance(await engine.reserve(_reserve("alice", "chat", "a3")), Grant)
    assert isinstance(await engine.reserve(_reserve("alice", "chat", "a4")), Grant)
    # $40 held of infra's $50 override: the fifth call is denied by infra alone, and nothing
    # of it was held on platform (one atomic step: all counters or none).
    denied = await engine.reserve(_reserve("alice", "chat", "a5"))
    assert _denied_by(denied) == {"infra-daily"}
    view = await engine.budgets("acme", "bob", None, None)
    platform = next(s for s in view.scopes if s.name == "team-monthly")
    assert platform.held_micros == 4 * grant.held_micros
    # A user matched by the team's glob is a member too: infra's counter is full for them.
    assert _denied_by(await engine.reserve(_reserve("infra-7", "chat", "i1"))) == {"infra-daily"}
