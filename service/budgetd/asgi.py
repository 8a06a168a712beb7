"""ASGI entry point for uvicorn workers: ``budgetd.asgi:app``, configured from the environment.

A configuration mistake is one line naming it on stderr and exit status 2, as from ``budgetd
serve``: ``uvicorn budgetd.asgi:app`` run by hand used to print the import's traceback."""

from __future__ import annotations

import sys

from litestar import Litestar

from budgetd.app import create_app
from budgetd.collector import freeze_built_app
from budgetd.settings import ConfigError, from_env


def _app() -> Litestar:
    try:
        return create_app(from_env())
    except ConfigError as exc:
        print(f"budgetd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _app()
freeze_built_app()
