"""``fold`` against a plain model of it: every entry adds its row to each of its views, in its
day and its month. The follower's fold groups a batch's entries before spreading them (issue 13:
it ran once per commit, ~22 µs an entry); what it returns must not move."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetd import attribution
from budgetd.reports.fold import ADJUSTMENT, METRICS, fold

PARIS = ZoneInfo("Europe/Paris")
# Around the night Paris leaves summer time (2026-10-25 01:00 UTC) and a UTC midnight.
START_MS = int(datetime(2026, 10, 24, 21, 0, tzinfo=UTC).timestamp() * 1000)


def model_fold(
    entries: list[tuple[str, dict[str, str]]], tz: ZoneInfo
) -> dict[tuple[str, str], dict[str, list[int]]]:
    out: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
    for entry_id, fields in entries:
        at = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC).astimezone(tz)
        cost = int(fields.get("cost_micros", "0") or 0)
        if fields.get("kind", "commit") == "adjustment":
            row = [cost, 0, 0, 0, 0, 0, 0]
            named: list[tuple[str, str]] = [("model", ADJUSTMENT)]
        else:
            u = msgspec.json.decode(fields["usage"]) if fields.get("usage") else {}
            split = u.get("cache_creation") or {}
            hour = split.get("ephemeral_1h_input_tokens") or 0
            five = split.get("ephemeral_5m_input_tokens") or 0
            five += max(0, (u.get("cache_creation_input_tokens") or 0) - hour - five)
            row = [
                cost,
                1,
                u.get("input_tokens") or 0,
                five,
                hour,
                u.get("cache_read_input_tokens") or 0,
                u.get("output_tokens") or 0,
            ]
            who = attribution.of_entry(fields)
            named = [
                ("model", fields.get("model", "") or "(unknown)"),
                ("user", who.user),
                ("feature", who.feature),
                ("session", who.session),
                ("key", who.key),
                *(("team", t) for t in who.teams),
                *(("tag", t) for t in who.tags),
            ]
        for bucket in (f"d:{at:%Y-%m-%d}", f"m:{at:%Y-%m}"):
            for view, entity in named:
                if entity:
                    totals = out[(view, bucket)].setdefault(entity, [0] * len(METRICS))
                    for i, v in enumerate(row):
                        totals[i] += v
    return dict(out)


names = st.sampled_from(["", "a", "b", "c"])


@st.composite
def entry(draw: st.DrawFn, at_ms: int) -> dict[str, str]:
    kind = draw(st.sampled_from(["commit", "commit", "record", "adjustment"]))
    fields = {"cost_micros": str(draw(st.integers(0, 10**6)))}
    if kind == "adjustment":
        return {**fields, "kind": "adjustment"}
    usage = {
        "input_tokens": draw(st.integers(0, 5000)),
        "output_tokens": draw(st.integers(0, 5000)),
        "cache_creation_input_tokens": draw(st.integers(0, 300)),
        "cache_read_input_tokens": draw(st.integers(0, 300)),
    }
    if draw(st.booleans()):
        usage["cache_creation"] = {"ephemeral_1h_input_tokens": draw(st.integers(0, 100))}
    fields |= {"model": draw(st.sampled_from(["", "haiku", "sonnet"]))}
    if draw(st.booleans()):
        fields["usage"] = msgspec.json.encode(usage).decode()
    who = {
        "user": draw(names),
        "feature": draw(names),
        "teams": ",".join(draw(st.lists(names, max_size=2))),
        "key": draw(names),
        "tags": ",".join(draw(st.lists(names, max_size=2))),
    }
    if kind == "commit":
        meta = {**who, "session": draw(names), "model": fields["model"]}
        return {**fields, "reservation": msgspec.json.encode(meta).decode()}
    return {**fields, **who, "kind": "record", "session": draw(names)}


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, dict[str, str]]]:
    out = []
    at_ms = START_MS + draw(st.integers(0, 8 * 3600 * 1000))
    for seq in range(draw(st.integers(0, 30))):
        # Mostly the same millisecond or second (a busy ledger), sometimes hours later.
        at_ms += draw(st.sampled_from([0, 0, 1, 999, 1000, 3_600_000]))
        out.append((f"{at_ms}-{seq}", draw(entry(at_ms))))
    return out


@settings(max_examples=300, deadline=None)
@given(batches())
def test_fold_equals_the_per_entry_model(entries: list[tuple[str, dict[str, str]]]) -> None:
    assert dict(fold(entries, PARIS)) == model_fold(entries, PARIS)


def test_fold_across_the_end_of_summer_time() -> None:
    """01:00 UTC on 2026-10-25: Paris goes from +02:00 to +01:00; 22:00 UTC the day before is
    already the 25th in Paris, 23:00 UTC on the 25th is the 26th."""
    at = datetime(2026, 10, 24, 21, 59, 59, tzinfo=UTC)
    ids = [
        f"{int((at + timedelta(seconds=s)).timestamp() * 1000)}-0"
        for s in (0, 1, 3 * 3600, 25 * 3600 + 1)
    ]
    entries = [(i, {"cost_micros": "5", "model": "m", "usage": ""}) for i in ids]
    folded = fold(entries, PARIS)
    assert folded == model_fold(entries, PARIS)
    assert set(folded) == {
        ("model", "d:2026-10-24"),
        ("model", "d:2026-10-25"),
        ("model", "d:2026-10-26"),
        ("model", "m:2026-10"),
    }
    assert folded[("model", "d:2026-10-25")]["m"][:2] == [10, 2]
