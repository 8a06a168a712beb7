"""The engine fixtures (``make_engine``, ``clock``) for job tests."""

from __future__ import annotations

from tests.engine.conftest import clock, engine, make_engine

__all__ = ["clock", "engine", "make_engine"]
