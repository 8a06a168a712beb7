"""ASGI entry point for uvicorn workers: ``budgetd.asgi:app``, configured from the environment."""

from __future__ import annotations

from budgetd.app import create_app
from budgetd.settings import from_env

app = create_app(from_env())
