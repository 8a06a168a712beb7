"""``settle="background"``: the app gets its Claude response while the commit is still on its
way to budgetd (issue 13: budgetd's latency off the app's critical path, opt-in).

A gate in front of budgetd holds every commit until the test opens it. With the default
(``settle="inline"``) a guarded call cannot return while its commit is held; with the opt-in it
returns at once, the commit is sent behind it, and closing the client waits for it (a flush).
The gate's own wait is bounded, as a hang guard, not a timing assertion."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator

import anthropic
import httpx
import pytest
from budgetd_client import AsyncBudgetdClient, BudgetdClient, guard

from conftest import COST, HAIKU, FakeMessagesAPI

MESSAGES = [{"role": "user", "content": "Say hello."}]
HANG_GUARD_S = 20.0


class Gate(httpx.BaseTransport):
    """Holds budgetd commits until opened; counts the ones held right now."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.opened = threading.Event()
        self.held = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/commit"):
            with self.lock:
                self.held += 1
            try:
                assert self.opened.wait(HANG_GUARD_S), "the gate was never opened"
            finally:
                with self.lock:
                    self.held -= 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncGate(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.opened = asyncio.Event()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/commit"):
            self.held += 1
            try:
                await asyncio.wait_for(self.opened.wait(), HANG_GUARD_S)
            finally:
                self.held -= 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds, within the hang guard (not a timing assertion)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


async def async_wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def gated(budgetd_url: str, gate: Gate) -> Iterator[BudgetdClient]:
    with BudgetdClient(budgetd_url, org="acme", transport=gate) as c:
        yield c


def user_day(client: BudgetdClient) -> tuple[int | None, int | None]:
    state = client.budgets(user="alice").budget("user-day")
    return state.spent_micros, state.held_micros


def test_background_settle_answers_before_the_commit_and_close_flushes_it(
    fake_api: FakeMessagesAPI, gated: BudgetdClient, gate: Gate, budgetd_url: str
) -> None:
    claude = guard(
        fake_api.sync_client(), budgetd=gated, org="acme", user="alice", settle="background"
    )
    message = claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert message.usage.output_tokens == 200
    with BudgetdClient(budgetd_url, org="acme") as plain:
        # The answer came back with its commit still to be sent (a worker takes it to the
        # gate, where it waits): only the hold shows.
        assert wait_for(lambda: gate.held == 1)
        spent, held = user_day(plain)
        assert (spent, held) == (0, held) and held
        gate.opened.set()
        claude.close()  # flushes the background commits
        assert user_day(plain) == (COST, 0)


def test_inline_settle_is_still_the_default(
    fake_api: FakeMessagesAPI, gated: BudgetdClient, gate: Gate, budgetd_url: str
) -> None:
    claude = guard(fake_api.sync_client(), budgetd=gated, org="acme", user="alice")
    gate.opened.set()
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    with BudgetdClient(budgetd_url, org="acme") as plain:
        assert user_day(plain) == (COST, 0)  # committed before the call returned


class Unreachable(httpx.BaseTransport):
    """budgetd answers everything but commits, which never get through."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/commit"):
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_a_background_commit_that_fails_is_counted_and_logged(
    fake_api: FakeMessagesAPI, budgetd_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    budgetd = BudgetdClient(budgetd_url, org="acme", transport=Unreachable(), retries=0)
    claude = guard(
        fake_api.sync_client(), budgetd=budgetd, org="acme", user="alice", settle="background"
    )
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    claude.close()
    assert budgetd.stats.settle_errors == 1
    assert "the hold expires on its lease" in caplog.text
    budgetd.close()


def test_background_settle_needs_a_valid_mode(fake_api: FakeMessagesAPI, budgetd_url: str) -> None:
    with (
        BudgetdClient(budgetd_url, org="acme") as budgetd,
        pytest.raises(ValueError, match="settle"),
    ):
        guard(fake_api.sync_client(), budgetd=budgetd, org="acme", settle="later")  # type: ignore[call-overload]


async def test_async_background_settle_answers_before_the_commit_and_aclose_flushes_it(
    fake_api: FakeMessagesAPI, budgetd_url: str
) -> None:
    gate = AsyncGate()
    budgetd = AsyncBudgetdClient(budgetd_url, org="acme", transport=gate)
    claude = guard(
        fake_api.async_client(), budgetd=budgetd, org="acme", user="alice", settle="background"
    )
    await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    assert await async_wait_for(lambda: gate.held == 1)
    plain = AsyncBudgetdClient(budgetd_url, org="acme")
    state = (await plain.budgets(user="alice")).budget("user-day")
    assert state.spent_micros == 0 and state.held_micros
    gate.opened.set()
    await claude.close()  # flushes the background commits
    state = (await plain.budgets(user="alice")).budget("user-day")
    assert (state.spent_micros, state.held_micros) == (COST, 0)
    await plain.aclose()
    await budgetd.aclose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_settles_its_own_calls_in_the_background(
    fake_api: FakeMessagesAPI, budgetd_url: str
) -> None:
    """A pre-fork server (gunicorn --preload) forks after the parent used the guard: the
    child's calls must not queue behind worker threads (and a pool) left in the parent."""
    budgetd = BudgetdClient(budgetd_url, org="acme")
    claude = guard(
        fake_api.sync_client(), budgetd=budgetd, org="acme", user="alice", settle="background"
    )
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    child = multiprocessing.get_context("fork").Process(target=_one_call_then_close, args=(claude,))
    child.start()
    child.join(HANG_GUARD_S)
    assert child.exitcode == 0
    claude.close()
    with BudgetdClient(budgetd_url, org="acme") as plain:
        assert user_day(plain) == (2 * COST, 0)
    budgetd.close()


def _one_call_then_close(claude: anthropic.Anthropic) -> None:
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)
    claude.close()


class ReserveGate(httpx.AsyncBaseTransport):
    """Holds bob's reserves until opened; logs, in order, when they are held and let through
    and when each commit reaches budgetd."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.opened = asyncio.Event()
        self.log: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/reservations") and b'"bob"' in request.content:
            self.log.append("reserve held")
            await asyncio.wait_for(self.opened.wait(), HANG_GUARD_S)
            self.log.append("reserve answered")
        elif request.url.path.endswith("/commit"):
            self.log.append("commit")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_async_background_commits_wait_for_the_reserves_in_flight(
    fake_api: FakeMessagesAPI, budgetd_url: str
) -> None:
    """A background commit shares the app's event loop and budgetd with the app's calls: sent
    while another call's reserve is in flight, it is work ahead of that reserve's answer, on
    the app's critical path (issue 13: async background settling was slower than inline). It
    goes out once the reserves then in flight are answered."""
    gate = ReserveGate()
    budgetd = AsyncBudgetdClient(budgetd_url, org="acme", transport=gate)
    claude = guard(
        fake_api.async_client(), budgetd=budgetd, org="acme", user="alice", settle="background"
    )
    bob = asyncio.create_task(
        claude.messages.create(
            model=HAIKU, max_tokens=300, messages=MESSAGES, extra_headers={"x-budgetd-user": "bob"}
        )
    )
    assert await async_wait_for(lambda: gate.log == ["reserve held"])
    await claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)  # alice's
    # Turns of the loop, not time: ample for a worker to take alice's commit to budgetd (no
    # I/O before the gate) had it not waited for bob's reserve.
    for _ in range(200):
        await asyncio.sleep(0)
    gate.opened.set()
    await bob
    await claude.close()  # flushes both commits
    assert gate.log == ["reserve held", "reserve answered", "commit", "commit"]
    plain = AsyncBudgetdClient(budgetd_url, org="acme")
    for user in ("alice", "bob"):
        state = (await plain.budgets(user=user)).budget("user-day")
        assert (state.spent_micros, state.held_micros) == (COST, 0)
    await plain.aclose()
    await budgetd.aclose()


class SyncReserveGate(httpx.BaseTransport):
    """The threads' :class:`ReserveGate`: holds bob's reserves until opened; logs, in order,
    when they are held and let through and when each commit reaches budgetd."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.opened = threading.Event()
        self.log: list[str] = []
        self.lock = threading.Lock()

    def note(self, what: str) -> None:
        with self.lock:
            self.log.append(what)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/reservations") and b'"bob"' in request.content:
            self.note("reserve held")
            assert self.opened.wait(HANG_GUARD_S), "the gate was never opened"
            self.note("reserve answered")
        elif request.url.path.endswith("/commit"):
            self.note("commit")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


WRONG_ORDER_WINDOW_S = 1.0
"""How long the sync test gives a worker to send a commit it should hold back. Not a timing
assertion: the test asserts an order; on a machine too slow to take a queued commit to the gate
within this window, a client that does not wait would pass unnoticed, never the reverse."""


def test_sync_background_commits_wait_for_the_reserves_in_flight(
    fake_api: FakeMessagesAPI, budgetd_url: str
) -> None:
    """The threads' twin of the async test above: a background commit shares budgetd (and the
    GIL) with the app's calls; sent while another call's reserve is in flight, it is work ahead
    of that reserve's answer, on the app's critical path. It goes out once the reserves then in
    flight are answered."""
    gate = SyncReserveGate()
    budgetd = BudgetdClient(budgetd_url, org="acme", transport=gate)
    claude = guard(
        fake_api.sync_client(), budgetd=budgetd, org="acme", user="alice", settle="background"
    )
    failed: list[BaseException] = []

    def bobs_call() -> None:
        try:
            claude.messages.create(
                model=HAIKU,
                max_tokens=300,
                messages=MESSAGES,
                extra_headers={"x-budgetd-user": "bob"},
            )
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    bob = threading.Thread(target=bobs_call)
    bob.start()
    assert wait_for(lambda: gate.log == ["reserve held"])
    claude.messages.create(model=HAIKU, max_tokens=300, messages=MESSAGES)  # alice's
    # A worker has alice's commit now; had it not waited for bob's reserve, it would reach the
    # gate within a few thread switches. Bounded, and the wait ends early if it does.
    deadline = time.monotonic() + WRONG_ORDER_WINDOW_S
    while "commit" not in gate.log and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.opened.set()
    bob.join(HANG_GUARD_S)
    assert not bob.is_alive() and not failed, failed
    claude.close()  # flushes both commits
    assert gate.log == ["reserve held", "reserve answered", "commit", "commit"]
    with BudgetdClient(budgetd_url, org="acme") as plain:
        for user in ("alice", "bob"):
            state = plain.budgets(user=user).budget("user-day")
            assert (state.spent_micros, state.held_micros) == (COST, 0)
    budgetd.close()
