"""``budgetd serve | keys new | ledger export|trim|reconcile``: the operational subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from budgetd import ledger
from budgetd.auth import (
    KeyEntry,
    KeyName,
    KeysFileError,
    digest,
    key_line,
    new_key,
    read_keys_file,
)
from budgetd.contract import OrgName
from budgetd.expiry import CounterExpiry, counter_expiry
from budgetd.policy.loader import PolicyError, load_policy_dir
from budgetd.serve import run
from budgetd.settings import ConfigError, from_env
from budgetd.store.connect import redis_store
from budgetd.store.migrate import migrate
from budgetd.store.scripted import ScriptStore
from budgetd.yaml_errors import message_words

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _serve(args: argparse.Namespace) -> int:
    run(from_env())
    return 0


def _fail(message: str) -> int:
    print(f"budgetd: {message}", file=sys.stderr)
    return 1


def _format_error(what: str, value: str, type_: Any) -> str | None:
    """Why ``value`` is not a ``type_`` (an org or key name), in words; None when it is."""
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        return f"{what} {value!r} {message_words(str(exc))}"
    return None


def _keys_file(args: argparse.Namespace) -> Path:
    path: Path | None = args.file or from_env().keys_file
    if path is None:
        raise ConfigError("give --file or set BUDGETD_KEYS_FILE")
    return path


def _keys_new(args: argparse.Namespace) -> int:
    problem = _format_error("org", args.org, OrgName) or (
        _format_error("name", args.name, KeyName) if args.name else None
    )
    if problem:
        return _fail(problem)
    policy_dir: Path = args.policy_dir or from_env().policy_dir
    try:
        orgs = load_policy_dir(policy_dir).orgs
    except PolicyError as exc:
        return _fail(f"cannot check the org against {policy_dir}: {exc.errors[0]}")
    if args.org not in orgs:
        return _fail(
            f"org {args.org!r} has no policy in {policy_dir} (orgs: {', '.join(sorted(orgs))})"
        )
    existing: list[KeyEntry] = []
    if args.file is not None and args.file.exists() and args.file.read_text().strip():
        try:
            existing = read_keys_file(args.file)
        except KeysFileError as exc:
            return _fail(str(exc))
    key = new_key()
    name = args.name or f"{args.org}-{args.role}-{digest(key)[:8]}"
    if any(e.name == name for e in existing):
        return _fail(f"a key named {name!r} is already in {args.file}; choose another --name")
    line = key_line(key, args.org, args.role, name)
    if args.file is not None:
        path: Path = args.file
        fresh = not existing
        with path.open("w" if fresh else "a", encoding="utf-8") as out:
            out.write(("keys:\n" if fresh else "") + line + "\n")
        print(f"added to {path}; the key (shown once, store it now):", file=sys.stderr)
    else:
        print("add this entry under `keys:` in the keys file:", file=sys.stderr)
        print(line, file=sys.stderr)
        print("the key (shown once, store it now):", file=sys.stderr)
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    try:
        entries = read_keys_file(path)
    except KeysFileError as exc:
        return _fail(str(exc))
    print(f"{'NAME':<24} {'ORG':<20} {'ROLE':<6} SHA256")
    for e in entries:
        print(f"{e.name or '(unnamed)':<24} {e.org:<20} {e.role:<6} {e.sha256[:12]}…")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    """Rewrite the keys file without the named key (atomically: a running service reloads
    either the old file or the new one, never half of it)."""
    path = _keys_file(args)
    try:
        entries = read_keys_file(path)
    except KeysFileError as exc:
        return _fail(str(exc))
    kept = [e for e in entries if args.name not in (e.name, e.sha256)]
    if len(kept) == len(entries):
        return _fail(f"no key named {args.name!r} in {path}")
    body = {"keys": [msgspec.to_builtins(e) for e in kept]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    print(f"revoked {args.name!r}; {len(kept)} key(s) left in {path}", file=sys.stderr)
    return 0


def _ms(value: str | None, flag: str) -> int | None:
    """An ISO bound as epoch ms, or a one-line error naming the flag."""
    if value is None:
        return None
    try:
        return ledger.bound_ms(dt.datetime.fromisoformat(value))
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from None


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
    since, until = _ms(args.since, "--since"), _ms(args.until, "--until")
    async with _ledger_store() as store:
        if not await ledger.has_ledger(store, args.org):
            return _fail(f"no ledger for org {args.org!r} in this Redis (unknown org?)")
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        try:
            async for chunk in ledger.export(store, args.org, args.format, since or 0, until):
                out.write(chunk)
            out.flush()
        except BrokenPipeError:
            # The reader left (``| head``): that is its choice, not an error. Point stdout at
            # devnull so the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        finally:
            if args.output:
                out.close()
        return 0


async def _trim(args: argparse.Namespace) -> int:
    before = _ms(args.before, "--before")
    assert before is not None
    async with _ledger_store() as store:
        try:
            removed = await ledger.archive(store, args.org, before, args.export)
        except ValueError as exc:
            raise SystemExit(f"budgetd: --before: {exc}") from None
    print(f"exported to {args.export}, then removed {removed} entries before {args.before}")
    return 0


def _expiry(org: str) -> CounterExpiry | None:
    """The org's counter expiry from the policy directory (BUDGETD_POLICY_DIR), if it loads:
    without it a counter that expired by design cannot be told from a lost one."""
    policy_dir = from_env().policy_dir
    try:
        policy = load_policy_dir(policy_dir).orgs.get(org)
    except PolicyError as exc:
        print(f"budgetd: no policy from {policy_dir} ({exc.errors[0]})", file=sys.stderr)
        return None
    if policy is None:
        print(f"budgetd: org {org!r} has no policy in {policy_dir}", file=sys.stderr)
        return None
    return counter_expiry(policy)


async def _reconcile(args: argparse.Namespace) -> int:
    expiry = _expiry(args.org)
    if expiry is None:
        print("budgetd: every counter that is gone counts as a difference", file=sys.stderr)
    async with _ledger_store() as store:
        report = await ledger.reconcile(store, args.org, expiry)
    print(
        f"org {report.org}: {report.entries} ledger entries, {report.counters} counters, "
        f"{report.open_holds} open holds, {len(report.expired)} counters expired by design "
        "(not compared)"
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
    new.add_argument(
        "--name", default="", help="stable, unique name (default: <org>-<role>-<8 hex>)"
    )
    new.add_argument("--file", type=Path, help="append the entry to this keys file")
    new.add_argument(
        "--policy-dir", type=Path, help="where the org must have a policy (BUDGETD_POLICY_DIR)"
    )
    new.set_defaults(handler=_keys_new)
    listing = actions.add_parser("list", help="the keys of a keys file (names, orgs, roles)")
    listing.add_argument("--file", type=Path, help="the keys file (BUDGETD_KEYS_FILE)")
    listing.set_defaults(handler=_keys_list)
    revoke = actions.add_parser(
        "revoke", help="remove a key from the keys file (a running service drops it on reload)"
    )
    revoke.add_argument("name", help="the key's name (or its full sha256)")
    revoke.add_argument("--file", type=Path, help="the keys file (BUDGETD_KEYS_FILE)")
    revoke.set_defaults(handler=_keys_revoke)


async def _migrate(args: argparse.Namespace) -> int:
    expiry = _expiry(args.org)
    if expiry is None:
        print(
            "budgetd: migrate needs the org's policy (sub-bucket widths, expiries)", file=sys.stderr
        )
        return 2
    async with _ledger_store() as store:
        done = await migrate(store, args.org, expiry)
    print(
        f"org {done.org}: folded {done.counters} counters and {done.buckets} buckets into "
        f"today's layout, rewrote {done.plans} open holds' plans"
    )
    for key in done.skipped:
        print(f"SKIPPED {key}: its budget is not in the policy", file=sys.stderr)
    return 0


def add_store(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("store", help="maintain the Redis layout")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate_ = actions.add_parser(
        "migrate",
        help="fold an org's counters from the layout before issue 13 into today's (idempotent)",
    )
    migrate_.add_argument("--org", required=True)
    migrate_.set_defaults(handler=lambda a: asyncio.run(_migrate(a)))


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
