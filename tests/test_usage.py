"""The usage object as the Messages API returns it: missing and null mean 0, cache split rules."""

from __future__ import annotations

import msgspec
import pytest

from budgetd.usage import Usage

# A response usage object as Anthropic returns it, including fields budgetd does not price.
REAL = b"""{
  "input_tokens": 21,
  "cache_creation_input_tokens": 1800,
  "cache_read_input_tokens": 40000,
  "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 1500},
  "output_tokens": 512,
  "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
  "service_tier": "standard",
  "inference_geo": "global",
  "some_future_field": {"nested": true}
}"""


def test_real_usage_object_decodes_and_unknown_fields_are_ignored() -> None:
    usage = msgspec.json.decode(REAL, type=Usage)
    assert usage.uncached_input == 21
    assert usage.output == 512
    assert usage.cache_read == 40_000
    assert usage.cache_writes == (300, 1500)
    # input_tokens is only the uncached part: the prompt adds cache writes and reads to it.
    assert usage.prompt_tokens == 21 + 1800 + 40_000
    assert usage.web_searches == 2


def test_missing_fields_are_zero() -> None:
    usage = Usage()
    assert (usage.uncached_input, usage.output, usage.cache_read) == (0, 0, 0)
    assert usage.cache_writes == (0, 0)
    assert usage.prompt_tokens == 0
    assert usage.web_searches == 0


def test_null_fields_are_zero() -> None:
    usage = msgspec.json.decode(
        b'{"input_tokens": null, "output_tokens": 5, "cache_creation_input_tokens": null,'
        b' "cache_read_input_tokens": null, "cache_creation": null, "server_tool_use": null}',
        type=Usage,
    )
    assert usage.uncached_input == 0
    assert usage.output == 5
    assert usage.cache_writes == (0, 0)
    assert usage.web_searches == 0
    split_nulls = msgspec.convert(
        {
            "cache_creation_input_tokens": 10,
            "cache_creation": {"ephemeral_5m_input_tokens": None},
            "server_tool_use": {"web_search_requests": None},
        },
        Usage,
    )
    assert split_nulls.cache_writes == (10, 0)
    assert split_nulls.web_searches == 0


def test_cache_writes_without_split_are_five_minute_writes() -> None:
    assert Usage(cache_creation_input_tokens=700).cache_writes == (700, 0)


def test_cache_split_is_used_when_present() -> None:
    usage = msgspec.convert(
        {
            "cache_creation_input_tokens": 1000,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        },
        Usage,
    )
    assert usage.cache_writes == (0, 1000)


def test_part_of_the_total_the_split_does_not_explain_is_five_minute() -> None:
    usage = msgspec.convert(
        {"cache_creation_input_tokens": 1000, "cache_creation": {"ephemeral_1h_input_tokens": 600}},
        Usage,
    )
    assert usage.cache_writes == (400, 600)
    assert usage.prompt_tokens == 1000


def test_split_without_a_total_still_counts() -> None:
    usage = msgspec.convert(
        {"cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 7}}, Usage
    )
    assert usage.cache_writes == (5, 7)


@pytest.mark.parametrize(
    "field",
    ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"],
)
def test_negative_counts_are_rejected(field: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({field: -1}, Usage)
