"""The engine against its reference model, on the embedded store and on a real server.

Bounded and deterministic for CI (a fixed seed, no example database): the same examples run
every time. A seed rather than ``derandomize``: derandomized runs start from the simplest
examples, and 40 of them never committed anything. ``bench/soak_model.py`` runs the same
machine for longer, with random seeds.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.model.backends import Backend, EmbeddedBackend, ValkeyBackend
from tests.model.clocks import TimeShiftedValkey
from tests.model.machine import FAMILIES, EngineModel

EXAMPLES = int(os.environ.get("BUDGETD_MODEL_EXAMPLES", "40"))
CI = settings(
    max_examples=EXAMPLES,
    stateful_step_count=int(os.environ.get("BUDGETD_MODEL_STEPS", "50")),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


SEED = int(os.environ.get("BUDGETD_MODEL_SEED", "20261129"))


def machine_on(backend: Backend, seed_: int | None = SEED) -> type[EngineModel]:
    machine = type(
        f"EngineModelOn{backend.name.title()}",
        (EngineModel,),
        # Every family: main has the fixes of issue 9's items 1-5 and 11 they need.
        {"backend": backend, "families": FAMILIES},
    )
    return machine if seed_ is None else seed(seed_)(machine)


def test_engine_matches_reference_on_embedded_store() -> None:
    run_state_machine_as_test(machine_on(EmbeddedBackend()), settings=CI)


def test_engine_matches_reference_on_real_server(time_shifted_valkey: TimeShiftedValkey) -> None:
    # Fewer examples than embedded: every step's checks are ~40 round trips to a real server.
    real = settings(CI, max_examples=max(1, EXAMPLES * 5 // 8))
    run_state_machine_as_test(machine_on(ValkeyBackend(time_shifted_valkey)), settings=real)
