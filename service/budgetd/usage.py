"""The ``usage`` object exactly as Anthropic's Messages API returns it.

Unknown fields are accepted (the API adds fields over time) and ``null`` means 0, like a missing
field. ``input_tokens`` is the *uncached* part of the prompt: the whole prompt is
``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from budgetd import bounds

Count = Annotated[int, msgspec.Meta(ge=0, le=bounds.MAX_TOKENS)]
Requests = Annotated[int, msgspec.Meta(ge=0, le=bounds.MAX_WEB_SEARCHES)]


class CacheCreation(msgspec.Struct, frozen=True, kw_only=True):
    ephemeral_5m_input_tokens: Count | None = None
    ephemeral_1h_input_tokens: Count | None = None


class ServerToolUse(msgspec.Struct, frozen=True, kw_only=True):
    web_search_requests: Requests | None = None
    web_fetch_requests: Requests | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cache_creation_input_tokens: Count | None = None
    cache_read_input_tokens: Count | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: ServerToolUse | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None

    @property
    def uncached_input(self) -> int:
        return self.input_tokens or 0

    @property
    def output(self) -> int:
        return self.output_tokens or 0

    @property
    def cache_read(self) -> int:
        return self.cache_read_input_tokens or 0

    @property
    def cache_writes(self) -> tuple[int, int]:
        """(5-minute, 1-hour) cache-write tokens.

        Without the ``cache_creation`` split every write is a 5-minute write. With it, any part of
        ``cache_creation_input_tokens`` the split does not explain is billed as 5-minute.
        """
        total = self.cache_creation_input_tokens or 0
        split = self.cache_creation
        if split is None:
            return total, 0
        five = split.ephemeral_5m_input_tokens or 0
        hour = split.ephemeral_1h_input_tokens or 0
        unexplained = max(0, total - five - hour)
        return five + unexplained, hour

    @property
    def prompt_tokens(self) -> int:
        five, hour = self.cache_writes
        return self.uncached_input + five + hour + self.cache_read

    @property
    def web_searches(self) -> int:
        tools = self.server_tool_use
        return (tools.web_search_requests or 0) if tools else 0
