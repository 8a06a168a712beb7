"""A client generated from docs/openapi.json (openapi-python-client, as another team would)
builds and makes a reserve → commit round trip against the service, with bearer auth."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from budgetd.app import create_app
from budgetd.store.base import Store
from tests.api.conftest import asgi_client, settings_for, write_keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("generated")
    tool = Path(sys.executable).with_name("openapi-python-client")
    spec, target = str(REPO / "docs" / "openapi.json"), str(out / "budgetd_api")
    subprocess.run(
        [str(tool), "generate", "--path", spec, "--meta", "none", "--output-path", target],
        check=True,
        capture_output=True,
        cwd=out,
        timeout=120,
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("budgetd_api")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.startswith("budgetd_api")]:
            del sys.modules[name]


async def test_a_generated_client_reserves_and_commits(
    generated: ModuleType, store: Store, tmp_path: Path
) -> None:
    reserve = importlib.import_module("budgetd_api.api.reservations.reserve")
    commit = importlib.import_module("budgetd_api.api.reservations.commit")
    models = importlib.import_module("budgetd_api.models")
    keys = tmp_path / "keys.yaml"
    (key,) = write_keys(keys, ("acme-research", "app", "generated"))
    app = create_app(settings_for(REPO / "policies", keys_file=keys), store=store)
    async with asgi_client(app):
        client = generated.AuthenticatedClient(base_url="http://budgetd", token=key)
        client.set_async_httpx_client(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                base_url="http://budgetd",
                headers={"Authorization": f"Bearer {key}"},
            )
        )
        body = models.ReserveRequest(
            org="acme-research",
            model=models.ReserveRequestModelId("claude-haiku-4-5"),
            input_tokens=1200,
            max_tokens=400,
            user="alice",
        )
        granted = await reserve.asyncio_detailed(client=client, body=body)
        assert granted.status_code == 201, granted.content
        grant = granted.parsed
        assert isinstance(grant, models.Grant) and grant.held_micros > 0
        usage = models.Usage(input_tokens=1100, output_tokens=250)
        settled = await commit.asyncio_detailed(
            grant.reservation_id, client=client, body=models.CommitRequest(usage=usage)
        )
        assert settled.status_code == 200, settled.content
        result = settled.parsed
        assert isinstance(result, models.CommitResult)
        assert (result.state, result.cost_micros) == ("committed", 2350)
        refused = await reserve.asyncio_detailed(
            client=client, body=models.ReserveRequest.from_dict({**body.to_dict(), "org": "x"})
        )
        assert refused.status_code == 403 and isinstance(refused.parsed, models.Problem)
