"""The live PolicySet: atomic swap on reload; a failed reload keeps the last good set."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from budgetd.policy.loader import PolicyError, load_policy_dir
from budgetd.policy.model import OrgPolicy, PolicySet

log = logging.getLogger(__name__)


class LoadStatus(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    errors: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


class PolicyRegistry:
    """Holds the current PolicySet. Readers take ``current`` once per request: a reload swaps
    the reference, so a request never sees half of an old set and half of a new one."""

    def __init__(self, directory: Path, pricing_path: Path | None = None) -> None:
        self.directory = directory
        self.pricing_path = pricing_path
        self._current: PolicySet | None = None
        self.last_status = LoadStatus(ok=False, errors=("not loaded yet",))
        self.load_errors = 0

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> PolicySet:
        if self._current is None:
            raise LookupError("no policy has loaded successfully yet")
        return self._current

    def org(self, org: str) -> OrgPolicy | None:
        return self._current.orgs.get(org) if self._current is not None else None

    def reload(self) -> LoadStatus:
        try:
            fresh = load_policy_dir(self.directory, self.pricing_path)
        except PolicyError as exc:
            self.load_errors += 1
            self.last_status = LoadStatus(ok=False, errors=tuple(exc.errors))
            log.error("policy reload failed; keeping the last good policy:\n%s", exc)
            return self.last_status
        self._current = fresh
        self.last_status = LoadStatus(ok=True, files=fresh.files)
        log.info("policy loaded: %d org(s) from %d file(s)", len(fresh.orgs), len(fresh.files))
        return self.last_status

    def replace(self, policies: PolicySet) -> None:
        """Install a PolicySet built elsewhere (tests, embedded quickstart)."""
        self._current = policies
        self.last_status = LoadStatus(ok=True, files=policies.files)
