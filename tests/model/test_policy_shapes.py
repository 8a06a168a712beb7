"""Short step sequences of the model test over the policy shapes each example draws (per-entity
overrides, cost-velocity limits), so CI runs the cases that matter on every change even when
its seeded examples do not reach them; each step is checked against the reference as in the
machine. ``bench/soak_model.py`` hunts beyond them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.model.backends import EmbeddedBackend
from tests.model.machine import VELOCITY, EngineModel

SESSION_VELOCITY = list(VELOCITY).index(("acme", "session-velocity"))


@contextmanager
def machine(
    overrides: list[tuple[tuple[str, str, str], int, bool]] | None = None,
    velocity: dict[tuple[str, str], int] | None = None,
) -> Iterator[EngineModel]:
    attrs = {"backend": EmbeddedBackend(), "families": frozenset()}
    state = type("Steps", (EngineModel,), attrs)()
    drawn = tuple((velocity or {}).get(rule, 0) for rule in VELOCITY)
    try:
        state.start(edge="london-dst-ends", before_s=0, overrides=overrides or [], velocity=drawn)
        state.store_matches_model()
        yield state
    finally:
        state.teardown()


def reserve(state: EngineModel, max_tokens: int, user: str | None = None, **kw: object) -> None:
    state.reserve(
        replica=0,
        org="acme",
        user=user,
        feature=None,
        est=0,
        max_tokens=max_tokens,
        ttl=None,
        stall=False,
        deg=False,
        **kw,  # type: ignore[arg-type]
    )
    state.store_matches_model()


def test_a_commit_after_a_refill_gives_back_no_more_than_the_capacity() -> None:
    # 30,000 µ$/min per session: a 10,000 µ$ hold, the bucket full again after 30 s, then a
    # commit of half the hold: its refund would put the bucket at 35,000 µ$.
    with machine(velocity={("acme", "session-velocity"): 100}) as state:
        reserve(state, 2_000, session="s1")
        state.advance(seconds=30)
        state.store_matches_model()
        state.settle(action="commit under", replica=1, pick=0, open_only=True)
        state.store_matches_model()
        bucket = next(iter(state.model.buckets.values()))
        assert bucket.levels["cost_micros"][0] == 30_000 * 60_000


def test_cost_velocity_denies_with_the_refill_time_and_a_release_gives_it_back() -> None:
    # 15,000 µ$/min: a 10,000 µ$ hold leaves 5,000; the next 10,000 waits 20 s (the machine
    # checks the denial's Retry-After against the reference); a release refunds the estimate.
    with machine(velocity={("acme", "session-velocity"): 50}) as state:
        reserve(state, 2_000, session="s1")
        reserve(state, 2_000, session="s1")
        assert len(state.model.reservations) == 1
        reserve(state, 2_000, session="s2")  # another session: its own bucket
        assert len(state.model.reservations) == 2
        state.settle(action="release", replica=0, pick=0, open_only=True)
        state.store_matches_model()
        reserve(state, 2_000, session="s1")
        assert len(state.model.reservations) == 3
        state.view(replica=1, org="acme", user=None, feature=None, key=None, tags=[], session="s1")


def test_an_override_beats_the_default_for_users_teams_and_sessions() -> None:
    overrides = [
        (("acme", "user-rate", "alice"), 0, False),  # alice: no requests at all
        (("acme", "team-day", "blue"), 25, True),  # bob's team: a quarter of the default
        (("acme", "session-velocity", "s2"), 500, True),
        (("acme", "run", "s2"), 500, True),
    ]
    with machine(overrides, velocity={("acme", "session-velocity"): 50}) as state:
        reserve(state, 10, user="alice")  # denied: larger than alice's limit, no Retry-After
        assert not state.model.reservations
        reserve(state, 3_000, user="bob")  # 15,000 µ$ of blue's 17,500: granted
        reserve(state, 1_000, user="bob")  # 5,000 more: past blue's 17,500, denied
        assert len(state.model.reservations) == 1
        reserve(state, 5_000, session="s2")  # 25,000 µ$: past the default 15,000/min
        assert len(state.model.reservations) == 2
        for user, session in (("alice", None), ("bob", "s2"), (None, "s1")):
            state.view(
                replica=0, org="acme", user=user, feature=None, key=None, tags=[], session=session
            )
