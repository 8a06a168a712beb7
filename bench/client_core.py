"""Benchmark: what the sans-I/O core (``budgetd_client.core``) costs per call, in CPU time.

    .venv/bin/python bench/client_core.py [--rounds 2000]

Both the client transport and ``budgetd gateway`` run it on every Messages API call: planning
the request (decode, input bound, cache TTL, attribution, headers) and reading the response
(SSE events fed as they pass). CPU time (``time.process_time``), so the figures hold on a
shared machine whose wall clock is noisy. Prints: ``plan_call`` on a small prompt and on a
75 KB one (Claude Code sends ~87 KB), and the settler over a 10 MB stream fed event by event
and in 20 KB chunks.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from budgetd_client.core import MessageSettler, plan_call

HEADERS = [(b"x-api-key", b"k"), (b"anthropic-version", b"2023-06-01")]
SSE = [(b"content-type", b"text/event-stream")]


def body(size: str) -> bytes:
    messages = [{"role": "user", "content": "Say hi."}]
    if size == "small":
        return json.dumps({"model": "m", "max_tokens": 100, "messages": messages}).encode()
    tool = {"type": "object", "properties": {"a": {"type": "string"}}}
    tools = [{"name": f"t{i}", "description": "x" * 800, "input_schema": tool} for i in range(60)]
    request = {
        "model": "m",
        "max_tokens": 32_000,
        "stream": True,
        "system": [{"type": "text", "text": "s" * 20_000, "cache_control": {"type": "ephemeral"}}],
        "tools": tools,
        "messages": messages,
    }
    return json.dumps(request).encode()


def stream() -> list[bytes]:
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}}
    text = {"type": "text_delta", "text": "y" * 200}
    delta = {"type": "content_block_delta", "index": 0, "delta": text}
    one = f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n".encode()
    first = f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
    return [first] + [one] * (10_000_000 // len(one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, CPU time")
    for size in ("small", "large"):
        data = body(size)
        started = time.process_time()
        for _ in range(args.rounds):
            call = plan_call("POST", "/v1/messages", HEADERS, data)
        spent = (time.process_time() - started) / args.rounds
        print(f"plan_call, {len(data):>6} B body: {spent * 1e6:7.1f} µs")
    reserve = call.reserves[0]
    events = stream()
    for label, chunks in (
        ("event by event", events),
        ("20 KB chunks", [b"".join(events[i : i + 64]) for i in range(0, len(events), 64)]),
    ):
        started = time.process_time()
        settler = MessageSettler(reserve, 200, SSE)
        for chunk in chunks:
            settler.feed(chunk)
        settler.settle(complete=True)
        spent = time.process_time() - started
        print(f"settler, 10 MB SSE {label:>15}: {spent * 1e3:6.1f} ms ({len(chunks)} feeds)")


if __name__ == "__main__":
    main()
