"""Loading the Lua scripts: ``lib.lua`` is prepended to each, then the text is registered once
with redis-py, which calls it by SHA and reloads it on NOSCRIPT by itself."""

from __future__ import annotations

from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "reserve",
    "commit",
    "release",
    "expire",
    "record",
    "adjust",
    "status",
    "emit",
    "trim",
    "migrate",
)


def _read(name: str) -> str:
    return (resources.files("budgetd.store") / "scripts" / f"{name}.lua").read_text("utf-8")


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the shared helpers, then the script itself."""
    if name not in SCRIPT_NAMES:
        raise KeyError(name)
    return _read("lib") + "\n" + _read(name)
