"""ASGI entry point for uvicorn workers: ``budgetd.asgi:app``, configured from the environment.

A configuration mistake is one line naming it on stderr and exit status 2, as from ``budgetd
serve``: ``uvicorn budgetd.asgi:app`` run by hand used to print the import's traceback.

Once the app is built, the objects it holds for the process's life (Litestar's routes and
schemas, the price table, the policies: ~100,000 objects) are moved out of the cyclic garbage
collector's reach (``gc.freeze``): a full collection used to walk them all, a ~50 ms stop of
every call in flight on this worker whenever one ran (docs/performance.md, "Garbage collector
pauses"). Objects made later (a reloaded policy, per-user caches) are collected as before."""

from __future__ import annotations

import gc
import sys

from litestar import Litestar

from budgetd.app import create_app
from budgetd.settings import ConfigError, from_env


def _app() -> Litestar:
    try:
        return create_app(from_env())
    except ConfigError as exc:
        print(f"budgetd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _app()
gc.collect()
gc.freeze()
