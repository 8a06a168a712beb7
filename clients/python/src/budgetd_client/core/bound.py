"""An upper bound on a Messages API request's input tokens, from its JSON body alone.

Why it is a bound (``docs/decisions.md``, "Input bound"): Claude's tokenizer is a byte-level
BPE, so every token of a text stands for at least one UTF-8 byte of it, and a text of n bytes is
at most n tokens. The request body is JSON, and JSON never shortens a string (``\\n`` is two
bytes, a non-ASCII character is its UTF-8 bytes or a longer ``\\uXXXX`` escape), so the body's
length is at least the byte count of every text in it: system prompt, messages, tool
definitions, tool inputs and results. The JSON around each message and block (``{"role":
"user","content":[{"type":"text","text":""}]}``) is itself tens of bytes, more than the few
formatting tokens the API adds per turn and block. What the body does *not* carry is added:

* base64 image data is replaced by ``IMAGE_TOKENS`` per image: the most an image can cost
  after the API's own downscaling (1,568 px long edge ≈ 1,600 tokens before the 4.7 models,
  2,576 px ≈ 4,784 tokens on them); images by URL or file id the same;
* the tool-use system prompt the API adds when ``tools`` are given (at most 530 tokens in
  Anthropic's published table): ``TOOL_PROMPT_TOKENS``;
* each Anthropic-defined tool (``type`` other than ``custom``: web search, code execution,
  computer use, text editor, bash, memory…), whose definition the API expands server-side
  (the largest published, computer use, is 735 + 499 tokens): ``SERVER_TOOL_TOKENS``.

Two things cannot be bounded from the body: PDF documents (a page is an image plus its text
layer, and a compressed text layer may hold more text than its bytes) and remote definitions
(``mcp_servers``, ``container.skills``). For those the bound adds a documented fallback and
says so (``Bound.proven`` is False); the caller may opt into an upstream ``count_tokens``
round trip instead (:func:`count_body`, :meth:`Bound.counted`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

REQUEST_TOKENS = 64
"""The request's own framing (start of turn, end of prompt markers)."""
IMAGE_TOKENS = 4_800
TOOL_PROMPT_TOKENS = 1_000
SERVER_TOOL_TOKENS = 2_000
PDF_PAGE_TOKENS = 10_000
"""Fallback per PDF page: an image (≤ 4,800) plus a dense text layer."""
PDF_PAGES_UNKNOWN = 100
"""Pages assumed for a PDF the body does not carry (URL, file id): the API's page limit."""
REMOTE_TOKENS = 20_000
"""Fallback per MCP server or skill: their definitions are fetched server-side."""
COUNT_MARGIN = 0.05
"""Added to an upstream ``count_tokens`` answer, which Anthropic calls an estimate."""

_COUNT_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
    "speed",
)
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


@dataclass(frozen=True, slots=True)
class Bound:
    """The input bound of one request and whether it is proven from the body alone."""

    tokens: int
    proven: bool
    """False when a fallback figure stands in for content the body does not carry."""

    def counted(self, count_tokens_answer: int) -> int:
        """The figure to hold given the upstream ``count_tokens`` answer: that answer plus
        ``COUNT_MARGIN``, but never above a proven bound (the proof is the stronger fact)."""
        counted = math.ceil(count_tokens_answer * (1 + COUNT_MARGIN))
        return min(counted, self.tokens) if self.proven else counted


def input_bound(body: bytes, request: Mapping[str, Any]) -> Bound:
    """The bound for ``request`` (the decoded ``body``): see the module docstring."""
    walk = _Walk()
    for key in ("system", "messages"):
        walk.content(request.get(key))
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        walk.extra += TOOL_PROMPT_TOKENS
        for tool in tools:
            if isinstance(tool, Mapping) and tool.get("type") not in (None, "custom"):
                walk.extra += SERVER_TOOL_TOKENS
    for key in ("mcp_servers",):
        servers = request.get(key)
        if isinstance(servers, list) and servers:
            walk.extra += REMOTE_TOKENS * len(servers)
            walk.proven = False
    container = request.get("container")
    if isinstance(container, Mapping) and isinstance(container.get("skills"), list):
        walk.extra += REMOTE_TOKENS * len(container["skills"])
        walk.proven = False
    tokens = len(body) - walk.excluded + walk.extra + REQUEST_TOKENS
    return Bound(tokens=max(tokens, REQUEST_TOKENS), proven=walk.proven)


def count_body(request: Mapping[str, Any]) -> bytes:
    """The body of the ``POST /v1/messages/count_tokens`` request for the same prompt."""
    return msgspec.json.encode({k: request[k] for k in _COUNT_FIELDS if k in request})


class _Walk:
    """Finds the bytes the body spends on base64 data (not tokens) and what to add instead."""

    def __init__(self) -> None:
        self.excluded = 0
        self.extra = 0
        self.proven = True

    def content(self, value: Any) -> None:
        # Concrete types: this runs over every block of a large prompt, and an ABC check
        # costs several times a type check. Decoded JSON is dicts and lists.
        if type(value) is list:
            for item in value:
                self.content(item)
        elif type(value) is dict:
            kind = value.get("type")
            if kind == "image":
                self.image(value)
            elif kind == "document":
                self.document(value)
            else:
                # messages ({"role", "content"}), tool results, search results, anything new:
                # only nested content can carry base64 data.
                for key in ("content", "source"):
                    if key in value:
                        self.content(value[key])

    def _data(self, source: Any) -> str | None:
        if isinstance(source, Mapping) and source.get("type") == "base64":
            data = source.get("data")
            if isinstance(data, str):
                self.excluded += len(data.encode())
                return data
        return None

    def image(self, block: Mapping[str, Any]) -> None:
        self._data(block.get("source"))
        self.extra += IMAGE_TOKENS

    def document(self, block: Mapping[str, Any]) -> None:
        source = block.get("source")
        kind = source.get("type") if isinstance(source, Mapping) else None
        if kind in ("text", "content"):
            if kind == "content" and isinstance(source, Mapping):
                self.content(source.get("content"))
            return  # plain text (already in the body's bytes) or blocks (walked above)
        self.proven = False
        data = self._data(source)
        pages = _pdf_pages(data) if data is not None else PDF_PAGES_UNKNOWN
        self.extra += PDF_PAGE_TOKENS * pages


def _pdf_pages(data: str) -> int:
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return PDF_PAGES_UNKNOWN
    pages = len(_PDF_PAGE.findall(raw))
    return pages if pages > 0 else PDF_PAGES_UNKNOWN
