"""The sans-I/O core of budgeting a Messages API call: bytes in, decisions out.

No sockets, no ``await``, no HTTP library: the client's sync and async transports and the
``budgetd gateway`` are shells that move bytes and call budgetd; every rule about *what* to
reserve and *how* to settle lives here, once. This API is stable (the gateway imports it).

Request side::

    call = plan_call(method, target, headers, body, defaults)   # -> Call
    call.route            # Route.MESSAGE | BATCH_SUBMIT | BATCH_RESULTS | BATCH_CANCEL | OTHER
    call.headers          # headers to send upstream: x-budgetd-* removed (str or bytes pairs,
                          # as given); accept-encoding limited to what the settlers decode
    call.reserves         # tuple[Reserve, ...]: one per message, one per batch request
    call.stream           # the message asked for SSE
    call.batch_id         # results / cancel: the batch's id
    call.count_body       # the count_tokens body for the same prompt (opt-in round trip)
    reserve.fields()      # kwargs of BudgetdClient.reserve / fields of ReserveRequest
                          # (model, input_tokens, max_tokens, user, feature, metadata,
                          #  cache_ttl, batch, inference_geo, speed, web_searches)
    reserve.counted(n)    # the same reserve from an upstream count_tokens answer n
    reserve.custom_id     # batch submits: the request's custom_id
    reserve.bound         # Bound(tokens, proven): the input upper bound (see bound.py)

``plan_call`` raises :class:`RequestRefused` (``.field``) for a budgeted route whose body
cannot be read; such a request must not be sent. Attribution, weakest first: ``defaults``, the
request's ``metadata.user_id`` (when it is a valid budgetd id), then the ``x-budgetd-user``,
``x-budgetd-feature`` and ``x-budgetd-session`` headers. A session goes in the reservation's
``session`` field (the entity of session-scope budgets).

Response side::

    settler = MessageSettler(reserve, status, headers)   # a message's response
    settler.feed(chunk)                                  # each body chunk, as it passes
    settler.settle(complete=True | False)                # -> Commit | Release

    reader = BatchResultsReader(status, headers)         # a batch's results (JSON lines)
    reader.feed(chunk) / reader.finish()                 # -> [BatchOutcome(custom_id, settlement)]
    batch_id_of(status, body, headers=())                # a batch submit's answer -> its id

``Commit(usage, model, batch, partial, unknown)``: commit ``usage`` verbatim, priced at
``model`` (the response's). ``Release(reason)``: void the hold. ``complete=False`` means the
body broke or the reader walked away: a stream then commits what its last event reported
(``partial=True``; the commit gives back the rest of the hold), or releases when no
``message_start`` was seen.
"""

from __future__ import annotations

from budgetd_client.core.bound import Bound, count_body, input_bound
from budgetd_client.core.calls import (
    FEATURE_HEADER,
    HEADER_PREFIX,
    SESSION_HEADER,
    USER_HEADER,
    Attribution,
    Call,
    RequestRefused,
    Reserve,
    Route,
    cache_ttl_of,
    plan_call,
    plan_message,
    route_of,
    upstream_headers,
    web_searches_of,
)
from budgetd_client.core.settle import (
    BatchOutcome,
    BatchResultsReader,
    Commit,
    MessageSettler,
    Release,
    Settlement,
    batch_id_of,
    batch_outcome,
    worst_case_usage,
)

__all__ = [
    "FEATURE_HEADER",
    "HEADER_PREFIX",
    "SESSION_HEADER",
    "USER_HEADER",
    "Attribution",
    "BatchOutcome",
    "BatchResultsReader",
    "Bound",
    "Call",
    "Commit",
    "MessageSettler",
    "Release",
    "RequestRefused",
    "Reserve",
    "Route",
    "Settlement",
    "batch_id_of",
    "batch_outcome",
    "cache_ttl_of",
    "count_body",
    "input_bound",
    "plan_call",
    "plan_message",
    "route_of",
    "upstream_headers",
    "web_searches_of",
    "worst_case_usage",
]
