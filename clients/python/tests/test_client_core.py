"""The sans-I/O core: routes, attribution, the input bound, and settlement from bytes."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from budgetd_client import cache_ttl_of, estimate_input_tokens
from budgetd_client.core import (
    Attribution,
    BatchResultsReader,
    Commit,
    MessageSettler,
    Release,
    RequestRefused,
    Route,
    batch_id_of,
    plan_call,
)
from budgetd_client.core.bound import IMAGE_TOKENS, PDF_PAGE_TOKENS, TOOL_PROMPT_TOKENS

from conftest import USAGE, stream_events

SSE = [("content-type", "text/event-stream")]
JSON = [("content-type", "application/json")]


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 50, **fields}).encode()


def one(target: str = "/v1/messages", headers: Any = (), **fields: Any) -> Any:
    call = plan_call("POST", target, list(headers), body(**fields), Attribution(user="dflt"))
    (reserve,) = call.reserves
    return call, reserve


def test_routes_budgeted_calls_and_passes_the_rest() -> None:
    for target in ("/v1/messages", "/v1/messages?beta=true", "https://x/proxy/v1/messages"):
        assert plan_call("POST", target, [], body(messages=[])).route is Route.MESSAGE
    for method, target in (
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("GET", "/v1/messages/batches/b1"),
    ):
        call = plan_call(method, target, [("x-budgetd-user", "u"), ("accept", "*/*")], b"")
        assert (call.route, call.reserves) == (Route.OTHER, ())
        assert call.headers == [("accept", "*/*")]  # budgetd's own never go upstream
    results = plan_call("GET", "/v1/messages/batches/msgbatch_1/results", [], b"")
    assert (results.route, results.batch_id) == (Route.BATCH_RESULTS, "msgbatch_1")
    cancel = plan_call("POST", "/v1/messages/batches/msgbatch_1/cancel?beta=true", [], b"")
    assert (cancel.route, cancel.batch_id) == (Route.BATCH_CANCEL, "msgbatch_1")


def test_attribution_defaults_then_metadata_then_headers_and_headers_are_stripped() -> None:
    _, r = one(messages=[])
    assert (r.user, r.feature, r.metadata) == ("dflt", None, None)
    _, r = one(messages=[], metadata={"user_id": "meta-user"})
    assert r.user == "meta-user"
    _, r = one(messages=[], metadata={"user_id": "a long opaque id with spaces"})
    assert r.user == "dflt"  # not a budgetd id: ignored rather than a 422
    headers = [
        ("x-api-key", "sk"),
        ("X-Budgetd-User", "hdr-user"),
        ("x-budgetd-feature", "search"),
        ("x-budgetd-session", "run-7"),
        ("accept-encoding", "gzip, br, zstd"),
    ]
    call, r = one(headers=headers, messages=[], metadata={"user_id": "meta-user"})
    assert (r.user, r.feature, r.session, r.metadata) == ("hdr-user", "search", "run-7", None)
    assert r.fields()["session"] == "run-7"
    assert call.headers == [("x-api-key", "sk"), ("accept-encoding", "gzip")]
    raw = plan_call("POST", "/v1/messages", [(b"x-budgetd-user", b"u")], body(messages=[]))
    assert raw.headers == [] and raw.reserves[0].user == "u"


def test_reserve_fields_read_off_the_request() -> None:
    call, r = one(
        stream=True,
        inference_geo="us",
        speed="fast",
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        messages=[{"role": "user", "content": "hi"}],
    )
    assert call.stream and call.count_body is not None
    assert (r.model, r.max_tokens, r.cache_ttl, r.inference_geo, r.speed, r.web_searches) == (
        "m",
        50,
        "1h",
        "us",
        "fast",
        3,
    )
    assert json.loads(call.count_body)["model"] == "m"
    assert "max_tokens" not in json.loads(call.count_body)


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"model": None}, "model"), ({"max_tokens": 0}, "max_tokens")],
)
def test_unreadable_budgeted_requests_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        plan_call("POST", "/v1/messages", [], body(messages=[], **fields))
    assert refused.value.field == field
    with pytest.raises(RequestRefused) as not_json:
        plan_call("POST", "/v1/messages", [], b"{nope")
    assert not_json.value.field == "body"


TEXTS = ["hello", "é" * 40, "日本語のテキスト" * 9, "🙂" * 25, 'a\nb\t"quoted"\\', ""]


@pytest.mark.parametrize("text", TEXTS)
def test_the_bound_is_at_least_the_utf8_bytes_of_every_text(text: str) -> None:
    """A byte-level tokenizer at its worst spends one token per byte: the bound covers it."""
    tool = {"name": "t", "description": text, "input_schema": {"type": "object"}}
    _, r = one(
        system=text,
        messages=[
            {"role": "user", "content": text},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {"q": text}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "x", "content": text}],
            },
        ],
        tools=[tool],
    )
    worst = 5 * len(text.encode()) + TOOL_PROMPT_TOKENS
    assert r.bound.proven
    assert r.input_tokens >= worst


def test_images_and_documents_are_held_at_their_bounds_not_their_base64() -> None:
    pixels = base64.b64encode(b"\x89PNG" + b"\0" * 30_000).decode()
    _, r = one(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": pixels},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ],
            }
        ]
    )
    assert 2 * IMAGE_TOKENS <= r.input_tokens < 2 * IMAGE_TOKENS + 1000
    assert r.bound.proven
    pdf = base64.b64encode(b"%PDF-1.7 /Type /Pages /Type /Page x /Type/Page y").decode()
    _, d = one(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
                    }
                ],
            }
        ]
    )
    assert not d.bound.proven
    assert 2 * PDF_PAGE_TOKENS <= d.input_tokens < 2 * PDF_PAGE_TOKENS + 1000
    assert d.counted(1000).input_tokens == 1050  # count_tokens answer + 5 %
    assert r.counted(100).input_tokens == 105
    assert r.counted(10**6).input_tokens == r.input_tokens  # never above a proven bound


def test_estimate_input_tokens_is_the_bound_and_cache_ttl_detection() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_input_tokens(messages=messages, system="z" * 200) >= 600
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    assert cache_ttl_of(plain) is None
    five = {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}
    assert cache_ttl_of(five) == "5m"
    hour = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "tools": [{"name": "t", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    }
    assert cache_ttl_of(hour) == "1h"
    assert cache_ttl_of({**plain, "cache_control": {"type": "ephemeral"}}) == "5m"


def test_batch_submit_reserves_each_request_at_the_batch_price() -> None:
    batch = {
        "requests": [
            {"custom_id": "a", "params": {"model": "m1", "max_tokens": 10, "messages": []}},
            {
                "custom_id": "b",
                "params": {
                    "model": "m2",
                    "max_tokens": 20,
                    "messages": [],
                    "metadata": {"user_id": "u2"},
                },
            },
        ]
    }
    call = plan_call(
        "POST", "/v1/messages/batches", [], json.dumps(batch).encode(), Attribution(user="d")
    )
    assert call.route is Route.BATCH_SUBMIT
    assert [(r.custom_id, r.model, r.max_tokens, r.batch, r.user) for r in call.reserves] == [
        ("a", "m1", 10, True, "d"),
        ("b", "m2", 20, True, "u2"),
    ]
    with pytest.raises(RequestRefused) as refused:
        plan_call("POST", "/v1/messages/batches", [], b'{"requests": [{"custom_id": "a"}]}')
    assert refused.value.field == "requests[0].params"


# -- settlement ------------------------------------------------------------------------------


def reserve() -> Any:
    return one(messages=[])[1]


def feed_split(settler: MessageSettler, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        settler.feed(data[i : i + size])


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10**6])
def test_sse_commits_message_start_overwritten_by_the_last_delta_at_any_chunking(size: int) -> None:
    settler = MessageSettler(reserve(), 200, SSE)
    feed_split(settler, b"".join(stream_events(deltas=(120, 200))), size)
    settled = settler.settle(complete=True)
    assert settled == Commit(usage={**USAGE, "output_tokens": 200}, model="claude-haiku-test")


def test_sse_with_crlf_and_gzip() -> None:
    raw = b"".join(stream_events()).replace(b"\n", b"\r\n")
    settler = MessageSettler(reserve(), 200, [*SSE, ("content-encoding", "gzip")])
    feed_split(settler, gzip.compress(raw), 5)
    settled = settler.settle(complete=True)
    assert isinstance(settled, Commit) and settled.usage["output_tokens"] == 200


def test_broken_stream_commits_what_was_reported_and_releases_before_message_start() -> None:
    events = stream_events(deltas=(120, 200))
    settler = MessageSettler(reserve(), 200, SSE)
    for chunk in events[:8]:  # through the first message_delta
        settler.feed(chunk)
    settler.feed(events[8][:20])  # half of the next event
    settled = settler.settle(complete=False)
    assert isinstance(settled, Commit)
    assert (settled.usage["output_tokens"], settled.partial) == (120, True)
    early = MessageSettler(reserve(), 200, SSE)
    early.feed(events[0][:30])
    assert isinstance(early.settle(complete=False), Release)
    error = MessageSettler(reserve(), 200, SSE)
    error.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n')
    assert error.settle(complete=True) == Release(reason="overloaded_error")


def test_json_body_commits_its_usage_errors_release_unreadable_commits_the_worst_case() -> None:
    message = {"type": "message", "model": "served", "usage": USAGE}
    ok = MessageSettler(reserve(), 200, [*JSON, ("content-encoding", "gzip")])
    feed_split(ok, gzip.compress(msgspec.json.encode(message)), 3)
    assert ok.settle(complete=True) == Commit(usage=USAGE, model="served")
    for status in (400, 429, 500, 529):
        failed = MessageSettler(reserve(), status, JSON)
        failed.feed(b'{"type":"error"}')
        assert failed.settle(complete=True) == Release(reason=f"HTTP {status}")
    cut = MessageSettler(reserve(), 200, JSON)
    cut.feed(msgspec.json.encode(message)[:40])
    settled = cut.settle(complete=False)
    assert isinstance(settled, Commit) and settled.unknown
    assert settled.usage == {"input_tokens": reserve().input_tokens, "output_tokens": 50}


def test_batch_results_settle_each_line_as_it_arrives() -> None:
    lines = [
        {
            "custom_id": "a",
            "result": {"type": "succeeded", "message": {"model": "m", "usage": USAGE}},
        },
        {"custom_id": "b", "result": {"type": "errored", "error": {}}},
        {"custom_id": "c", "result": {"type": "canceled"}},
        {"custom_id": "d", "result": {"type": "expired"}},
    ]
    data = b"\n".join(msgspec.json.encode(x) for x in lines)
    reader = BatchResultsReader(200, [])
    outcomes = []
    for i in range(0, len(data), 11):
        outcomes += reader.feed(data[i : i + 11])
    outcomes += reader.finish()
    assert [(o.custom_id, type(o.settlement).__name__) for o in outcomes] == [
        ("a", "Commit"),
        ("b", "Release"),
        ("c", "Release"),
        ("d", "Release"),
    ]
    first = outcomes[0].settlement
    assert isinstance(first, Commit) and first.batch and first.usage == USAGE
    answer = b'{"id": "msgbatch_1", "type": "message_batch"}'
    assert batch_id_of(200, answer) == "msgbatch_1"
    assert batch_id_of(200, gzip.compress(answer), [("content-encoding", "gzip")]) == "msgbatch_1"
    assert batch_id_of(400, b'{"id": "x"}', JSON) is None


def test_the_core_imports_without_http_clients_or_the_sdk() -> None:
    """budgetd gateway imports the core server-side: it must not drag in httpx, stamina or
    the anthropic SDK."""
    code = (
        "import sys, budgetd_client.core\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not loaded & {'httpx', 'httpx2', 'stamina', 'anthropic'}, loaded\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src})
