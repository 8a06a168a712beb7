"""A fake Anthropic API on loopback: a real HTTP server (uvicorn) answering the Messages API the
way Anthropic does, byte for byte where it matters to a client: JSON messages, SSE streams
(``message_start`` … cumulative ``message_delta`` usage … ``message_stop``), tool use, cache
fields in ``usage``, errors in Anthropic's JSON shape, count_tokens, Message Batches with JSONL
results, and the models list.

What a request gets is decided by markers in its last user message, so that every client (even
Claude Code, which sends what it sends) can ask for a behaviour:

``[fake:error=400|401|429|500|529]``  that error (429 carries ``retry-after: 1``)
``[fake:slow=MS]``                     a stream that waits MS milliseconds between events
``[fake:broken]``                      a stream cut off after the first text delta
``[fake:bytes=N]``                     a stream of about N bytes of text deltas
``[fake:out=N]`` / ``[fake:cache]``    N output tokens / cache writes and reads in ``usage``
``[fake:hang]``                        no answer at all (for upstream timeouts)

``[fake:tool]``                        a ``tool_use`` of the request's first tool
``[fake:gzip]``                        a JSON answer gzip-compressed (if the request accepts it)

Otherwise the answer is "hi", with
``input_tokens`` = request body bytes // 16 + 3 (a number the test cannot guess without the same
formula, which is the point: tests price what the fake *reported*, from its log).

``GET /_fake/log`` returns what it saw and answered (headers, body size, usage); ``POST
/_fake/reset`` clears it. Run it: ``python -m tests.gateway.fake_upstream PORT [KEY]``.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import sys
import uuid
from collections import deque
from typing import Any

import msgspec

Scope = dict[str, Any]
Receive = Any
Send = Any

UPSTREAM_KEY = os.environ.get("FAKE_ANTHROPIC_KEY", "sk-ant-fake-upstream")
_MARK = re.compile(r"\[fake:([a-z]+)(?:=(\d+))?\]")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_encode = msgspec.json.encode
LOG: deque[dict[str, Any]] = deque(maxlen=2000)
BATCHES: dict[str, dict[str, Any]] = {}


def _error_body(status: int, message: str) -> bytes:
    return _encode(
        {
            "type": "error",
            "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
        }
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def markers(request: dict[str, Any]) -> dict[str, int]:
    """The ``[fake:…]`` markers of the last user message."""
    messages = request.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = _text_of(users[-1].get("content")) if users else ""
    return {name: int(value) if value else 1 for name, value in _MARK.findall(text)}


def usage_for(body_size: int, marks: dict[str, int], *, batch: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": body_size // 16 + 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": marks.get("out", 7),
        "service_tier": "batch" if batch else "standard",
    }
    if "cache" in marks:
        usage["cache_creation_input_tokens"] = 1500
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": 1000,
            "ephemeral_1h_input_tokens": 500,
        }
        usage["cache_read_input_tokens"] = 4000
    return usage


def message_for(
    request: dict[str, Any], usage: dict[str, Any], marks: dict[str, int]
) -> dict[str, Any]:
    if request.get("tools") and "tool" in marks:
        tool = request["tools"][0]
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": tool.get("name", "tool"),
                "input": {"city": "Paris"},
            },
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": "hi"}]
        stop = "end_turn"
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "claude-haiku-4-5"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def stream_events(message: dict[str, Any], marks: dict[str, int]) -> list[bytes]:
    """The message as Anthropic streams it: usage in ``message_start`` (output 1 so far), the
    final cumulative counts in ``message_delta``."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": 1}
    head = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    events = [_sse("message_start", {"type": "message_start", "message": head})]
    events.append(_sse("ping", {"type": "ping"}))
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            pieces = [block["text"]]
            if "bytes" in marks:
                chunk = "x" * 4000
                pieces = [chunk] * max(1, marks["bytes"] // 4096)
            for piece in pieces:
                events.append(
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                )
        else:
            start = {**block, "input": {}}
            events.append(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": start},
                )
            )
            events.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": _encode(block["input"]).decode(),
                        },
                    },
                )
            )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    final = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": final,
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


# -- ASGI plumbing ------------------------------------------------------------------------------


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json", extra: Any = ()
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"request-id", b"req_fake_" + uuid.uuid4().hex[:12].encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path: str = scope["path"]
    method: str = scope["method"]
    body = await _body(receive)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if path.startswith("/_fake/"):
        if path == "/_fake/log":
            return await _send(send, 200, _encode(list(LOG)))
        LOG.clear()
        return await _send(send, 200, b"{}")
    entry: dict[str, Any] = {
        "method": method,
        "path": path,
        "query": scope["query_string"].decode(),
        "headers": headers,
        "body_size": len(body),
    }
    LOG.append(entry)
    if headers.get("x-api-key") != UPSTREAM_KEY:
        return await _send(send, 401, _error_body(401, "invalid x-api-key"))
    if path == "/v1/messages" and method == "POST":
        return await _messages(body, entry, send)
    if path == "/v1/messages/count_tokens" and method == "POST":
        return await _send(send, 200, _encode({"input_tokens": len(body) // 16 + 3}))
    if path.startswith("/v1/messages/batches"):
        return await _batches(method, path, body, entry, send)
    if path == "/v1/models" and method == "GET":
        data = [_model("claude-haiku-4-5"), _model("claude-sonnet-4-5")]
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
        return await _send(send, 200, _encode(page))
    if path.startswith("/v1/models/") and method == "GET":
        return await _send(send, 200, _encode(_model(path.rsplit("/", 1)[1])))
    await _send(send, 404, _error_body(404, f"no route {method} {path}"))


def _model(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": "2025-10-01T00:00:00Z",
    }


async def _messages(body: bytes, entry: dict[str, Any], send: Send) -> None:
    request = msgspec.json.decode(body)
    entry["metadata"] = request.get("metadata")
    entry["model"] = request.get("model")
    entry["stream"] = bool(request.get("stream"))
    marks = markers(request)
    if "error" in marks:
        status = marks["error"]
        entry["status"] = status
        extra = [(b"retry-after", b"1")] if status == 429 else []
        return await _send(
            send, status, _error_body(status, f"fake upstream error {status}"), extra=extra
        )
    if "hang" in marks:
        await asyncio.sleep(3600)
    usage = usage_for(len(body), marks)
    message = message_for(request, usage, marks)
    entry["status"] = 200
    if not request.get("stream"):
        entry["usage"] = usage
        if "gzip" in marks and "gzip" in entry["headers"].get("accept-encoding", ""):
            packed = gzip.compress(_encode(message))
            return await _send(send, 200, packed, extra=[(b"content-encoding", b"gzip")])
        return await _send(send, 200, _encode(message))
    events = stream_events(message, marks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"request-id", b"req_fake_" + uuid.uuid4().hex[:12].encode()),
            ],
        }
    )
    if "broken" in marks:
        # message_start, ping, content_block_start, one delta: then the connection drops.
        entry["usage"] = {**usage, "output_tokens": 1}
        for event in events[:4]:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        raise ConnectionAbortedError("fake upstream: stream broken on purpose")
    entry["usage"] = usage
    delay = marks.get("slow", 0) / 1000
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if delay:
            await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _batches(method: str, path: str, body: bytes, entry: dict[str, Any], send: Send) -> None:
    parts = path.removeprefix("/v1/messages/batches").strip("/").split("/")
    if method == "GET" and parts == [""]:
        page = [_batch(b, entry) for b in BATCHES]
        return await _send(
            send, 200, _encode({"data": page, "has_more": False, "first_id": None, "last_id": None})
        )
    if method == "POST" and parts == [""]:
        requests = msgspec.json.decode(body)["requests"]
        batch_id = "msgbatch_" + uuid.uuid4().hex[:24]
        results = []
        for item in requests:
            params = item["params"]
            marks = markers(params)
            size = len(_encode(params))
            if "error" in marks:
                result: dict[str, Any] = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": "fake"},
                    },
                }
            elif "expired" in marks:
                result = {"type": "expired"}
            else:
                usage = usage_for(size, marks, batch=True)
                result = {"type": "succeeded", "message": message_for(params, usage, marks)}
            results.append({"custom_id": item["custom_id"], "result": result})
        BATCHES[batch_id] = {"results": results, "canceled": False}
        entry["batch_results"] = results
        return await _send(send, 200, _encode(_batch(batch_id, entry)))
    batch_id = parts[0]
    if batch_id not in BATCHES:
        return await _send(send, 404, _error_body(404, f"no batch {batch_id}"))
    if method == "POST" and parts[1:] == ["cancel"]:
        BATCHES[batch_id]["canceled"] = True
        for r in BATCHES[batch_id]["results"]:
            r["result"] = {"type": "canceled"}
        return await _send(send, 200, _encode(_batch(batch_id, entry)))
    if method == "GET" and parts[1:] == ["results"]:
        lines = b"".join(_encode(r) + b"\n" for r in BATCHES[batch_id]["results"])
        return await _send(send, 200, lines, b"application/binary")
    if method == "GET" and len(parts) == 1:
        return await _send(send, 200, _encode(_batch(batch_id, entry)))
    await _send(send, 404, _error_body(404, f"no route {method} {path}"))


def _batch(batch_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    results = BATCHES[batch_id]["results"]
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for r in results:
        counts[r["result"]["type"]] += 1
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "ended",
        "request_counts": counts,
        "ended_at": "2026-11-29T00:00:00Z",
        "created_at": "2026-11-29T00:00:00Z",
        "expires_at": "2026-11-30T00:00:00Z",
        "archived_at": None,
        "cancel_initiated_at": None,
        # Absolute, on the API's own host, as Anthropic's are.
        "results_url": f"http://{entry['headers'].get('host')}/v1/messages/batches/{batch_id}/results",
    }


def main() -> None:
    import uvicorn  # noqa: PLC0415

    port = int(sys.argv[1])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
