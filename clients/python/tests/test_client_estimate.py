"""The input-token heuristic and cache-TTL detection."""

from __future__ import annotations

from budgetd_client import cache_ttl_of, estimate_input_tokens


def test_heuristic_counts_system_messages_tools_and_images() -> None:
    messages = [
        {"role": "user", "content": "x" * 400},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "y" * 400},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
            ],
        },
    ]
    assert estimate_input_tokens(messages=messages, system="z" * 200, margin=0) == 250 + 1600
    tool = {"name": "t", "input_schema": {"type": "object"}}
    with_tool = estimate_input_tokens(messages=[], tools=[tool], margin=0.1)
    assert with_tool == -(-len('{"name": "t", "input_schema": {"type": "object"}}') * 11 // 40)


def test_cache_ttl_detection() -> None:
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
