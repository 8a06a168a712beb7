"""What the model test found on main as it was when issue 9 was filed (7734c40), kept as plain
step sequences: hypothesis's shrunk examples, with the steps that did not matter taken out.
Each step is followed by the model's check, as in the machine. All pass since the fixes of
issue 9 landed; each failed on 7734c40 (the message it failed with is quoted).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.model.backends import Backend, EmbeddedBackend, ValkeyBackend
from tests.model.clocks import TimeShiftedValkey
from tests.model.machine import EngineModel


@contextmanager
def machine(*families: str, backend: Backend | None = None) -> Iterator[EngineModel]:
    attrs = {"backend": backend or EmbeddedBackend(), "families": frozenset(families)}
    state = type("Steps", (EngineModel,), attrs)()
    try:
        state.start(edge="london-dst-ends", before_s=0)
        state.store_matches_model()
        yield state
    finally:
        state.teardown()


def test_item1_a_1e23_token_record_never_wraps_a_counter() -> None:
    # 7734c40: "bd:{o:acme}:b:org-month:acme:2026-10: (-9223372036854775808, 0)"
    with machine("huge") as state:
        state.hostile_magnitude(
            kind="record 1e23 input tokens", pick=0, replica=0, user=None, feature=None
        )
        state.store_matches_model()


def test_item2_one_huge_commit_leaves_a_bucket_debt_of_at_most_its_capacity() -> None:
    # 7734c40: "bd:{o:acme}:tb:user-rate:bob:input_tokens in debt: {'t': '-11998782000000', ...}"
    with machine("huge") as state:
        state.reserve(
            replica=0,
            org="acme",
            user="bob",
            feature=None,
            est=300,
            max_tokens=461,
            ttl=None,
            stall=False,
            deg=False,
        )
        state.store_matches_model()
        state.hostile_magnitude(
            kind="commit 200M input tokens", pick=0, replica=0, user=None, feature=None
        )
        state.store_matches_model()


def test_item3_a_commit_that_fails_half_way_writes_nothing() -> None:
    # 7734c40: "bd:{o:acme}:b:org-month:acme:2026-10: (spent, held) (0, 0), model (0, 5)" (the
    # hold voided, the reservation still held and indexed), and with a cost, reconcile:
    # "Difference(key=...org-month..., field='spent', counter=72, expected=0)".
    with machine("script-error") as state:
        state.reserve(
            replica=0,
            org="acme",
            user=None,
            feature=None,
            est=145,
            max_tokens=1,
            ttl=None,
            stall=False,
            deg=False,
        )
        state.store_matches_model()
        state.commit_meets_a_script_error(pick=0, replica=0)
        state.store_matches_model()


def test_item4_a_lease_is_capped_by_the_policy() -> None:
    # 7734c40: granted, expires_at = now + 86,400 s (hold_ttl_s is 60): the lease that let a
    # rolling hour admit twice its limit.
    with machine("rolling") as state:
        state.advance(seconds=900)
        state.store_matches_model()
        state.reserve(
            replica=0,
            org="acme",
            user="alice",
            feature="chat",
            est=355,
            max_tokens=957,
            ttl=86_400,
            stall=False,
            deg=False,
        )
        state.store_matches_model()


def test_item5_a_client_id_starting_with_deg_is_never_a_degraded_one() -> None:
    # 7734c40: the reserve granted a hold under "deg.1"; its commit took the degraded path and
    # answered ReservationNotFound, the hold left to block until its lease ran out.
    with machine("deg-ids") as state:
        state.reserve(
            replica=0,
            org="acme",
            user=None,
            feature=None,
            est=10,
            max_tokens=10,
            ttl=None,
            stall=False,
            deg=True,
        )
        state.store_matches_model()
        if state.model.reservations:  # the rule's precondition: main now refuses the id (422)
            state.settle(action="commit equal", replica=0, pick=0, open_only=True)
            state.store_matches_model()


def test_item11_a_commit_during_a_stall_is_503_on_the_replica_that_did_not_grant_it(
    time_shifted_valkey: TimeShiftedValkey,
) -> None:
    # 7734c40: "AssertionError: StoreUnavailable('redis unreachable: TimeoutError: ')": the
    # other replica's read of the reservation's model was not mapped to store-unavailable, so
    # the commit answered 500, which clients do not retry.
    with machine("stalled-commit", backend=ValkeyBackend(time_shifted_valkey)) as state:
        state.reserve(
            replica=0,
            org="acme",
            user="bob",
            feature="search",
            est=431,
            max_tokens=1759,
            ttl=None,
            stall=False,
            deg=False,
        )
        state.store_matches_model()
        state.settle(action="commit while stalled", replica=1, pick=0, open_only=True)
        state.store_matches_model()
