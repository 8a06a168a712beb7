"""ASGI entry point for uvicorn workers: ``budgetd.gateway.asgi:app``, from the environment."""

from __future__ import annotations

from budgetd.collector import freeze_built_app
from budgetd.gateway.serve import create_gateway
from budgetd.gateway.settings import from_env as gateway_from_env
from budgetd.settings import from_env

app = create_gateway(from_env(), gateway_from_env())
freeze_built_app()
