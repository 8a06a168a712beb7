"""Keep a built app's lasting objects out of CPython's full garbage collections.

A full (generation-2) collection walks every object the process holds, and a built app holds
~100,000 for life (Litestar's routes and OpenAPI schemas, the price table, the policies): a
52-88 ms stop of every call in flight on the worker whenever CPython ran one (docs/performance.md,
"Garbage collector pauses"). Frozen once the app is built, they are never walked again; objects
made later (a reloaded policy, per-user caches, connections) are collected as before. The cost:
cyclic garbage among frozen objects is never freed (at most one replaced start-up policy)."""

from __future__ import annotations

import gc


def freeze_built_app() -> None:
    """Call once per process, after the app is built and before it serves."""
    gc.collect()
    gc.freeze()
