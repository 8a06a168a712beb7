"""Fault tests reuse the HTTP fixtures (the real app over an injected store)."""

from __future__ import annotations

from tests.api.conftest import client_for

__all__ = ["client_for"]
