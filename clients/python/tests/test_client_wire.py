"""The client's own connections to budgetd (``budgetd_client._wire``): kept alive and reused,
a connection budgetd closed while idle costs no retry, the path prefix and query survive,
and an unreachable budgetd is still a ``ServiceUnavailable`` after the retries.

A small threaded HTTP/1.1 server stands in for budgetd here: it counts the connections it
accepts and can close each one after answering (as uvicorn does with an idle keep-alive)."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
from collections.abc import Iterator

import msgspec
import pytest
import stamina
from budgetd_client import AsyncBudgetdClient, BudgetdClient, ServiceUnavailable

from conftest import HAIKU, USAGE, free_port

COST = {
    "model": HAIKU,
    "cost_micros": 6500,
    "breakdown": [],
    "pricing_version": "test",
    "price_effective": "2026-01-01",
    "band": "base",
    "speed": "standard",
    "batch": False,
    "us_inference": False,
}


class Stub(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.close_after_answer = False
        self.framing = "length"
        """How answers are framed: ``length``, ``chunked``, ``close`` (Connection: close) or
        ``eof`` (no length: the body ends with the connection)."""
        self.targets: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(socketserver.StreamRequestHandler):
    server: Stub

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        while True:
            line = self.rfile.readline()
            if not line:
                return
            target = line.split()[1].decode()
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            self.server.targets.append(target)
            body = json.dumps(COST).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            framing = self.server.framing
            if framing == "chunked":
                half = len(body) // 2
                chunks = [body[:half], body[half:]]
                head += b"transfer-encoding: chunked\r\n\r\n"
                body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
                body += b"0\r\nx-trailer: 1\r\n\r\n"
            elif framing == "eof":
                head += b"\r\n"
            else:
                if framing == "close":
                    head += b"connection: close\r\n"
                head += f"content-length: {len(body)}\r\n\r\n".encode()
            self.wfile.write(head + body)
            self.wfile.flush()
            if framing in ("close", "eof"):
                return
            if self.server.close_after_answer:
                # An idle keep-alive closed by the server, without a "Connection: close".
                self.connection.shutdown(socket.SHUT_RDWR)
                return


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_sequential_calls_reuse_one_connection(stub: Stub) -> None:
    with BudgetdClient(stub.url) as client:
        for _ in range(5):
            assert client.cost(model=HAIKU, usage=USAGE).cost_micros == 6500
    assert stub.connections == 1


@pytest.mark.parametrize(("framing", "connections"), [("chunked", 1), ("close", 3), ("eof", 3)])
def test_every_framing_of_an_answer_is_read(stub: Stub, framing: str, connections: int) -> None:
    stub.framing = framing
    with BudgetdClient(stub.url) as client:
        for _ in range(3):
            assert client.cost(model=HAIKU, usage=USAGE).cost_micros == 6500
        assert client.stats.retries == 0
    assert stub.connections == connections


def test_a_connection_closed_while_idle_costs_no_retry(stub: Stub) -> None:
    stub.close_after_answer = True
    with BudgetdClient(stub.url, backoff_s=5.0) as client:
        for _ in range(3):
            client.cost(model=HAIKU, usage=USAGE)
        assert client.stats.retries == 0
    assert stub.connections == 3


def test_a_path_prefix_and_the_query_reach_budgetd(stub: Stub) -> None:
    with BudgetdClient(stub.url + "/budgetd/", org="acme") as client:
        client.cost(model=HAIKU, usage=USAGE)
        with pytest.raises(msgspec.ValidationError):  # the stub answers cost to everything
            client.budgets(user="a b")
        with pytest.raises(msgspec.ValidationError):
            client.release("a b\r\nx: y")  # quoted: it cannot break the request line
    assert stub.targets == [
        "/budgetd/v1/cost",
        "/budgetd/v1/budgets?org=acme&user=a+b",
        "/budgetd/v1/reservations/a%20b%0D%0Ax:%20y/release?org=acme",
    ]


async def test_async_calls_reuse_one_connection(stub: Stub) -> None:
    client = AsyncBudgetdClient(stub.url)
    for _ in range(5):
        assert (await client.cost(model=HAIKU, usage=USAGE)).cost_micros == 6500
    await client.aclose()
    assert stub.connections == 1


def test_an_unreachable_budgetd_is_service_unavailable_after_the_retries() -> None:
    with BudgetdClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.001) as client:
        with pytest.raises(ServiceUnavailable) as raised:
            client.cost(model=HAIKU, usage=USAGE)
        assert raised.value.unreachable
        assert client.stats.requests == 3


async def test_an_unreachable_budgetd_is_service_unavailable_after_the_retries_async() -> None:
    client = AsyncBudgetdClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.001)
    with pytest.raises(ServiceUnavailable) as raised:
        await client.cost(model=HAIKU, usage=USAGE)
    assert raised.value.unreachable
    assert client.stats.requests == 3
    await client.aclose()


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        BudgetdClient("budgetd:8080")


def test_stamina_deactivated_means_one_attempt() -> None:
    stamina.set_active(False)
    try:
        with BudgetdClient(f"http://127.0.0.1:{free_port()}", retries=2) as client:
            with pytest.raises(ServiceUnavailable):
                client.cost(model=HAIKU, usage=USAGE)
            assert client.stats.requests == 1
    finally:
        stamina.set_active(True)


def test_one_async_client_serves_one_event_loop_after_another(stub: Stub) -> None:
    """A client made once and used under asyncio.run() twice (a CLI, a test per loop): the
    second loop gets its own connections instead of the first loop's closed ones."""
    client = AsyncBudgetdClient(stub.url)

    async def once() -> int:
        return (await client.cost(model=HAIKU, usage=USAGE)).cost_micros

    assert asyncio.run(once()) == 6500
    assert asyncio.run(once()) == 6500
    asyncio.run(client.aclose())
