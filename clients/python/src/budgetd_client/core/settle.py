"""Responses: what to settle a reservation with, read from the bytes as they arrive."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from budgetd_client.core.calls import Reserve

_STREAM_EVENTS = frozenset({b"message_start", b"message_delta", b"message_stop", b"error"})


@dataclass(frozen=True, slots=True)
class Commit:
    """Charge ``usage`` (the Messages API usage object, verbatim), priced at ``model``."""

    usage: dict[str, Any]
    model: str | None
    batch: bool = False
    partial: bool = False
    """The response did not finish (a broken or abandoned stream): ``usage`` is what its last
    event reported; the rest of the hold is released by the commit."""
    unknown: bool = False
    """A 2xx whose usage could not be read: ``usage`` is the reserve's own worst case (the
    call happened and was billed; budgetd must not charge less than it may have cost)."""


@dataclass(frozen=True, slots=True)
class Release:
    """Void the hold: the call produced nothing billable."""

    reason: str


Settlement = Commit | Release


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How one batch request ended, from its results line."""

    custom_id: str
    settlement: Settlement


def worst_case_usage(reserve: Reserve) -> dict[str, Any]:
    """The usage object that charges everything ``reserve`` held for prompt and output."""
    return {"input_tokens": reserve.input_tokens, "output_tokens": reserve.max_tokens}


class _Body:
    """The response body, decoded from its ``content-encoding`` incrementally."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        encoding = headers.get("content-encoding", "identity").strip().lower()
        self.readable = encoding in ("", "identity", "gzip", "deflate")
        # 32 + MAX_WBITS: a gzip or a zlib header, told apart by the decompressor itself.
        self._z = (
            zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in ("gzip", "deflate") else None
        )

    def flush(self) -> bytes:
        return self._z.flush() if self._z is not None and self.readable else b""

    def decode(self, data: bytes) -> bytes:
        if not self.readable:
            return b""
        if self._z is None:
            return data
        try:
            return self._z.decompress(data)
        except zlib.error:
            self.readable = False
            return b""


class MessageSettler:
    """Reads one ``/v1/messages`` response and says how to settle its reservation.

    Feed it the status and headers, then every body chunk as it passes (SSE or JSON; gzip or
    deflate are decoded), then ask :meth:`settle` once: with ``complete=True`` when the body
    was read to its end, ``False`` when it broke or the reader walked away.

    * non-2xx: release (Anthropic bills no failed call);
    * SSE: the ``message_start`` usage overwritten field by field by every ``message_delta``
      usage (running totals: the last wins, never summed). No ``message_start`` seen: release;
      otherwise commit, marked ``partial`` unless ``message_stop`` arrived;
    * JSON: the message's ``usage``; a body that cannot be read: the reserve's worst case.
    """

    def __init__(self, reserve: Reserve, status: int, headers: Iterable[tuple[Any, Any]]) -> None:
        sent = {_text(k).lower(): _text(v) for k, v in headers}
        self.reserve = reserve
        self.status = status
        self.sse = sent.get("content-type", "").startswith("text/event-stream")
        self._body = _Body(sent)
        self._json = bytearray()
        self._lines = _Lines()
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.finished = False
        """``message_stop`` seen."""
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        if not 200 <= self.status < 300:
            return
        data = self._body.decode(chunk)
        if not self.sse:
            self._json += data
            return
        for line in self._lines.feed(data):
            self._line(line)

    def settle(self, *, complete: bool) -> Settlement:
        if not 200 <= self.status < 300:
            return Release(reason=f"HTTP {self.status}")
        if self.sse:
            if complete:
                for line in self._lines.feed(self._body.flush()) + self._lines.flush():
                    self._line(line)
                self._line(b"")
            if self.usage is None:
                return Release(reason=self.error or "the stream ended before message_start")
            return Commit(
                usage=dict(self.usage),
                model=self.model,
                batch=self.reserve.batch,
                partial=not self.finished,
            )
        if complete:
            self._json += self._body.flush()
        message = _json_object(bytes(self._json)) if self._body.readable else None
        usage = message.get("usage") if message else None
        if isinstance(usage, dict) and message is not None:
            model = message.get("model")
            return Commit(
                usage=usage,
                model=model if isinstance(model, str) else None,
                batch=self.reserve.batch,
                partial=not complete,
            )
        return Commit(
            usage=worst_case_usage(self.reserve),
            model=None,
            batch=self.reserve.batch,
            partial=not complete,
            unknown=True,
        )

    # -- SSE -------------------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        elif line.startswith(b"data:") and (self._event is None or self._event in _STREAM_EVENTS):
            # Only the few events that carry usage are kept; text deltas are never decoded.
            self._data.append(line[5:].lstrip(b" "))

    def _dispatch(self) -> None:
        event, data = self._event, b"\n".join(self._data)
        self._event, self._data = None, []
        if not data:
            return
        payload = _json_object(data)
        if payload is None:
            return
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self.usage = dict(message["usage"])
                model = message.get("model")
                self.model = model if isinstance(model, str) else None
        elif kind == "message_delta" and self.usage is not None:
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # Running totals: overwrite, never add. Fields sent as null keep their value.
                self.usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error" or event == b"error":
            error = payload.get("error")
            self.error = str(error.get("type")) if isinstance(error, dict) else "error event"


class BatchResultsReader:
    """Reads a ``/v1/messages/batches/{id}/results`` body (JSON lines) as it arrives.

    Each line settles one request: ``succeeded`` commits its message's usage at the batch
    price; ``errored``, ``canceled`` and ``expired`` release (none is billed).
    """

    def __init__(self, status: int, headers: Iterable[tuple[Any, Any]]) -> None:
        sent = {_text(k).lower(): _text(v) for k, v in headers}
        self.status = status
        self._body = _Body(sent)
        self._lines = _Lines()

    def feed(self, chunk: bytes) -> list[BatchOutcome]:
        if not 200 <= self.status < 300:
            return []
        return self._outcomes(self._lines.feed(self._body.decode(chunk)))

    def finish(self) -> list[BatchOutcome]:
        """The last line, when the body ended without a newline."""
        if not 200 <= self.status < 300:
            return []
        return self._outcomes(self._lines.flush())

    @staticmethod
    def _outcomes(lines: Iterable[bytes]) -> list[BatchOutcome]:
        out = []
        for line in lines:
            item = _json_object(line) if line.strip() else None
            if item is not None and (outcome := batch_outcome(item)) is not None:
                out.append(outcome)
        return out


def batch_outcome(item: Mapping[str, Any]) -> BatchOutcome | None:
    """The outcome of one results line (``{"custom_id", "result": {...}}``)."""
    custom_id, result = item.get("custom_id"), item.get("result")
    if not isinstance(custom_id, str) or not isinstance(result, dict):
        return None
    kind = result.get("type")
    message = result.get("message")
    if kind == "succeeded" and isinstance(message, dict) and isinstance(message.get("usage"), dict):
        model = message.get("model")
        return BatchOutcome(
            custom_id,
            Commit(
                usage=message["usage"], model=model if isinstance(model, str) else None, batch=True
            ),
        )
    return BatchOutcome(custom_id, Release(reason=f"batch request {kind}"))


def batch_id_of(status: int, body: bytes, headers: Iterable[tuple[Any, Any]] = ()) -> str | None:
    """The batch id in a batch submit's answer (None when it was refused); ``headers`` say
    how the body is encoded, when it was not decoded already."""
    if not 200 <= status < 300:
        return None
    decoder = _Body({_text(k).lower(): _text(v) for k, v in headers})
    batch = _json_object(decoder.decode(body) + decoder.flush())
    batch_id = batch.get("id") if batch else None
    return batch_id if isinstance(batch_id, str) else None


class _Lines:
    """Splits bytes into lines (``\\n``, ``\\r\\n`` or ``\\r``), keeping the unfinished one."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        lines = (self._rest + data).splitlines(keepends=True)
        # The last piece is unfinished unless it ends in \n; one ending in \r may be the
        # first half of \r\n, so it waits for the next chunk too.
        self._rest = b"" if lines[-1].endswith(b"\n") else lines.pop()
        return [line.rstrip(b"\r\n") for line in lines]

    def flush(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return rest.splitlines()


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
