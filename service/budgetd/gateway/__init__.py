"""``budgetd gateway``: an Anthropic Messages API-compatible endpoint that budgets every call it
forwards, with the engine in-process. Apps that cannot change code (any language, Claude Code)
point ``ANTHROPIC_BASE_URL`` at it and use a budgetd key as their API key."""
