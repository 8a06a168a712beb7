"""The fake Anthropic upstream and ``budgetd gateway``, each a real server process on a free
loopback port (the tests and ``bench/gateway.py`` start them the same way)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.servers import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-ant-fake-upstream"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _wait_listening(server: Server, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log.read_text()[-3000:]}")
        try:
            with socket.create_connection((HOST, server.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"server did not listen: {server.log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.05)


def _start(args: list[str], log: Path, port: int, env: Mapping[str, str], wait_s: float) -> Server:
    out = log.open("wb")
    proc = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=ROOT
    )
    server = Server(proc, port, log)
    _wait_listening(server, wait_s)
    return server


def start_fake_upstream(workdir: Path) -> Server:
    port = free_port()
    return _start(
        [sys.executable, "-m", "tests.gateway.fake_upstream", str(port)],
        workdir / "fake_upstream.log",
        port,
        {"FAKE_ANTHROPIC_KEY": UPSTREAM_KEY},
        20,
    )


def start_gateway(workdir: Path, env: Mapping[str, str], workers: int = 1) -> Server:
    """``budgetd gateway`` as an operator runs it (``env``: the BUDGETD_* settings)."""
    port = free_port()
    return _start(
        [sys.executable, "-m", "budgetd.cli", "gateway"],
        workdir / f"gateway-{port}.log",
        port,
        {**env, "BUDGETD_GATEWAY_PORT": str(port), "BUDGETD_WORKERS": str(workers)},
        60,
    )
