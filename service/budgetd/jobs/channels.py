"""Notification channels: generic webhook (signed), Slack incoming webhook, structured log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import msgspec

from budgetd.money import format_usd
from budgetd.policy.schema import Channel
from budgetd.reports.picture import lines as picture_lines

log = logging.getLogger("budgetd.events")
SIGNATURE_HEADER = "X-Budgetd-Signature"
EVENT_ID_HEADER = "X-Budgetd-Event-Id"
TIMESTAMP_HEADER = "X-Budgetd-Timestamp"


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    retry: bool = False
    """A failure worth retrying (timeout, connection error, 5xx, 429)."""
    error: str = ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``<timestamp>.<body>``; the receiver recomputes it to verify."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def describe(fields: dict[str, str], tz: ZoneInfo) -> str:
    """One readable sentence: who, which budget, how much of it, and when the period ends."""
    kind = fields.get("type", "event")
    who = f"{fields.get('scope', '')} {fields.get('entity', '')}".strip()
    budget = fields.get("budget", "")
    used = int(fields.get("used_micros", "0") or 0)
    limit = int(fields.get("limit_micros", "0") or 0)
    share = f"{format_usd(used)} of {format_usd(limit)}"
    if kind == "threshold":
        text = f"{who} reached {fields.get('threshold')}% of budget '{budget}': {share}"
    elif kind == "hard_limit":
        text = f"{who} hit the hard limit of budget '{budget}' ({share}); calls are blocked"
    elif kind == "over_limit":
        text = f"{who} is over budget '{budget}' ({share}); warn-only, calls continue"
    elif kind == "shadow_would_deny":
        text = f"shadow budget '{budget}' would have blocked {who} ({share})"
    elif kind == "shadow_clear":
        text = f"shadow budget '{budget}' would no longer block {who} ({share})"
    elif kind == "overrun":
        text = (
            f"reservation {fields.get('reservation_id')} of {who} cost {format_usd(used)}, "
            f"more than its hold of {format_usd(limit)}"
        )
    else:
        text = fields.get("summary") or f"{kind} for {who} on budget '{budget}'"
    end = fields.get("period_end_ms")
    if end and end != "0":  # "0": a session's budget, which has no period end
        local = datetime.fromtimestamp(int(end) / 1000, tz=UTC).astimezone(tz)
        text += f" (period ends {local:%a %Y-%m-%d %H:%M} {tz.key})"
    return f"budgetd [{fields.get('org', '')}] {text}" + picture_lines(fields)


async def send(
    http: httpx.AsyncClient,
    name: str,
    channel: Channel,
    event_id: str,
    fields: dict[str, str],
    tz: ZoneInfo,
) -> Sent:
    """Deliver one event to one channel; never raises."""
    if channel.log is not None:
        log.log(
            logging.getLevelName(channel.log.upper()),
            describe(fields, tz),
            extra={"event_id": event_id, "event": fields, "channel": name},
        )
        return Sent(ok=True)
    if channel.slack is not None:
        url = channel.slack
        body = msgspec.json.encode({"text": describe(fields, tz)})
        headers = {"Content-Type": "application/json"}
    else:
        url = channel.webhook or ""
        body = msgspec.json.encode({"id": event_id, **fields})
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event_id,
            TIMESTAMP_HEADER: stamp,
        }
        secret = os.environ.get(channel.secret_env, "") if channel.secret_env else ""
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
    try:
        response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Sent(ok=False, retry=True, error=f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return Sent(ok=True)
    code = response.status_code
    return Sent(ok=False, retry=code >= 500 or code == 429, error=f"HTTP {code}")
