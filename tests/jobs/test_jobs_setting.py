"""``BUDGETD_JOBS=none``: a replica that only serves. The org jobs (sweep, delivery, forecasts,
spikes, reports, digests, retention, period close) stop the event loop and take CPU from the
calls it serves (per-call p99 4.1-4.8 → 2.4-2.9 ms without them: docs/performance.md, "Serving
replicas without the jobs"); a deployment runs them on other replicas. The replica still keeps
itself current: its policy reload and its clock's sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.app import create_app
from budgetd.settings import ConfigError, from_env
from tests.api.conftest import asgi_client, write_keys
from tests.engine.conftest import ACME

ORG_JOBS = {"sweep", "delivery", "forecast", "spike", "reports", "digest"}


async def _job_ids(tmp_path: Path, jobs: str | None) -> set[str]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.yaml").write_text(ACME)
    (tmp_path / "policies" / "pricing.yaml").write_text(
        (Path(__file__).parents[1] / "data" / "pricing.yaml").read_text()
    )
    [admin] = write_keys(tmp_path / "keys.yaml", ("acme", "admin", "ops"))
    env = {
        "BUDGETD_POLICY_DIR": str(tmp_path / "policies"),
        "BUDGETD_KEYS_FILE": str(tmp_path / "keys.yaml"),
        **({"BUDGETD_JOBS": jobs} if jobs is not None else {}),
    }
    async with asgi_client(create_app(from_env(env))) as client:
        got = await client.get("/v1/admin/scheduler", headers={"Authorization": f"Bearer {admin}"})
        assert got.status_code == 200, got.text
        return {job["id"] for job in got.json()}


async def test_a_serving_replica_runs_only_its_own_upkeep(tmp_path: Path) -> None:
    ids = await _job_ids(tmp_path, "none")
    assert "policy-reload" in ids and "clock-sync" in ids
    assert not ids & ORG_JOBS
    assert not any(i.startswith("close:") for i in ids)


async def test_by_default_a_replica_runs_every_job(tmp_path: Path) -> None:
    assert await _job_ids(tmp_path, None) >= ORG_JOBS


def test_a_wrong_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="BUDGETD_JOBS must be all or none, not 'some'"):
        from_env({"BUDGETD_JOBS": "some"})
