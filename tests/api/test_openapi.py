"""The OpenAPI document: checked in as docs/openapi.json, equal to what the service serves, and
complete enough for a client generator and a fuzzer (every status, problem bodies, bounds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetd.app import OPERATIONS, create_app
from budgetd.cli import openapi_text
from budgetd.store.base import Store
from tests.api.conftest import asgi_client, settings_for

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


async def test_served_document_is_the_checked_in_file(store: Store) -> None:
    # The service on the repository's own policies and price table, as `budgetd serve` runs.
    app = create_app(settings_for(CHECKED_IN.parents[1] / "policies"), store=store)
    async with asgi_client(app) as client:
        served = (await client.get("/schema/openapi.json")).json()
    assert openapi_text() == CHECKED_IN.read_text(), (
        "docs/openapi.json is out of date; regenerate it with `budgetd openapi > docs/openapi.json`"
    )
    assert served == json.loads(CHECKED_IN.read_text())


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(CHECKED_IN.read_text())
    return doc


def test_every_operation_documents_its_problems_and_auth() -> None:
    doc = _doc()
    problem_types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert "https://budgetd.dev/problems/budget-exceeded" in problem_types
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    described = {(op.path, op.method.lower()) for op in OPERATIONS}
    served = {(path, method) for path, item in doc["paths"].items() for method in item}
    # Every route has a written Operation: none keeps Litestar's generated entry (which
    # documents no problem), and the fuzz (.ci/fuzz) covers them all.
    assert served == described
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            for status, response in responses.items():
                if int(status) >= 400:
                    assert "application/problem+json" in response["content"], (path, status)
                else:
                    assert response.get("content"), (path, method, status)
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}], path
                assert {"401", "414", "422"} <= responses.keys(), (path, method)
    reserve = doc["paths"]["/v1/reservations"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "409", "413", "422", "429", "503"} <= set(reserve)
    assert "Retry-After" in reserve["429"]["headers"] and "Retry-After" in reserve["503"]["headers"]
    assert reserve["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Grant"
    }


def test_bodies_refuse_unknown_fields_and_carry_bounds_and_patterns() -> None:
    schemas = _doc()["components"]["schemas"]
    reserve = schemas["ReserveRequest"]
    assert reserve["additionalProperties"] is False
    assert schemas["CommitRequest"]["additionalProperties"] is False
    assert "additionalProperties" not in schemas["Usage"]  # the API adds usage fields over time
    props = reserve["properties"]
    assert (props["max_tokens"]["minimum"], props["max_tokens"]["maximum"]) == (1, 10_000_000)
    assert "starting with a letter or digit" in props["org"]["description"]
    assert props["model"]["examples"] and props["model"]["pattern"]
    assert "claude-haiku-4-5" in props["model"]["enum"]  # the price table's ids and aliases
    adjust = schemas["AdjustmentRequest"]["properties"]["amount_micros"]
    assert adjust["not"] == {"const": 0}


def test_the_report_routes_are_described() -> None:
    doc = _doc()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    for path in ("/v1/admin/reports/usage", "/v1/admin/reports/daily", "/v1/admin/reports/budgets"):
        op = paths[path]["get"]
        assert {"200", "401", "403", "404", "414", "422", "503"} <= op["responses"].keys()
        assert "Retry-After" in op["responses"]["503"]["headers"]
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/csv"}
        params = {p["name"]: p for p in op["parameters"]}
        assert params["org"]["required"] and "letters, digits" in params["org"]["description"]
    usage = {p["name"]: p["schema"] for p in paths["/v1/admin/reports/usage"]["get"]["parameters"]}
    assert (usage["top"]["type"], usage["top"]["minimum"], usage["top"]["maximum"]) == (
        "integer",
        1,
        10_000,
    )
    assert "1970-01-01 to 2999-12-31" in usage["since"]["description"]
    assert "cost_micros" in usage["sort"]["enum"]
    audit = paths["/v1/admin/audit"]["get"]
    assert "404" not in audit["responses"]  # the trail outlives (and precedes) an org's policy
    assert audit["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    plan = paths["/v1/admin/policy/plan"]["post"]
    assert {"200", "400", "401", "403", "413", "422", "503"} <= plan["responses"].keys()
    body = schemas["PlanRequest"]
    assert body["additionalProperties"] is False
    assert "ending in .yaml" in body["properties"]["files"]["propertyNames"]["description"]
    assert schemas["Plan"]["properties"]["would_block"]["type"] == "boolean"
