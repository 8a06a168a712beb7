"""Reload the policy directory when its files change; a bad file keeps the last good policy."""

from __future__ import annotations

import contextlib
from pathlib import Path

from budgetd.engine import Engine
from budgetd.reports.audit import policy_reloaded

Signature = tuple[tuple[str, int, int], ...]


def policy_signature(directory: Path) -> Signature:
    """Names, mtimes and sizes of the policy files, following symlinks: a Kubernetes ConfigMap
    update swaps the ``..data`` link, which a watch on one file would stop seeing; polling the
    directory's resolved files sees every swap."""
    out = []
    for path in sorted(directory.glob("*.y*ml")):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            out.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class PolicyWatcher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._seen: Signature | None = None

    async def reload_if_changed(self) -> bool:
        """Reload when the files changed (or on the first call); True when a reload ran."""
        signature = policy_signature(self.engine.registry.directory)
        if signature == self._seen:
            return False
        trigger = "start" if self._seen is None else "files"
        self._seen = signature
        registry = self.engine.registry
        before = registry.current if registry.loaded else None
        status = await registry.reload_in_thread()
        self.engine.metrics.policy_loaded.set(1 if self.engine.registry.loaded else 0)
        if not status.ok:
            self.engine.metrics.policy_load_errors.inc()
        else:
            await policy_reloaded(self.engine, before, trigger)
        return True
