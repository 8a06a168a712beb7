"""``budgetd gateway``: the command (hooked into ``budgetd.cli`` with one line)."""

from __future__ import annotations

import argparse

from budgetd.gateway import serve
from budgetd.gateway.settings import from_env as gateway_from_env
from budgetd.settings import from_env


def _gateway(args: argparse.Namespace) -> int:
    serve.run(from_env(), gateway_from_env())
    return 0


def add_gateway(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="an Anthropic API-compatible endpoint that budgets every call "
        "(point ANTHROPIC_BASE_URL at it; BUDGETD_GATEWAY_* environment variables)",
    )
    parser.set_defaults(handler=_gateway)
