"""A throwaway ``redis-server`` for the benches that drive Redis from their own process
(app_profile, pipeline_deadline, redis_work): loopback, a free port, no persistence, its files
in the bench's temp dir; stopped on exit."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_redis(binary: str, workdir: str, *extra: str) -> Iterator[int]:
    """Start ``binary`` (``--save "" --appendonly no``, then ``extra``, e.g. ``--maxmemory-policy
    noeviction``), wait until it accepts connections and yield its port."""
    port = free_port()
    args = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*args, *extra, "--dir", workdir], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
