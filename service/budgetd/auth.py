"""API keys: ``Authorization: Bearer <key>``; the keys file holds SHA-256 digests only.

Keys file format (YAML), one entry per key::

    keys:
      - sha256: 3f1c...   # digest of the key; the key itself is never stored
        org: acme
        role: app          # app: its own org only; admin: its own org, incl. admin endpoints
        name: checkout-service   # stable, unique in the file (optional in older files)
        user: svc-checkout # budgetd gateway: the user and feature its calls are charged to
        feature: checkout
        attribution_headers: false  # gateway: may x-budgetd-user / -feature name others?

The file is live configuration, like the policies: ``LiveKeys`` reloads it when it changes (a
removed key stops working within the poll interval); a broken or deleted file keeps the last
good set and says so in ``/readyz`` and ``budgetd_config_load_error_total``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from prometheus_client import Counter

from budgetd.contract import Identifier, OrgName
from budgetd.errors import Forbidden, Unauthorized
from budgetd.policy.registry import LoadStatus
from budgetd.yaml_errors import YamlDocument, describe_pattern, located_validation_error

log = logging.getLogger("budgetd")

Role = Literal["app", "admin"]
KEY_PREFIX = "bdk_"
KeyName = OrgName
"""A key's name follows the org names' rule (same pattern, same words in errors)."""


class KeyEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sha256: Annotated[
        str,
        msgspec.Meta(
            pattern=describe_pattern(r"^[0-9a-f]{64}$", "64 lowercase hex digits (a SHA-256)")
        ),
    ]
    org: OrgName
    role: Role = "app"
    name: KeyName | None = None
    """Stable and unique in the file; older files may leave it out."""
    user: Identifier | None = None
    """The user that ``budgetd gateway`` charges this key's calls to (none: org only)."""
    feature: Identifier | None = None
    """The feature that ``budgetd gateway`` charges this key's calls to."""
    attribution_headers: bool = False
    """Whether gateway calls may name another user / feature per call (``x-budgetd-user``,
    ``x-budgetd-feature``): for a shared backend that knows its end users."""


class KeysFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    keys: list[KeyEntry] = msgspec.field(default_factory=list)


class KeysFileError(ValueError):
    """One line: ``file:line: field: what is wrong``."""


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    org: str | None
    """None only when authentication is off (no keys file): any org."""
    role: Role
    name: str
    user: str | None = None
    feature: str | None = None
    attribution_headers: bool = False

    @property
    def key(self) -> str | None:
        """The key's name, for key-scope budgets; None when authentication is off."""
        return None if self.org is None else self.name

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


def read_keys_file(path: Path) -> list[KeyEntry]:
    """The entries of ``path``; ``KeysFileError`` (one located line) when it is not valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysFileError(f"{path}: keys file not found") from None
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read the keys file: {exc.strerror}") from None
    document = YamlDocument.parse(text, str(path), error_type=KeysFileError)
    try:
        entries = msgspec.convert(document.data or {}, KeysFile).keys
    except msgspec.ValidationError as exc:
        raise KeysFileError(located_validation_error(exc, document, KeysFile)) from None
    seen_digests: set[str] = set()
    seen_names: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.sha256 in seen_digests:
            line = document.line_of(("keys", i, "sha256"))
            raise KeysFileError(f"{path}:{line}: keys[{i}].sha256: the same key is listed twice")
        if entry.name is not None and entry.name in seen_names:
            line = document.line_of(("keys", i, "name"))
            raise KeysFileError(
                f"{path}:{line}: keys[{i}].name: {entry.name!r} names another key already"
            )
        seen_digests.add(entry.sha256)
        if entry.name is not None:
            seen_names.add(entry.name)
    return entries


class KeyRing:
    """One loaded set of keys."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        self._by_digest = {e.sha256: e for e in entries}
        self.remembered: dict[str, Principal] = {}
        """``Authorization`` value → principal, of the keys this ring has accepted: a known key
        is not hashed again on every request (issue 13). At most one entry per key of the ring
        (the value must be exactly ``Bearer <key>``; a refused one is never kept), and gone
        with the ring when the file is reloaded. The lookup hashes the value with Python's
        per-process random string hash, as the digest lookup below does with the digest."""

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        return cls(read_keys_file(path))

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is not None and (known := self.remembered.get(authorization)):
            return known
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
        principal = self.remembered[authorization] = Principal(
            org=entry.org,
            role=entry.role,
            name=entry.name or entry.sha256[:12],
            user=entry.user,
            feature=entry.feature,
            attribution_headers=entry.attribution_headers,
        )
        return principal


Signature = tuple[int, int] | None


def _signature(path: Path) -> Signature:
    """mtime and size, following symlinks (a Kubernetes Secret update swaps the ``..data``
    link: the resolved file changes even when the path's own entry does not)."""
    with contextlib.suppress(OSError):
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    return None


class LiveKeys:
    """The keys file as live configuration. Readers take ``ring`` once per request; a reload
    swaps the reference, so no request sees half of two sets."""

    def __init__(self, path: Path, load_errors: Counter | None = None) -> None:
        self.path = path
        self.load_errors = load_errors
        """Incremented on every failed load (``budgetd_config_load_error_total``)."""
        self.ring: KeyRing | None = None
        self.last_status = LoadStatus(ok=False, errors=("not loaded yet",))
        self._seen: Signature | object = object()

    @property
    def loaded(self) -> bool:
        return self.ring is not None

    def reload_if_changed(self) -> LoadStatus | None:
        """Reload when the file changed (or on the first call); the new status, or None when
        nothing changed."""
        signature = _signature(self.path)
        if signature == self._seen:
            return None
        self._seen = signature
        return self.reload()

    def reload(self) -> LoadStatus:
        try:
            ring = KeyRing.load(self.path)
        except KeysFileError as exc:
            self.last_status = LoadStatus(ok=False, errors=(str(exc),))
            if self.load_errors is not None:
                self.load_errors.inc()
            log.error("keys reload failed; keeping the last good keys: %s", exc)
            return self.last_status
        self.ring = ring
        self.last_status = LoadStatus(ok=True, files=(str(self.path),))
        log.info("keys loaded: %d key(s) from %s", len(ring), self.path)
        return self.last_status
