"""Who a ledger entry's spend belongs to: written by the engine (a commit's in its reservation's
JSON, taken at reserve; a record's in its own fields) and read back, the one way, by the jobs,
the reports and the ledger export.

Teams are recorded, not derived from the user at read time: a bill wants the membership the
call was charged under (the team budgets its reserve checked), so a policy edit after the call
does not move past spend between teams. Empty scopes are left out and lists are comma-joined
(team, key and tag names cannot hold a comma), so an entry of the usual shape grows by nothing
and one with a key and two tags by some forty bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

SESSION_KEYS = ("session_id", "session")
"""Reservation metadata keys that name a session (the first one present wins)."""


class Attributed(msgspec.Struct, frozen=True, kw_only=True):
    user: str = ""
    feature: str = ""
    session: str = ""
    teams: tuple[str, ...] = ()
    key: str = ""
    tags: tuple[str, ...] = ()


def fields(teams: tuple[str, ...], key: str | None, tags: tuple[str, ...]) -> dict[str, str]:
    """The scopes of a call beyond user and feature, as an entry keeps them (empty ones left
    out; a tag given twice counted once, as the tag budgets count it)."""
    out: dict[str, str] = {}
    if teams:
        out["teams"] = ",".join(teams)
    if key:
        out["key"] = key
    if tags:
        out["tags"] = ",".join(dict.fromkeys(tags))
    return out


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()  # the usual entry: no teams, no tags (the follower reads every one)
    return tuple(n for n in str(value).split(",") if n)


def of_entry(entry: Mapping[str, str]) -> Attributed:
    """The attribution of a ledger entry: a commit's is in its reservation's JSON, a record's in
    its own fields (an adjustment names none)."""
    source: Mapping[str, Any] = entry
    session = entry.get("session", "")
    meta = entry.get("reservation")
    if meta:
        try:
            decoded = msgspec.json.decode(meta)
        except msgspec.DecodeError:
            decoded = {}
        source = decoded if isinstance(decoded, dict) else {}
        extra = source.get("metadata")
        extra = extra if isinstance(extra, dict) else {}
        session = str(
            source.get("session") or next((extra[k] for k in SESSION_KEYS if extra.get(k)), "")
        )
    return Attributed(
        user=str(source.get("user") or ""),
        feature=str(source.get("feature") or ""),
        session=session,
        teams=_names(source.get("teams")),
        key=str(source.get("key") or ""),
        tags=_names(source.get("tags")),
    )
