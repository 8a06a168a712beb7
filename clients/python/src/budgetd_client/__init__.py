"""budgetd client: reserve before every Claude call, commit after, release on failure.

Quick start::

    import anthropic
    from budgetd_client import BudgetdClient, guard

    claude = guard(anthropic.Anthropic(), budgetd=BudgetdClient("http://127.0.0.1:8080"),
                   org="acme", user="alice", feature="chat")
    message = claude.messages.create(model=..., max_tokens=1024, messages=[...])
"""

from __future__ import annotations

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
from budgetd_client.guard import AsyncGuardedAnthropic, GuardedAnthropic, guard
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

__version__ = "0.1.0"

__all__ = [
    "AdjustmentResult",
    "AgentRecord",
    "AsyncBudget",
    "AsyncBudgetdClient",
    "AsyncGuardedAnthropic",
    "AsyncReservation",
    "Budget",
    "BudgetExceeded",
    "BudgetdClient",
    "BudgetdError",
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
    "cache_ttl_of",
    "estimate_input_tokens",
    "guard",
    "record_agent_result",
    "scope",
]
