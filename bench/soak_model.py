"""Soak: the engine's model-based test (tests/model) for longer than CI runs it, with random
seeds, on the embedded store or a real server whose clock it moves (Valkey under libfaketime).

    .venv/bin/python bench/soak_model.py [--backend embedded|valkey] [--examples 200]
        [--steps 80] [--seed N] [--families rolling,huge,deg-ids,script-error,stalled-commit,
        session-expiry]

Prints steps/s, examples run and, for a failure, hypothesis's shrunk step sequence. Every rule
family can be switched on here, also those CI leaves off until main has the fix they need: run
with all of them to hunt. Bounded: it stops after ``--examples`` and removes what it started.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import run_state_machine_as_test
from tests.model.backends import Backend, EmbeddedBackend, ValkeyBackend
from tests.model.clocks import TimeShiftedValkey
from tests.model.machine import EXTRA_FAMILIES, FAMILIES, EngineModel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embedded", "valkey"], default="embedded")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--families", default="", help=f"comma-separated: {sorted(FAMILIES | EXTRA_FAMILIES)}"
    )
    args = parser.parse_args()
    families = frozenset(f for f in args.families.split(",") if f)
    unknown = families - FAMILIES - EXTRA_FAMILIES
    if unknown:
        parser.error(f"unknown families: {sorted(unknown)}")
    logging.getLogger("budgetd").setLevel(logging.ERROR)  # stalls and the embedded store warn
    chosen = args.seed if args.seed is not None else random.randrange(2**32)

    steps = 0
    examples = 0
    server: TimeShiftedValkey | None = None
    backend: Backend
    if args.backend == "valkey":
        server = TimeShiftedValkey(Path(tempfile.mkdtemp(prefix="soak-valkey-")))
        backend = ValkeyBackend(server)
    else:
        backend = EmbeddedBackend()

    class Counted(EngineModel):
        def __init__(self) -> None:
            nonlocal examples
            examples += 1
            super().__init__()

        def check_invariants(self, *a: object, **k: object) -> None:
            nonlocal steps
            steps += 1
            super().check_invariants(*a, **k)  # type: ignore[arg-type]

    Counted.backend = backend
    Counted.families = families
    config = settings(
        max_examples=args.examples,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    started = time.perf_counter()
    failure = None
    try:
        run_state_machine_as_test(seed(chosen)(Counted), settings=config)
    except Exception as exc:  # the shrunk example is printed by hypothesis above
        failure = exc
    finally:
        if server is not None:
            server.stop()
    elapsed = time.perf_counter() - started
    print(
        f"backend={args.backend} seed={chosen} families={','.join(sorted(families)) or '-'} "
        f"examples={examples} steps={steps} seconds={elapsed:.1f} "
        f"steps_per_s={steps / elapsed:.0f} bugs_found={0 if failure is None else 1}"
    )
    if failure is not None:
        found = failure.exceptions if isinstance(failure, BaseExceptionGroup) else (failure,)
        for exc in found:
            # Hypothesis attaches the shrunk step sequence to the exception as notes.
            print(f"\nfailure: {type(exc).__name__}: {str(exc)[:1500]}")
            print("\n".join(getattr(exc, "__notes__", [])))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
