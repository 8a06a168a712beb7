"""A throwaway ``redis-server`` for the benches that drive Redis from their own process
(app_profile, pipeline_deadline, redis_work, redis_instructions under valgrind): loopback, a
free port, no persistence, its files in the bench's temp dir; stopped on exit."""

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
def redis_process(
    binary: str, workdir: str, *extra: str, wrapper: tuple[str, ...] = (), start_s: float = 10.0
) -> Iterator[tuple[int, int]]:
    """Start ``binary`` (``--save "" --appendonly no``, then ``extra``), under ``wrapper`` if
    any (e.g. valgrind), wait until it accepts connections (up to ``start_s``) and yield its port
    and the pid of the process started (the wrapper's, when there is one)."""
    port = free_port()
    args = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(
        [*wrapper, *args, *extra, "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if wrapper else None,
    )
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{binary} did not start") from None
                time.sleep(0.05)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)


@contextlib.contextmanager
def throwaway_redis(binary: str, workdir: str, *extra: str) -> Iterator[int]:
    """Start ``binary`` (``--save "" --appendonly no``, then ``extra``, e.g. ``--maxmemory-policy
    noeviction``), wait until it accepts connections and yield its port."""
    with redis_process(binary, workdir, *extra) as (port, _):
        yield port
