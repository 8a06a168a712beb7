"""budgetd client: reserve before every Claude call, commit after, release on failure.

Quick start::

    import anthropic
    from budgetd_client import BudgetdClient, guard

    claude = guard(anthropic.Anthropic(), budgetd=BudgetdClient("http://127.0.0.1:8080"),
                   org="acme", user="alice", feature="chat")
    message = claude.messages.create(model=..., max_tokens=1024, messages=[...])

The names that need the ``anthropic`` SDK (``guard``, the transports, the SDK-typed errors) are
imported on first use, so the client and :mod:`budgetd_client.core` work without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from budgetd_client._core import ClientStats, FailMode
from budgetd_client.agent import AgentRecord, arecord_agent_result, record_agent_result
from budgetd_client.client import AsyncBudgetdClient, BudgetdClient
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
from budgetd_client.estimate import cache_ttl_of, estimate_input_tokens
from budgetd_client.reservation import (
    AsyncBudget,
    AsyncReservation,
    Budget,
    Reservation,
    Scope,
    scope,
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
    from budgetd_client.denial import (
        BudgetdRefusedError,
        BudgetdUnavailableError,
        BudgetExceededError,
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

_NEEDS_ANTHROPIC = {
    "AsyncBudgetTransport": "budgetd_client.transport",
    "BudgetTransport": "budgetd_client.transport",
    "BudgetExceededError": "budgetd_client.denial",
    "BudgetdRefusedError": "budgetd_client.denial",
    "BudgetdUnavailableError": "budgetd_client.denial",
    "AsyncGuardedAnthropic": "budgetd_client.sdk",
    "BatchSettled": "budgetd_client.sdk",
    "GuardedAnthropic": "budgetd_client.sdk",
    "asettle_batch": "budgetd_client.sdk",
    "guard": "budgetd_client.sdk",
    "settle_batch": "budgetd_client.sdk",
}


def __getattr__(name: str) -> Any:
    module = _NEEDS_ANTHROPIC.get(name)
    if module is None:
        raise AttributeError(f"module 'budgetd_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
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
