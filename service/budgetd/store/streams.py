"""Reading a Redis stream page by page: where the next page starts."""

from __future__ import annotations


def after(entry_id: str) -> str:
    """The smallest stream id past ``entry_id`` (``<ms>-<seq>``): the inclusive start of the
    page that follows it (every server we run on takes it, where ``(`` needs Redis 6.2)."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"
