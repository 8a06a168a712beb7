"""``budgetd serve`` as deployed (uvicorn, httptools): an over-long URL is the app's own 414
problem, not the server's plain-text 400."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_a_long_reservation_id_through_uvicorn_is_a_414_problem() -> None:
    port = free_port()
    env = {**os.environ, "BUDGETD_PORT": str(port), "BUDGETD_POLICY_DIR": str(REPO / "policies")}
    env.pop("BUDGETD_REDIS_URL", None)
    budgetd = str(Path(sys.executable).with_name("budgetd"))
    proc = subprocess.Popen(
        [budgetd, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "budgetd did not start"
            time.sleep(0.1)
        path = "/v1/reservations/" + "r" * 20_000 + "/commit"
        answer = _raw(
            port,
            f"POST {path} HTTP/1.1\r\nHost: budgetd\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414")
        assert b"content-type: application/problem+json" in head.lower()
        assert b"budgetd answers at most 4096" in body
    finally:
        proc.terminate()
        proc.wait(10)
