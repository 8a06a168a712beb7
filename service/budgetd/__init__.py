"""budgetd: spend budgets and rate quotas for Claude API usage."""

__version__ = "0.1.0"
