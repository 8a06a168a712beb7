"""The policy file, as msgspec Structs. ``policies/schema.json`` is generated from these.

One file describes one org. Several files describe several orgs; an org named twice is an error.
Money is written in USD (``limit_usd: 12.50``) and converted to exact micros by the loader.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from budgetd.yaml_errors import describe_pattern

Name = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(
            r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
            "a name of up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    ),
]
Usd = Annotated[
    float | int | str,
    msgspec.Meta(description="USD amount, e.g. 12.50 (converted to exact micro-dollars)"),
]
Percent = Annotated[int, msgspec.Meta(ge=1, le=100)]
PerMinute = Annotated[int, msgspec.Meta(ge=0)]
Period = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(
            r"^(hour|day|week|month|session|[1-9][0-9]*[hd])$",
            "hour, day, week, month, session, or a rolling window like 24h or 7d",
        ),
        description="calendar hour|day|week|month in the org's time zone, a rolling window "
        "like 24h or 7d, or session (scope session only: no calendar, it ends after `idle` "
        "without calls)",
    ),
]
Idle = Annotated[
    str,
    msgspec.Meta(
        pattern=describe_pattern(r"^[1-9][0-9]{0,6}[smhd]$", "a duration like 90s, 30m, 2h or 1d"),
        description="how long a session lives without a call, e.g. 30m",
    ),
]
SpikeFactor = Annotated[float, msgspec.Meta(ge=1, le=1000)]
Mode = Literal["enforce", "shadow"]
Failure = Literal["fail_closed", "fail_open"]
HardAction = Literal["block", "warn"]
Scope = Literal["org", "feature", "user", "team", "key", "tag", "session"]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Channel(_Strict, frozen=True):
    """Exactly one of ``webhook``, ``slack`` or ``log``."""

    webhook: (
        Annotated[
            str, msgspec.Meta(pattern=describe_pattern(r"^https?://", "an http:// or https:// URL"))
        ]
        | None
    ) = None
    slack: (
        Annotated[str, msgspec.Meta(pattern=describe_pattern(r"^https://", "an https:// URL"))]
        | None
    ) = None
    log: Literal["debug", "info", "warning", "error"] | None = None
    secret_env: str | None = None
    """Webhook only: the environment variable holding the HMAC-SHA256 signing secret."""
    digest: bool = False
    """Also send this channel a daily digest: yesterday's spend, top spenders, split by model."""


class Defaults(_Strict, frozen=True):
    thresholds_pct: list[Percent] = msgspec.field(default_factory=lambda: [50, 80, 100])
    on_hard_limit: HardAction = "block"
    mode: Mode = "enforce"
    failure: Failure = "fail_closed"
    rate_failure: Failure = "fail_open"
    notify: list[Name] = msgspec.field(default_factory=list)
    hold_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 300
    forecast: bool = True
    """Warn once per period when the recent burn rate would exceed a calendar budget."""
    spike_factor: SpikeFactor | None = 3.0
    """Alert when a scope's last-hour spend is above this multiple of its 24-hour hourly
    average; null turns spike alerts off."""
    spike_min_usd: Usd = 1
    """Hours that spend less than this never count as a spike (noise floor)."""


class Team(_Strict, frozen=True):
    """A team's members: user ids, a glob on user ids, or both. A user may be in several."""

    users: list[str] = msgspec.field(default_factory=list)
    match: str | None = None
    """A glob on user ids (``platform-*``); its users belong to the team too."""


class Budget(_Strict, frozen=True):
    name: Name
    scope: Scope
    limit_usd: Usd
    """For scope user/feature: the default limit of every user/feature."""
    period: Period
    idle: Idle | None = None
    """``period: session`` only (and required there): the session's budget ends when it has
    had no call for this long; the same session id after that starts a new budget."""
    match: str = "*"
    """Scope feature: a glob on feature names (``search-*``); each matching feature has its own
    counter. Scope user: a glob on user ids. Scope team: a glob on team names. Scope key: a glob
    on API key names (the keys file's ``name``). Scope tag: a glob on the call's tags
    (``project:*``); each matching tag has its own counter. Scope session: a glob on session
    ids."""
    feature: str | None = None
    """Only calls whose feature matches this glob count (``claude-code``): a per-user budget
    for one tool. Unset: every call counts."""
    overrides: dict[str, Usd] = msgspec.field(default_factory=dict)
    """Per-entity limits that replace the default (``alice: 50``)."""
    thresholds_pct: list[Percent] | None = None
    on_hard_limit: HardAction | None = None
    mode: Mode | None = None
    failure: Failure | None = None
    notify: list[Name] | None = None
    forecast: bool | None = None
    spike_factor: SpikeFactor | None = None
    spike_min_usd: Usd | None = None


class RateOverride(_Strict, frozen=True):
    requests_per_minute: PerMinute | None = None
    input_tokens_per_minute: PerMinute | None = None
    output_tokens_per_minute: PerMinute | None = None
    cost_usd_per_minute: Usd | None = None


class RateLimit(_Strict, frozen=True):
    name: Name
    scope: Scope
    requests_per_minute: PerMinute | None = None
    input_tokens_per_minute: PerMinute | None = None
    output_tokens_per_minute: PerMinute | None = None
    cost_usd_per_minute: Usd | None = None
    """Cost velocity: USD per minute (a bucket of micro-dollars; a reserve takes its worst
    case, the commit gives back what the call did not cost)."""
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Model ids or globs (``claude-opus-*``); each must match a priced model."""
    match: str = "*"
    feature: str | None = None
    """Only calls whose feature matches this glob count (``claude-code``), as for budgets."""
    overrides: dict[str, RateOverride] = msgspec.field(default_factory=dict)
    mode: Mode | None = None
    failure: Failure | None = None


class PolicyFile(_Strict, frozen=True):
    org: Name
    timezone: str
    """IANA time zone of calendar periods, e.g. ``America/New_York``."""
    defaults: Defaults = msgspec.field(default_factory=Defaults)
    channels: dict[Name, Channel] = msgspec.field(default_factory=dict)
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra model ids (alias → priced model id)."""
    teams: dict[Name, Team] = msgspec.field(default_factory=dict)
    """Teams for ``scope: team`` budgets and rate limits (team name → members)."""
    budgets: list[Budget] = msgspec.field(default_factory=list)
    rate_limits: list[RateLimit] = msgspec.field(default_factory=list)


def json_schema() -> dict[str, object]:
    """The JSON Schema of a policy file, for editor completion."""
    schema = msgspec.json.schema(PolicyFile)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "budgetd policy file"
    return schema
