"""HTTP fixtures: the real Litestar app over the ``store`` fixture, through an ASGI test client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from budgetd.app import create_app
from budgetd.auth import Role, key_line, new_key
from budgetd.clock import Clock
from budgetd.settings import Settings
from budgetd.store.base import Store
from tests.conftest import TEST_PRICING
from tests.engine.conftest import ACME

Client = httpx.AsyncClient
ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@asynccontextmanager
async def asgi_client(app: Litestar) -> AsyncIterator[Client]:
    """An httpx client on the app, in this event loop (Litestar's own test client runs the app
    on another thread's loop, where a Redis connection made here cannot be used), with the
    app's lifespan started and stopped around it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://budgetd") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def write_policy(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pricing.yaml").write_text(TEST_PRICING.read_text())
    path = directory / name
    path.write_text(text)
    return path


def write_keys(path: Path, *entries: tuple[str, Role] | tuple[str, Role, str]) -> list[str]:
    """A keys file with one new key per (org, role[, name]); returns the keys, in order."""
    made = [new_key() for _ in entries]
    lines = [key_line(key, *entry) for key, entry in zip(made, entries, strict=True)]
    path.write_text("keys:\n" + "\n".join(lines) + "\n")
    return made


def settings_for(directory: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "policy_dir": directory,
        "policy_poll_s": 0,
        "sweep_interval_s": 0,
        "clock_sync_s": 0,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def client_for(tmp_path: Path) -> ClientFactory:
    """``async with client_for(policy_text, store=..., clock=...) as client``."""

    def factory(
        policy: str, *, store: Store, clock: Clock | None = None, **settings: Any
    ) -> AbstractAsyncContextManager[Client]:
        directory = tmp_path / "policies"
        write_policy(directory, policy)
        app = create_app(settings_for(directory, **settings), store=store, clock=clock)
        return asgi_client(app)

    return factory


@pytest.fixture
async def acme_client(client_for: ClientFactory, store: Store) -> AsyncIterator[Client]:
    async with client_for(ACME, store=store) as client:
        yield client
