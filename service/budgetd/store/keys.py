"""Every Redis key budgetd writes, built here and nowhere else.

All keys of one org carry the hash tag ``{o:<org>}``, so a reserve or commit touches one slot and
runs as one script on plain Redis and on Redis Cluster alike.
"""

from __future__ import annotations

PREFIX = "bd"


def tag(org: str) -> str:
    return f"{PREFIX}:{{o:{org}}}"


ROLLING_CHUNK = 25
"""Sub-buckets per rolling counter hash: a window (24 sub-buckets and the current one) spans at
most two hashes, so its check is two reads, not twenty-five."""


def counters(org: str, period_key: str) -> str:
    """Hash of every budget counter of one org in one period: fields ``<budget>|<entity>|s``
    (spent) and ``|h`` (held), and ``_x`` (the expiry last set on the hash). ``period_key``: a
    calendar period id (``2026-11``, ``2026-11-29``, ``2026-W48``, ``2026-11-29T23+0000``),
    ``r<width s>:<chunk>`` for rolling sub-buckets (fields ``<budget>|<entity>|<index>|s``),
    ``held`` for the held amounts of rolling budgets, ``s:<session id>`` for sessions (no
    ``_x``: ``g``, the hash's generation, the Redis ms it was created at; lib.lua)."""
    return f"{tag(org)}:c:{period_key}"


def rolling_chunk(org: str, width_s: int, index: int) -> str:
    """Counter hash of the rolling sub-buckets ``index`` belongs to (width ``width_s``)."""
    return f"{rolling_prefix(org, width_s)}{index // ROLLING_CHUNK}"


def rolling_field(field: str, index: int) -> str:
    """A rolling budget's spent field for sub-bucket ``index`` in its chunk hash."""
    return f"{field}|{index}|s"


def rolling_prefix(org: str, width_s: int) -> str:
    """Prefix of the sub-bucket hashes of rolling budgets of width ``width_s`` (the chunk
    number follows)."""
    return counters(org, f"r{width_s}:")


def rolling_held(org: str) -> str:
    """Hash of the held amounts of every rolling budget of the org (expiry slides)."""
    return counters(org, "held")


def session_counters(org: str, session: str) -> str:
    """Hash of the counters of one session (expiry slides with each write)."""
    return counters(org, f"s:{session}")


def budget_field(budget: str, entity: str) -> str:
    """A budget's field prefix in a counter hash (names and ids never contain ``|``)."""
    return f"{budget}|{entity}"


def charged(key: str, field: str) -> str:
    """A counter as a ledger entry's ``charged`` field names it: hash and field."""
    return f"{key}#{field}"


def bucket(org: str, rule: str, entity: str) -> str:
    """Hash of one rate-limit rule's buckets for one entity: ``<kind>.t`` (level × 60000) per
    kind, ``ms`` (the time of every kind's level), and ``x`` (the expiry last set)."""
    return f"{tag(org)}:tb:{rule}:{entity}"


def legacy_period_counter(org: str, budget: str, entity: str, period_id: str) -> str:
    """Before issue 13's layout: one hash {spent, held} per budget, entity and period (read by
    ``budgetd store migrate`` and by reconcile for old ledger entries)."""
    return f"{tag(org)}:b:{budget}:{entity}:{period_id}"


def legacy_rolling_held(org: str, budget: str, entity: str) -> str:
    return f"{tag(org)}:h:{budget}:{entity}"


def legacy_bucket(org: str, rule: str, entity: str, kind: str) -> str:
    return f"{tag(org)}:tb:{rule}:{entity}:{kind}"


def org_prefix(org: str) -> str:
    """Prefix the scripts extend with ``r:<id>`` (reservations) and ``ev:<id>`` (event markers)."""
    return f"{tag(org)}:"


def reservation(org: str, reservation_id: str) -> str:
    return f"{org_prefix(org)}r:{reservation_id}"


def events(org: str) -> str:
    """Stream of budget events (threshold crossings, blocks, overruns), delivered by the jobs."""
    return f"{tag(org)}:events"


def dead_letters(org: str) -> str:
    """List of events whose delivery gave up after the last retry."""
    return f"{tag(org)}:dead"


def holds(org: str) -> str:
    """Sorted set of open holds, scored by lease deadline (Redis ms)."""
    return f"{tag(org)}:holds"


def ledger(org: str) -> str:
    """Stream of settled entries (commits, records and adjustments)."""
    return f"{tag(org)}:ledger"


def ledger_archive(org: str) -> str:
    """Hash: counter key → micros charged by ledger entries since trimmed away."""
    return f"{tag(org)}:archive"


def usage_record(org: str, record_id: str) -> str:
    """Idempotency record of one reservation-less usage record."""
    return f"{tag(org)}:u:{record_id}"


def adjustment(org: str, adjustment_id: str) -> str:
    """Idempotency record of one admin adjustment."""
    return f"{tag(org)}:adj:{adjustment_id}"


def report_cursor(org: str) -> str:
    """String: the id of the last ledger entry the reports follower folded into aggregates."""
    return f"{tag(org)}:rep:cursor"


def report_rows(org: str, view: str, bucket: str) -> str:
    """Hash: entity (a model, user, feature or session) → packed totals of one day or month."""
    return f"{tag(org)}:rep:{view}:{bucket}"


def report_rank(org: str, view: str, bucket: str) -> str:
    """Sorted set: entity → spend (micros) of one day or month, for top-N without a scan."""
    return f"{tag(org)}:rep:{view}:{bucket}:rank"


def audit(org: str) -> str:
    """Stream of audited admin actions: policy reloads and plans, reads of ledger and reports."""
    return f"{tag(org)}:audit"


def policy_digest() -> str:
    """String: digest of the last policy files whose reload was audited (all orgs)."""
    return f"{PREFIX}:policy-digest"
