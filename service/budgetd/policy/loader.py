"""Policy files → PolicySet. Every mistake is reported with file, line and field, and a
directory with any bad file yields no PolicySet at all (the registry keeps the last good one)."""

from __future__ import annotations

import fnmatch
import os
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from budgetd.money import Micros, MoneyFormatError, usd_to_micros
from budgetd.policy import schema
from budgetd.policy.model import (
    BudgetRule,
    OrgPolicy,
    PeriodSpec,
    PolicySet,
    RateLimits,
    RateRule,
    TeamSpec,
)
from budgetd.pricing_table import PricingFileError, PricingTable, load_pricing
from budgetd.yaml_errors import FieldPath, YamlDocument, dotted, located_validation_error

PRICING_FILE = "pricing.yaml"
MAX_ROLLING_DAYS = 366
MAX_IDLE_DAYS = 30
"""The longest a session may sit idle and keep its budget (its counter lives that long)."""
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class PolicyError(ValueError):
    """One or more policy files are invalid. ``errors`` holds one ``file:line: ...`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _FileChecker:
    """Collects the semantic errors of one file, each with its line."""

    def __init__(self, document: YamlDocument) -> None:
        self.document = document
        self.errors: list[str] = []

    def fail(self, path: FieldPath, message: str, *, key: bool = False) -> None:
        if key and path:
            line = self.document.key_line(path[:-1], str(path[-1]))
        else:
            line = self.document.line_of(path)
        self.errors.append(f"{self.document.filename}:{line}: {dotted(path)}: {message}")

    def usd(self, value: schema.Usd, path: FieldPath) -> Micros:
        try:
            micros = usd_to_micros(value)
        except MoneyFormatError as exc:
            self.fail(path, f"not a valid USD amount: {exc}")
            return 0
        if micros < 0:
            self.fail(path, f"must not be negative (got {value})")
            return 0
        return micros


def _fraction(value: float | None) -> Fraction | None:
    """An exact ratio from a YAML number (3.5 → 7/2; via repr, so no binary-float noise)."""
    return None if value is None else Fraction(Decimal(repr(value)))


def _seconds(text: str) -> int:
    """``90s``, ``30m``, ``2h``, ``7d`` → seconds (the schema has checked the form)."""
    return int(text[:-1]) * _SECONDS[text[-1]]


def _period(text: str, idle: str | None) -> PeriodSpec:
    if text in ("hour", "day", "week", "month"):
        return PeriodSpec(text=text, calendar=text)  # type: ignore[arg-type]
    if text == "session":
        return PeriodSpec(text=text, idle_s=_seconds(idle) if idle else 0)
    return PeriodSpec(text=text, window_s=_seconds(text))


def _check_session(
    b: schema.Budget, period: PeriodSpec, hold_ttl_s: int, check: _FileChecker, path: FieldPath
) -> None:
    """A session budget: scope and period session go together, with an idle time that outlives
    every hold (a session counter that expired under an open hold would forget it)."""
    if (b.scope == "session") != (b.period == "session"):
        if b.scope == "session":
            check.fail(
                (*path, "period"),
                f"a session-scope budget has no calendar: write period: session (got {b.period})",
            )
        else:
            check.fail(
                (*path, "period"),
                f"period session is for scope session (this budget's scope is {b.scope})",
            )
    if b.period != "session":
        if b.idle is not None:
            check.fail((*path, "idle"), "idle applies to period: session only", key=True)
        return
    if b.idle is None:
        check.fail(
            path,
            "a period: session budget needs idle: how long a session lives without a call "
            "(e.g. idle: 30m)",
        )
        return
    if period.idle_s < hold_ttl_s:
        check.fail(
            (*path, "idle"),
            f"idle {b.idle} is shorter than a hold may last (defaults.hold_ttl_s: {hold_ttl_s} s):"
            " a session's counter could expire under an open hold",
        )
    elif period.idle_s > MAX_IDLE_DAYS * 86_400:
        check.fail((*path, "idle"), f"idle can be at most {MAX_IDLE_DAYS}d (got {b.idle})")


def _check_models(
    check: _FileChecker, patterns: list[str], pricing: PricingTable, path: FieldPath
) -> None:
    known = list(pricing.models)
    for i, pattern in enumerate(patterns):
        if not fnmatch.filter(known, pattern):
            check.fail(
                (*path, i),
                f"model pattern {pattern!r} matches no priced model (see `budgetd pricing`)",
            )


def _check_header(
    raw: schema.PolicyFile, check: _FileChecker, pricing: PricingTable
) -> tuple[ZoneInfo, PricingTable]:
    """Time zone, channels and aliases; returns the zone and the org's pricing (with aliases)."""
    try:
        tz = ZoneInfo(raw.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: ZoneInfo("America") finds a directory, not a zone file.
        check.fail(("timezone",), f"unknown time zone {raw.timezone!r} (use an IANA name)")
        tz = ZoneInfo("UTC")
    for name, channel in raw.channels.items():
        kinds = [k for k in ("webhook", "slack", "log") if getattr(channel, k) is not None]
        if len(kinds) != 1:
            found = f" (this one has {', '.join(kinds)})" if kinds else ""
            check.fail(
                ("channels", name), f"a channel needs exactly one of webhook, slack, log{found}"
            )
        if channel.secret_env is not None and channel.webhook is None:
            check.fail(("channels", name, "secret_env"), "secret_env applies to webhooks only")
        elif channel.secret_env is not None and not os.environ.get(channel.secret_env):
            # A webhook that names its secret must never go out unsigned: a receiver that
            # verifies would drop it, one that does not would trust a forgeable call.
            check.fail(
                ("channels", name, "secret_env"),
                f"the environment variable {channel.secret_env} is not set (or empty): this "
                "webhook would be sent unsigned. Set it, or remove secret_env to send unsigned "
                "on purpose",
            )
    for alias, target in raw.aliases.items():
        if alias in pricing.models:
            # Without this, an alias could silently re-price a model the table already prices.
            check.fail(
                ("aliases", alias),
                f"{alias!r} is already a priced model id; an alias cannot redefine it",
                key=True,
            )
        elif target not in pricing.models:
            check.fail(("aliases", alias), f"alias target {target!r} is not a priced model")
    org_pricing = pricing.with_aliases(
        {a: t for a, t in raw.aliases.items() if t in pricing.models and a not in pricing.models}
    )
    return tz, org_pricing


def _teams(raw: schema.PolicyFile, check: _FileChecker) -> dict[str, TeamSpec]:
    for name, team in raw.teams.items():
        if not team.users and team.match is None:
            check.fail(
                ("teams", name), "a team needs users, a match glob on user ids, or both", key=True
            )
    return {
        name: TeamSpec(users=frozenset(team.users), match=team.match)
        for name, team in raw.teams.items()
    }


def _check_team_refs(
    raw: schema.PolicyFile, check: _FileChecker, scope: str, entities: list[str], path: FieldPath
) -> None:
    """A team-scope rule needs teams, and its overrides must name them."""
    if scope != "team":
        return
    if not raw.teams:
        check.fail((*path, "scope"), "scope team needs teams: define them at the top level")
    for entity in entities:
        if entity not in raw.teams:
            known = ", ".join(sorted(raw.teams)) or "none defined"
            check.fail(
                (*path, "overrides", entity),
                f"override {entity!r} names no team (teams: {known})",
                key=True,
            )


def _rate_limits(
    r: schema.RateLimit | schema.RateOverride, check: _FileChecker, path: FieldPath
) -> RateLimits:
    cost = r.cost_usd_per_minute
    return RateLimits(
        requests=r.requests_per_minute,
        input_tokens=r.input_tokens_per_minute,
        output_tokens=r.output_tokens_per_minute,
        cost_micros=None if cost is None else check.usd(cost, (*path, "cost_usd_per_minute")),
    )


def _compile(raw: schema.PolicyFile, check: _FileChecker, pricing: PricingTable) -> OrgPolicy:
    defaults = raw.defaults
    tz, org_pricing = _check_header(raw, check, pricing)
    seen_names: dict[str, FieldPath] = {}

    def claim_name(name: str, path: FieldPath) -> None:
        if name in seen_names:
            first = check.document.line_of(seen_names[name])
            check.fail(path, f"duplicate name {name!r} (first used on line {first})")
        else:
            seen_names[name] = path

    def check_notify(names: list[str], path: FieldPath) -> None:
        for i, name in enumerate(names):
            if name not in raw.channels:
                check.fail((*path, i), f"notify names unknown channel {name!r}")

    def check_overrides_match(scope: str, match: str, entities: list[str], path: FieldPath) -> None:
        if scope == "org" or match == "*":
            return
        for entity in entities:
            if not fnmatch.fnmatchcase(entity, match):
                check.fail(
                    (*path, "overrides", entity),
                    f"override {entity!r} never applies: it does not match {match!r}",
                    key=True,
                )

    def org_only(path: FieldPath, what: str, has_overrides: bool) -> None:
        key = "overrides" if has_overrides else "match"
        check.fail(
            (*path, key),
            f"an org-scope {what} cannot have {key} (they are for user, team and feature scopes)",
            key=True,
        )

    check_notify(defaults.notify, ("defaults", "notify"))
    budgets: list[BudgetRule] = []
    for i, b in enumerate(raw.budgets):
        path: FieldPath = ("budgets", i)
        claim_name(b.name, (*path, "name"))
        period = _period(b.period, b.idle)
        _check_session(b, period, defaults.hold_ttl_s, check, path)
        if period.rolling and period.window_s > MAX_ROLLING_DAYS * 86_400:
            check.fail(
                (*path, "period"),
                f"a rolling window can be at most {MAX_ROLLING_DAYS}d (got {b.period})",
            )
        if b.scope == "org" and (b.overrides or b.match != "*"):
            org_only(path, "budget", bool(b.overrides))
        if b.notify is not None:
            check_notify(b.notify, (*path, "notify"))
        check_overrides_match(b.scope, b.match, list(b.overrides), path)
        _check_team_refs(raw, check, b.scope, list(b.overrides), path)
        budgets.append(
            BudgetRule(
                name=b.name,
                scope=b.scope,
                default_limit=check.usd(b.limit_usd, (*path, "limit_usd")),
                overrides={
                    entity: check.usd(v, (*path, "overrides", entity))
                    for entity, v in b.overrides.items()
                },
                match=b.match,
                period=period,
                # An explicit empty list means "no soft-limit warnings", not "the defaults".
                thresholds_pct=tuple(
                    sorted(
                        set(
                            b.thresholds_pct
                            if b.thresholds_pct is not None
                            else defaults.thresholds_pct
                        )
                    )
                ),
                on_hard_limit=b.on_hard_limit or defaults.on_hard_limit,
                mode=b.mode or defaults.mode,
                failure=b.failure or defaults.failure,
                notify=tuple(b.notify if b.notify is not None else defaults.notify),
                forecast=b.forecast if b.forecast is not None else defaults.forecast,
                feature=b.feature,
                spike_factor=_fraction(
                    b.spike_factor if b.spike_factor is not None else defaults.spike_factor
                ),
                spike_min=check.usd(
                    b.spike_min_usd if b.spike_min_usd is not None else defaults.spike_min_usd,
                    (*path, "spike_min_usd"),
                ),
            )
        )
    rates: list[RateRule] = []
    for i, r in enumerate(raw.rate_limits):
        path = ("rate_limits", i)
        claim_name(r.name, (*path, "name"))
        limits = _rate_limits(r, check, path)
        if limits == RateLimits():
            check.fail(
                path,
                "a rate limit needs at least one of requests_per_minute, "
                "input_tokens_per_minute, output_tokens_per_minute, cost_usd_per_minute",
            )
        if r.scope == "org" and (r.overrides or r.match != "*"):
            org_only(path, "rate limit", bool(r.overrides))
        check_overrides_match(r.scope, r.match, list(r.overrides), path)
        _check_team_refs(raw, check, r.scope, list(r.overrides), path)
        _check_models(check, r.models, org_pricing, (*path, "models"))
        rates.append(
            RateRule(
                name=r.name,
                scope=r.scope,
                limits=limits,
                overrides={
                    entity: _rate_limits(o, check, (*path, "overrides", entity))
                    for entity, o in r.overrides.items()
                },
                models=tuple(r.models),
                match=r.match,
                mode=r.mode or defaults.mode,
                failure=r.failure or defaults.rate_failure,
                feature=r.feature,
            )
        )
    return OrgPolicy(
        org=raw.org,
        timezone=raw.timezone,
        tz=tz,
        source=check.document.filename,
        budgets=tuple(budgets),
        rate_limits=tuple(rates),
        channels=dict(raw.channels),
        pricing=org_pricing,
        hold_ttl_s=defaults.hold_ttl_s,
        teams=_teams(raw, check),
    )


class _YamlProblem(ValueError):
    """A YAML-level mistake; its message is already ``file:line: field: words``."""


def _parse(text: str, filename: str, pricing: PricingTable) -> tuple[OrgPolicy, YamlDocument]:
    try:
        document = YamlDocument.parse(text, filename, error_type=_YamlProblem)
    except _YamlProblem as exc:
        raise PolicyError([str(exc)]) from None
    if document.data is None:
        raise PolicyError(
            [f"{filename}:1: (top level): the file is empty; a policy needs org and timezone"]
        )
    if not isinstance(document.data, dict):
        raise PolicyError(
            [f"{filename}:1: (top level): a policy file must be a mapping (org, timezone, ...)"]
        )
    try:
        raw = msgspec.convert(document.data, schema.PolicyFile, strict=False)
    except msgspec.ValidationError as exc:
        raise PolicyError([located_validation_error(exc, document, schema.PolicyFile)]) from None
    check = _FileChecker(document)
    policy = _compile(raw, check, pricing)
    if check.errors:
        raise PolicyError(check.errors)
    return policy, document


def parse_policy(text: str, filename: str, pricing: PricingTable) -> OrgPolicy:
    """Parse one policy file; raise PolicyError listing every mistake in it."""
    return _parse(text, filename, pricing)[0]


def policy_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and p.name != PRICING_FILE and p.is_file()
    )


def load_policy_dir(directory: Path, pricing_path: Path | None = None) -> PolicySet:
    """Load ``pricing.yaml`` and every other ``*.yaml`` of ``directory`` into one PolicySet."""
    pricing_file = pricing_path or directory / PRICING_FILE
    try:
        pricing = load_pricing(pricing_file)
    except FileNotFoundError:
        raise PolicyError([f"{pricing_file}: pricing table not found"]) from None
    except PricingFileError as exc:
        raise PolicyError([str(exc)]) from None
    errors: list[str] = []
    orgs: dict[str, OrgPolicy] = {}
    files = policy_files(directory)
    for path in files:
        try:
            policy, document = _parse(path.read_text(encoding="utf-8"), str(path), pricing)
        except PolicyError as exc:
            errors.extend(exc.errors)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}:1: (file): cannot be read: {exc}")
            continue
        if policy.org in orgs:
            line = document.line_of(("org",))
            errors.append(
                f"{path}:{line}: org: org {policy.org!r} is already defined in "
                f"{orgs[policy.org].source} (one org per file)"
            )
            continue
        orgs[policy.org] = policy
    if errors:
        raise PolicyError(errors)
    return PolicySet(orgs=orgs, pricing=pricing, files=tuple(str(p) for p in files))
