"""The no-op baseline for ``reserve_commit.py``: the service's two routes with nothing behind them.

Same framework, same server settings, same paths, same request bodies decoded into the same
msgspec Structs (``budgetd.contract``), so the difference to the real service is exactly what
budgetd does after decoding: auth, pricing, policy resolution, the Redis round trip and the
response body. Each handler answers a small Struct.

Run by the bench as ``uvicorn echo_app:app --app-dir bench``; not part of the service.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, post
from litestar.params import Parameter

from budgetd.contract import CommitRequest, ReserveRequest


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    id: str


@post("/v1/reservations", status_code=201)
async def reserve(data: ReserveRequest) -> Echo:
    return Echo(ok=True, id=data.reservation_id or "")


@post("/v1/reservations/{reservation_id:str}/commit", status_code=200)
async def commit(
    reservation_id: str, data: CommitRequest, org: str | None = Parameter(query="org", default=None)
) -> Echo:
    del data  # decoded and validated, like the service's; nothing to do with it
    return Echo(ok=org is not None, id=reservation_id)


app = Litestar(route_handlers=[reserve, commit], openapi_config=None)
