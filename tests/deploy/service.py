"""Run ``budgetd serve`` as its own process, as a container would (tests of what an install
does; the metrics and log tests use it too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.servers import HOST, free_port


class Service:
    """``budgetd serve`` on a free loopback port with exactly the given BUDGETD_* environment
    (none inherited from the test run). stdout and stderr go to ``log``."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETD_")}
        self.env = {**clean, **env, "BUDGETD_HOST": HOST, "BUDGETD_PORT": str(self.port)}
        budgetd = shutil.which("budgetd", path=str(Path(sys.executable).parent))
        assert budgetd is not None, "the budgetd console script is not installed"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [budgetd, "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, deadline_s: float = 30.0) -> httpx.Response:
        """The first 200 from /readyz (fails with the service's log past the deadline)."""
        stop = time.monotonic() + deadline_s
        last = "no answer"
        while time.monotonic() < stop:
            assert self.proc.poll() is None, f"budgetd exited:\n{self.log.read_text()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return r
                last = f"{r.status_code} {r.text}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"not ready after {deadline_s} s: {last}\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
