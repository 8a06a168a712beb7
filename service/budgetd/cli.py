"""``budgetd`` command line: policy validation, the schema, cost of a usage object, the price list;
``serve``, ``keys`` and ``ledger`` live in :mod:`budgetd.cli_ops`.

Each subcommand sets a ``handler(args) -> int`` default on its parser; :func:`main` calls it.
Add a subcommand by writing an ``_add_<name>(subparsers)`` function and calling it from
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from budgetd.api.openapi import document, model_ids
from budgetd.app import OPERATIONS, create_app
from budgetd.cli_ops import add_keys, add_ledger, add_serve, add_store
from budgetd.cli_report import add_report_commands
from budgetd.gateway.cli import add_gateway
from budgetd.money import MICROS_PER_USD, PICOS_PER_MICRO, format_usd
from budgetd.policy.loader import PRICING_FILE, PolicyError, load_policy_dir
from budgetd.policy.registry import PolicyRegistry
from budgetd.policy.schema import json_schema
from budgetd.pricing import PricingError, cost
from budgetd.pricing_table import (
    PricingFileError,
    PricingTable,
    Rates,
    UnknownModelError,
    load_pricing,
)
from budgetd.settings import ConfigError, Settings
from budgetd.usage import Usage

DEFAULT_POLICY_DIR = Path("policies")
DEFAULT_PRICING = DEFAULT_POLICY_DIR / PRICING_FILE
PICOS_PER_USD = MICROS_PER_USD * PICOS_PER_MICRO


def _error(message: str) -> int:
    print(f"budgetd: {message}", file=sys.stderr)
    return 1


def _load_pricing(path: Path) -> PricingTable:
    try:
        return load_pricing(path)
    except FileNotFoundError:
        raise PricingFileError(f"{path}: pricing table not found") from None


# ---- policy validate | policy schema ----


def _policy_validate(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if not directory.is_dir():
        return _error(f"{directory}: not a directory")
    try:
        policies = load_policy_dir(directory, pricing_path=args.pricing)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    print(f"OK: {len(policies.orgs)} org(s) in {len(policies.files)} file(s)")
    return 0


def schema_text() -> str:
    """The policy JSON Schema exactly as ``policies/schema.json`` stores it."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def _policy_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0


def _add_policy(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = subparsers.add_parser("policy", help="check policy files, print their JSON Schema")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate", help="load every policy file of DIR; exit 1 and list the mistakes if any"
    )
    validate.add_argument(
        "directory", metavar="DIR", nargs="?", type=Path, default=DEFAULT_POLICY_DIR
    )
    validate.add_argument(
        "--pricing", type=Path, default=None, help="price table (default: DIR/pricing.yaml)"
    )
    validate.set_defaults(handler=_policy_validate)
    schema = actions.add_parser("schema", help="print the JSON Schema of a policy file")
    schema.set_defaults(handler=_policy_schema)


# ---- cost ----


def _usd_exact(picos: int) -> str:
    """A USD amount from picos: six decimals, more only where the amount needs them."""
    text = f"{Decimal(picos) / PICOS_PER_USD:.12f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${int(whole):,}.{frac.ljust(6, '0')}"


def _cost(args: argparse.Namespace) -> int:
    try:
        usage = msgspec.json.decode(args.usage, type=Usage)
    except msgspec.DecodeError as exc:
        return _error(f"--usage is not a valid usage object: {exc}")
    try:
        table = _load_pricing(args.pricing)
        result = cost(table, args.model, usage, batch=args.batch, on=args.on)
    except (PricingFileError, UnknownModelError, PricingError) as exc:
        return _error(str(exc.args[0]) if exc.args else str(exc))
    if args.json:
        out: dict[str, Any] = msgspec.to_builtins(result)
        out["cost_usd"] = format_usd(result.cost_micros).lstrip("$").replace(",", "")
        print(json.dumps(out, indent=2))
        return 0
    modifiers = [
        name
        for name, on in (
            ("long context", result.band == "long_context"),
            ("fast", result.speed == "fast"),
            ("batch", result.batch),
            ("US inference", result.us_inference),
        )
        if on
    ]
    print(f"model:   {result.model}")
    print(f"prices:  {result.pricing_version}, entry of {result.price_effective.isoformat()}")
    print(f"applied: {', '.join(modifiers) or 'standard'}")
    print()
    print(f"{'kind':<16}{'quantity':>12}  {'USD':>18}")
    for line in result.lines:
        print(f"{line.kind:<16}{line.quantity:>12,}  {_usd_exact(line.picos):>18}")
    print(f"{'total':<16}{'':>12}  {format_usd(result.cost_micros):>18}")
    print(f"{'cost_micros':<16}{'':>12}  {result.cost_micros:>18}")
    return 0


def _add_cost(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cost", help="price one call from its usage object")
    parser.add_argument("model", metavar="MODEL", help="model id or alias, as the API returned it")
    parser.add_argument(
        "--usage",
        required=True,
        metavar="JSON",
        help='the response\'s usage object, e.g. \'{"input_tokens": 10, "output_tokens": 5}\'',
    )
    parser.add_argument("--batch", action="store_true", help="the call went through the Batch API")
    parser.add_argument(
        "--on",
        type=dt.date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="price with the entry in force that day (default: the newest entry)",
    )
    parser.add_argument("--pricing", type=Path, default=DEFAULT_PRICING, metavar="PATH")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_cost)


# ---- pricing ----


def _plain(value: Decimal) -> str:
    """A decimal without trailing zeros after the point and without exponent: 10, 0.3, 6.25."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _per_mtok(picos_per_token: int) -> str:
    # picos per token = micro-dollars per million tokens
    return _plain(Decimal(picos_per_token) / MICROS_PER_USD)


def _rate_cells(rates: Rates) -> list[str]:
    return [
        _per_mtok(rates.input),
        _per_mtok(rates.output),
        _per_mtok(rates.cache_write_5m),
        _per_mtok(rates.cache_write_1h),
        _per_mtok(rates.cache_read),
    ]


def _pricing(args: argparse.Namespace) -> int:
    try:
        table = _load_pricing(args.pricing)
    except PricingFileError as exc:
        return _error(str(exc))
    day_of_status: dt.date = args.on or dt.datetime.now(dt.UTC).date()
    header = [
        "MODEL", "FAMILY", "STATUS", "EFFECTIVE", "BAND",
        "INPUT", "OUTPUT", "WRITE-5M", "WRITE-1H", "READ", "US-GEO",
    ]  # fmt: skip
    rows: list[list[str]] = []
    for model in table.unique_models():
        first = True
        for entry in reversed(model.entries):  # newest first
            multiplier = entry.us_inference_multiplier
            us = (
                f"x{_plain(Decimal(multiplier.numerator) / multiplier.denominator)}"
                if multiplier is not None
                else "-"
            )
            status = model.status_on(day_of_status)
            lead = [model.id, model.family, status] if first else ["", "", ""]
            first = False
            day = entry.effective.isoformat()
            rows.append([*lead, day, "standard", *_rate_cells(entry.rates), us])
            if entry.long_context is not None:
                band = f">{entry.long_context.threshold_tokens:,} prompt"
                rows.append(["", "", "", "", band, *_rate_cells(entry.long_context.rates), us])
            if entry.fast is not None:
                ends = entry.fast_window.ends
                fast = f"fast (until {ends.isoformat()})" if ends else "fast"
                rows.append(["", "", "", "", fast, *_rate_cells(entry.fast), us])
        if model.aliases:
            rows.append([f"  = {', '.join(model.aliases)}", *[""] * (len(header) - 1)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    # An alias line may be wider than the MODEL column; it is the row's only cell.
    widths[0] = max(len(r[0]) for r in [header, *rows] if r[1] or r is header)
    print(
        f"pricing {table.version}: USD per million tokens; batch -{table.batch_discount_pct}%; "
        f"web search {format_usd(table.web_search_picos_per_request * 1000 // PICOS_PER_MICRO)}"
        " per 1,000"
    )
    print(f"source: {table.source}")
    for row in [header, *rows]:
        if not row[1] and row[0].startswith("  = "):
            print(row[0])
            continue
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _add_pricing(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("pricing", help="print the price table")
    parser.add_argument("--pricing", type=Path, default=DEFAULT_PRICING, metavar="PATH")
    parser.add_argument(
        "--on",
        type=dt.date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="models' status on that day (default: today)",
    )
    parser.set_defaults(handler=_pricing)


# ---- openapi ----


def openapi_text() -> str:
    """The service's OpenAPI document exactly as ``docs/openapi.json`` stores it (and as
    ``/schema/openapi.json`` serves it)."""
    # A registry that never loads: the document depends on no policy, only on the price table.
    app = create_app(Settings(), registry=PolicyRegistry(Path()))
    ids = model_ids(_load_pricing(DEFAULT_PRICING))
    return json.dumps(document(OPERATIONS, app.openapi_schema.to_schema(), ids), indent=2) + "\n"


def _openapi(args: argparse.Namespace) -> int:
    sys.stdout.write(openapi_text())
    return 0


def _add_openapi(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("openapi", help="print the HTTP API's OpenAPI document")
    parser.set_defaults(handler=_openapi)


# ---- entry point ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budgetd", description="Spend budgets and rate quotas for Claude API usage."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_policy(subparsers)
    _add_cost(subparsers)
    _add_pricing(subparsers)
    _add_openapi(subparsers)
    add_serve(subparsers)
    add_keys(subparsers)
    add_ledger(subparsers)
    add_store(subparsers)
    add_report_commands(subparsers)
    add_gateway(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"budgetd: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
