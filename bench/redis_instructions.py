"""Benchmark: the instructions Redis executes per reserve, per commit and per pair: a figure that
does not move with the machine's load, for A/B of the Lua scripts on a shared, noisy VM.

    .venv/bin/python bench/redis_instructions.py [--pairs 100] [--policies bench example]

Needs ``valgrind`` (Debian: ``apt-get install valgrind``) and ``redis-server`` on PATH. It starts
its own ``redis-server`` under callgrind (loopback, free port, no persistence; removed on exit),
drives ``budgetd.engine.Engine`` for the policies of ``bench/redis_work.py`` until every key of
the replayed user exists, records the two script calls of one real pair, then replays them with
fresh reservation ids, 50 pairs per pipeline, three ways:

  * ``pair``: reserve then commit (what a reserve + commit pair costs);
  * ``reserve``: every reserve first, then ``commit``: every commit of those holds;
  * ``floor``: the same EVALSHAs, same keys and arguments, of scripts that only return: what
    Redis spends on the request itself (reading it, building KEYS/ARGV, the reply), before any
    script logic.

Each phase runs between ``callgrind_control --zero`` and ``--dump``; the dump's total
instruction count divided by the calls is the figure (thousands of instructions, ``k``).
Callgrind counts the user-space instructions of the server, so kernel time (socket reads and
writes: ``bench/redis_work.py`` measures those as the PING floor) is not in it, and nothing
else on the machine changes it: the same scripts give the same count to within 0.1 %. Every
replayed call must be granted / committed, or the bench stops: a denial would measure a
different path. The example policy's per-user rate (120 requests a minute) bounds ``--pairs``
at 100 per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from budgetd.contract import CommitRequest, Grant
from budgetd.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import redis_process
from redis_work import CASES, USAGE, bench_engine, bench_request, recording

BATCH = 50
RETURN_ONLY = {
    "reserve": "return {'granted', 1, 2, 'x', 'held', {}}",
    "commit": "return {'committed', 1, 0, 0, 0, 'x', '', 'committed'}",
}
Call = tuple[str, list[str], list[str]]  # script, keys, args


@contextlib.contextmanager
def redis_under_callgrind(workdir: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of a redis-server run by callgrind, counting from the start."""
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.out.%p")
    with redis_process("redis-server", workdir, wrapper=wrapper, start_s=60) as server:
        yield server


class Counter:
    """Instructions the server executes between ``start()`` and ``stop()``."""

    def __init__(self, pid: int, workdir: str) -> None:
        self.pid, self.workdir = pid, workdir

    def start(self) -> None:
        subprocess.run(
            ["callgrind_control", "--zero", str(self.pid)], check=True, capture_output=True
        )

    def stop(self) -> int:
        before = set(glob.glob(f"{self.workdir}/callgrind.out.*"))
        subprocess.run(
            ["callgrind_control", "--dump", str(self.pid)], check=True, capture_output=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for path in set(glob.glob(f"{self.workdir}/callgrind.out.*")) - before:
                for line in Path(path).read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
            time.sleep(0.1)
        raise SystemExit("callgrind wrote no dump")


async def record_pair(engine: Engine, org: str, model: str, user: str) -> tuple[Call, Call, str]:
    """The reserve and commit calls of one pair of ``user`` (after its keys exist)."""

    async def pair(rid: str) -> None:
        grant = await engine.reserve(bench_request(org, user, model, rid))
        assert isinstance(grant, Grant), grant
        await engine.commit(org, rid, CommitRequest(usage=USAGE))

    for i in range(2):
        await pair(f"warm-{user}-{i}")
    with recording(engine) as recorded:
        await pair(f"recorded-{user}")
    reserve, commit = ((source, keys, [str(a) for a in args]) for _, source, keys, args in recorded)
    return reserve, commit, f"recorded-{user}"


async def measure(name: str, port: int, counter: Counter, pairs: int, tmp: Path) -> dict[str, Any]:
    org, _, model = CASES[name]
    engine = bench_engine(name, port, tmp, timeout_s=60.0)
    # One user per phase: the example policy's per-user rate (120 a minute) admits one phase.
    recorded = {p: await record_pair(engine, org, model, p) for p in ("pair", "split", "floor")}
    client: Any = engine.store.client  # type: ignore[attr-defined]
    pair_reserve, pair_commit, _ = recorded["pair"]
    shas = {
        "reserve": await client.script_load(pair_reserve[0]),
        "commit": await client.script_load(pair_commit[0]),
        "reserve-floor": await client.script_load(RETURN_ONLY["reserve"]),
        "commit-floor": await client.script_load(RETURN_ONLY["commit"]),
    }

    async def run(phase: str, scripts: tuple[str, ...], ids: range) -> None:
        """The phase's recorded calls of ``scripts`` (in order) once for each id in ``ids``."""
        reserve, commit, rid = recorded[phase]
        calls = dict(zip(("reserve", "commit"), (reserve, commit), strict=True))

        def fresh(value: str, new: str) -> str:
            if value == rid or value.endswith(":r:" + rid):
                return value[: len(value) - len(rid)] + new
            return value

        for start in range(ids.start, ids.stop, BATCH):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(ids.stop, start + BATCH)):
                new = f"x{i}"
                for script in scripts:
                    _, keys, args = calls[script.removesuffix("-floor")]
                    keys_ = [fresh(k, new) for k in keys]
                    pipe.evalsha(shas[script], len(keys_), *keys_, *(fresh(a, new) for a in args))
            for reply in await pipe.execute():
                assert reply[0] in ("granted", "committed"), reply

    async def counted(phase: str, scripts: tuple[str, ...], ids: range) -> float:
        """Thousands of instructions per id."""
        await asyncio.to_thread(counter.start)
        await run(phase, scripts, ids)
        return round(await asyncio.to_thread(counter.stop) / len(ids) / 1000, 1)

    result = {
        "policy": name,
        "pairs": pairs,
        "pair_kinstr": await counted("pair", ("reserve", "commit"), range(0, pairs)),
        # Reserves alone, then the commits of exactly those holds.
        "reserve_kinstr": await counted("split", ("reserve",), range(pairs, 2 * pairs)),
        "commit_kinstr": await counted("split", ("commit",), range(pairs, 2 * pairs)),
        "floor_pair_kinstr": await counted(
            "floor", ("reserve-floor", "commit-floor"), range(2 * pairs, 3 * pairs)
        ),
        "reserve_keys_and_args": len(pair_reserve[1]) + len(pair_reserve[2]),
        "commit_keys_and_args": len(pair_commit[1]) + len(pair_commit[2]),
    }
    await engine.store.close()
    return result


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.policies:
            # One server per policy: the second policy's counts do not include the first's keys.
            with redis_under_callgrind(tmp) as (port, pid):
                result = await measure(name, port, Counter(pid, tmp), args.pairs, Path(tmp))
            print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--policies", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(
                f"{tool} is not on PATH (Debian: apt-get install valgrind redis-server)"
            )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
