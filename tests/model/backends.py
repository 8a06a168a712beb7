"""Where the model test runs the engine: the embedded store, or a real server whose clock the
test moves (see clocks.py). Each gives stores, moves time, and (a real server) can be stalled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from budgetd.store.connect import embedded_store, redis_store
from budgetd.store.scripted import ScriptStore
from tests.model.clocks import TimeShiftedValkey, frozen_process_time

STORE_TIMEOUT_S = 5.0
"""Generous: a loaded CI machine must not turn a slow answer into a fault the model did not
inject. Stalls use STALL_TIMEOUT_S instead, set on the store for the one call."""
STALL_TIMEOUT_S = 0.05


class Backend(Protocol):
    name: str
    can_stall: bool

    def begin(self, start_ms: int) -> None:
        """Freeze the store's clock at ``start_ms``; called once per example."""

    def set_ms(self, epoch_ms: int) -> None: ...

    def end(self) -> None: ...

    async def stores(self) -> tuple[ScriptStore, ScriptStore]:
        """Two stores on the same data: two replicas of the service."""

    def stall(self) -> None: ...

    def unstall(self) -> None: ...


class EmbeddedBackend:
    """fakeredis in this process; both replicas share the one in-memory server (the embedded
    store is per process, so that is all a second replica could be)."""

    name = "embedded"
    can_stall = False

    def __init__(self) -> None:
        self._cell: list[int] | None = None
        self._cm: object = None
        self._exit: Callable[[], object] | None = None

    def begin(self, start_ms: int) -> None:
        cm = frozen_process_time(start_ms)
        self._cell = cm.__enter__()
        self._exit = lambda: cm.__exit__(None, None, None)

    def set_ms(self, epoch_ms: int) -> None:
        assert self._cell is not None
        self._cell[0] = epoch_ms

    def end(self) -> None:
        if self._exit is not None:
            self._exit()
            self._exit = None

    async def stores(self) -> tuple[ScriptStore, ScriptStore]:
        store = embedded_store()
        return store, store

    def stall(self) -> None:
        raise NotImplementedError

    def unstall(self) -> None:
        raise NotImplementedError


class ValkeyBackend:
    """A real server process (Valkey 8 under libfaketime); two replicas = two connections."""

    name = "valkey"
    can_stall = True

    def __init__(self, server: TimeShiftedValkey) -> None:
        self.server = server

    def begin(self, start_ms: int) -> None:
        self.server.set_ms(start_ms)

    def set_ms(self, epoch_ms: int) -> None:
        self.server.set_ms(epoch_ms)

    def end(self) -> None:
        self.server.resume()

    async def stores(self) -> tuple[ScriptStore, ScriptStore]:
        first = redis_store(self.server.url, timeout_s=STORE_TIMEOUT_S)
        await first.client.flushall()
        return first, redis_store(self.server.url, timeout_s=STORE_TIMEOUT_S)

    def stall(self) -> None:
        self.server.pause()

    def unstall(self) -> None:
        self.server.resume()
