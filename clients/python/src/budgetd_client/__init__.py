"""budgetd client: reserve before every Claude call, commit after, release on failure.

Quick start::

    import anthropic
    from budgetd_client import BudgetdClient, guard

    claude = guard(anthropic.Anthropic(), budgetd=BudgetdClient("http://127.0.0.1:8080"),
                   org="acme", user="alice", feature="chat")
    message = claude.messages.create(model=..., max_tokens=1024, messages=[...])

Names are imported on first use: :mod:`budgetd_client.core` (which ``budgetd gateway`` imports
server-side) needs neither the HTTP clients nor the ``anthropic`` SDK, and the client needs the
SDK only for ``guard`` and the transports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from budgetd_client.errors import (
    BudgetdError,
    BudgetExceeded,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UnknownModel,
)
from budgetd_client.types import (
    AdjustmentResult,
    BudgetsResult,
    CommitResult,
    CostResult,
    DeniedScope,
    Grant,
    RecordResult,
    ReleaseResult,
    ScopeState,
    Usage,
)

if TYPE_CHECKING:
    from budgetd_client._core import ClientStats, FailMode
    from budgetd_client.agent import AgentRecord, arecord_agent_result, record_agent_result
    from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
    from budgetd_client.denial import (
        BudgetdRefusedError,
        BudgetdUnavailableError,
        BudgetExceededError,
    )
    from budgetd_client.estimate import cache_ttl_of, estimate_input_tokens
    from budgetd_client.reservation import (
        AsyncBudget,
        AsyncReservation,
        Budget,
        Reservation,
        Scope,
        scope,
    )
    from budgetd_client.sdk import (
        AsyncGuardedAnthropic,
        BatchSettled,
        GuardedAnthropic,
        asettle_batch,
        guard,
        settle_batch,
    )
    from budgetd_client.transport import AsyncBudgetTransport, BudgetTransport

# Imported on first use: importing budgetd_client.core (as budgetd gateway does) must need
# neither the HTTP clients nor the anthropic SDK.
_LAZY = {
    "ClientStats": "_core",
    "FailMode": "_core",
    "AgentRecord": "agent",
    "arecord_agent_result": "agent",
    "record_agent_result": "agent",
    "AsyncBudgetdClient": "client",
    "BudgetdClient": "client",
    "BudgetExceededError": "denial",
    "BudgetdRefusedError": "denial",
    "BudgetdUnavailableError": "denial",
    "cache_ttl_of": "estimate",
    "estimate_input_tokens": "estimate",
    "AsyncBudget": "reservation",
    "AsyncReservation": "reservation",
    "Budget": "reservation",
    "Reservation": "reservation",
    "Scope": "reservation",
    "scope": "reservation",
    "AsyncGuardedAnthropic": "sdk",
    "BatchSettled": "sdk",
    "GuardedAnthropic": "sdk",
    "asettle_batch": "sdk",
    "guard": "sdk",
    "settle_batch": "sdk",
    "AsyncBudgetTransport": "transport",
    "BudgetTransport": "transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'budgetd_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"budgetd_client.{module}"), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AdjustmentResult",
    "AgentRecord",
    "AsyncBudget",
    "AsyncBudgetTransport",
    "AsyncBudgetdClient",
    "AsyncGuardedAnthropic",
    "AsyncReservation",
    "BatchSettled",
    "Budget",
    "BudgetExceeded",
    "BudgetExceededError",
    "BudgetTransport",
    "BudgetdClient",
    "BudgetdError",
    "BudgetdRefusedError",
    "BudgetdUnavailableError",
    "BudgetsResult",
    "ClientStats",
    "CommitResult",
    "Conflict",
    "CostResult",
    "DeniedScope",
    "FailMode",
    "Forbidden",
    "Grant",
    "GuardedAnthropic",
    "InvalidRequest",
    "NotFound",
    "RecordResult",
    "ReleaseResult",
    "Reservation",
    "Scope",
    "ScopeState",
    "ServiceUnavailable",
    "Unauthorized",
    "UnknownModel",
    "Usage",
    "__version__",
    "arecord_agent_result",
    "asettle_batch",
    "cache_ttl_of",
    "estimate_input_tokens",
    "guard",
    "record_agent_result",
    "scope",
    "settle_batch",
]
