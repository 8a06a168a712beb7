"""Every Redis key budgetd writes, built here and nowhere else.

All keys of one org carry the hash tag ``{o:<org>}``, so a reserve or commit touches one slot and
runs as one script on plain Redis and on Redis Cluster alike.
"""

from __future__ import annotations

PREFIX = "bd"


def tag(org: str) -> str:
    return f"{PREFIX}:{{o:{org}}}"


def period_counter(org: str, budget: str, entity: str, period_id: str) -> str:
    """Hash {spent, held} of one budget, one entity, one calendar period or rolling sub-bucket."""
    return f"{tag(org)}:b:{budget}:{entity}:{period_id}"


def rolling_held(org: str, budget: str, entity: str) -> str:
    """Hash {held} of a rolling-window budget (its spend lives in sub-bucket counters)."""
    return f"{tag(org)}:h:{budget}:{entity}"


def bucket(org: str, rule: str, entity: str, kind: str) -> str:
    """Hash {t, ms, x}: a token bucket (x: the expiry its scripts last set)."""
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
