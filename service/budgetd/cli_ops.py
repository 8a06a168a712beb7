"""``budgetd serve | keys new | ledger export|trim|reconcile``: the operational subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from budgetd import ledger
from budgetd.auth import key_line, new_key
from budgetd.serve import run
from budgetd.settings import from_env
from budgetd.store.connect import redis_store
from budgetd.store.scripted import ScriptStore

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _serve(args: argparse.Namespace) -> int:
    run(from_env())
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    key = new_key()
    line = key_line(key, args.org, args.role, args.name)
    if args.file is not None:
        path: Path = args.file
        fresh = not path.exists() or not path.read_text().strip()
        with path.open("a", encoding="utf-8") as out:
            out.write(("keys:\n" if fresh else "") + line + "\n")
        print(f"added to {path}; the key (shown once, store it now):", file=sys.stderr)
    else:
        print("add this entry under `keys:` in the keys file:", file=sys.stderr)
        print(line, file=sys.stderr)
        print("the key (shown once, store it now):", file=sys.stderr)
    print(key)
    return 0


def _ms(value: str | None) -> int | None:
    return ledger.bound_ms(dt.datetime.fromisoformat(value) if value is not None else None)


def _redis_url() -> str:
    url = from_env().redis_url
    if url is None:
        raise SystemExit(
            "budgetd: set BUDGETD_REDIS_URL (the embedded store lives inside the "
            "server process; its ledger cannot be read from here)"
        )
    return url


@contextlib.asynccontextmanager
async def _ledger_store() -> AsyncIterator[ScriptStore]:
    store = redis_store(_redis_url(), timeout_s=10)
    try:
        yield store
    finally:
        await store.close()


async def _export(args: argparse.Namespace) -> int:
    async with _ledger_store() as store:
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        async for chunk in ledger.export(
            store, args.org, args.format, _ms(args.since) or 0, _ms(args.until)
        ):
            out.write(chunk)
        if args.output:
            out.close()
        return 0


async def _trim(args: argparse.Namespace) -> int:
    before = _ms(args.before)
    assert before is not None
    async with _ledger_store() as store:
        try:
            removed = await ledger.archive(store, args.org, before, args.export)
        except ValueError as exc:
            raise SystemExit(f"budgetd: --before: {exc}") from None
    print(f"exported to {args.export}, then removed {removed} entries before {args.before}")
    return 0


async def _reconcile(args: argparse.Namespace) -> int:
    async with _ledger_store() as store:
        report = await ledger.reconcile(store, args.org)
    print(
        f"org {report.org}: {report.entries} ledger entries, {report.counters} counters, "
        f"{report.open_holds} open holds"
    )
    for diff in report.differences:
        print(
            f"DIFFERENCE {diff.key} {diff.field}: counter {diff.counter}, "
            f"ledger+holds {diff.expected} ({diff.counter - diff.expected:+d})"
        )
    print(
        "OK: counters equal ledger plus open holds"
        if report.ok
        else f"{len(report.differences)} difference(s)"
    )
    return 0 if report.ok else 1


def add_serve(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the service (configured by BUDGETD_* environment variables)"
    )
    parser.set_defaults(handler=_serve)


def add_keys(subparsers: Subparsers) -> None:
    keys = subparsers.add_parser("keys", help="API keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="make a key; print it and its keys-file entry")
    new.add_argument("--org", required=True)
    new.add_argument("--role", choices=("app", "admin"), default="app")
    new.add_argument("--name", default="", help="a label for people reading the keys file")
    new.add_argument("--file", type=Path, help="append the entry to this keys file")
    new.set_defaults(handler=_keys_new)


def add_ledger(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("ledger", help="export, trim and reconcile an org's ledger")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the ledger as JSON lines or CSV")
    export.add_argument("--org", required=True)
    export.add_argument("--since", help="ISO date or time (UTC unless it says otherwise)")
    export.add_argument("--until")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path)
    export.set_defaults(handler=lambda a: asyncio.run(_export(a)))
    trim = actions.add_parser("trim", help="export entries before a date, then remove them")
    trim.add_argument("--org", required=True)
    trim.add_argument("--before", required=True)
    trim.add_argument("--export", type=Path, required=True)
    trim.set_defaults(handler=lambda a: asyncio.run(_trim(a)))
    check = actions.add_parser("reconcile", help="check counters = ledger + open holds")
    check.add_argument("--org", required=True)
    check.set_defaults(handler=lambda a: asyncio.run(_reconcile(a)))
