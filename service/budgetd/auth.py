"""API keys: ``Authorization: Bearer <key>``; the keys file holds SHA-256 digests only.

Keys file format (YAML), one entry per key::

    keys:
      - sha256: 3f1c...   # digest of the key; the key itself is never stored
        org: acme
        role: app          # app: its own org only; admin: its own org, incl. admin endpoints
        name: checkout-service
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from budgetd.errors import Forbidden, Unauthorized

Role = Literal["app", "admin"]
KEY_PREFIX = "bdk_"


class KeyEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    org: str
    role: Role = "app"
    name: str = ""


class KeysFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    keys: list[KeyEntry] = msgspec.field(default_factory=list)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    org: str | None
    """None only when authentication is off (no keys file): any org."""
    role: Role
    name: str

    def require_org(self, org: str) -> None:
        """An app or admin key acts on its own org only; anything else is 403, never a no-op."""
        if self.org is not None and org != self.org:
            raise Forbidden(f"this key belongs to org {self.org!r}, not {org!r}", field="org")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_line(key: str, org: str, role: Role, name: str = "") -> str:
    """The keys-file entry for ``key`` (what ``budgetd keys new`` prints)."""
    entry = f"  - sha256: {digest(key)}\n    org: {org}\n    role: {role}"
    return entry + (f"\n    name: {name}" if name else "")


ANONYMOUS = Principal(org=None, role="admin", name="anonymous (authentication off)")


class KeyRing:
    """The loaded keys; ``None`` as a ring means authentication is off."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        self._by_digest = {e.sha256: e for e in entries}

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls(msgspec.convert(data, KeysFile).keys)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing 'Authorization: Bearer <key>' header")
        key = authorization.removeprefix("Bearer ")
        if key != key.strip() or not key:
            # A key pasted with a space or newline is a different string: say so, never trim it
            # into one that works (what is sent must be exactly the key).
            raise Unauthorized("the API key has whitespace around it: send the key exactly")
        wanted = digest(key)
        entry = self._by_digest.get(wanted)
        # compare_digest on the found digest keeps the check's timing independent of the key.
        if entry is None or not hmac.compare_digest(entry.sha256, wanted):
            raise Unauthorized("unknown API key")
        return Principal(org=entry.org, role=entry.role, name=entry.name)
