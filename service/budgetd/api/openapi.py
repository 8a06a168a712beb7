"""The OpenAPI document: each route's operation is described next to its implementation (an
``Operation`` in the route's module), and this module turns them into one document, with the
wire Structs' JSON Schemas (msgspec), the problem+json answers of every status a route can give,
and bearer auth. It is served at ``/schema/openapi.json`` and checked in as ``docs/openapi.json``.

Every route describes one (tests/api/test_openapi.py fails on a route without): Litestar's own
document gives only the info and servers, and the entry of a route that forgot its
``Operation``, which documents none of its problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import OpenAPIMediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin

from budgetd.api.problems import PROBLEM_JSON, TYPE_BASE
from budgetd.contract import MODEL_ID_TITLE, DeniedScope
from budgetd.policy.registry import PolicyRegistry
from budgetd.pricing_table import PricingTable

REF = "#/components/schemas/{name}"

PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "the body is not JSON"),
    "unauthorized": (401, "no key, an unknown key, or more than one Authorization header"),
    "forbidden": (403, "the key belongs to another org, or the route needs an admin key"),
    "unknown-org": (404, "no policy for this org"),
    "reservation-not-found": (404, "no reservation with this id in this org"),
    "not-found": (404, "no such path"),
    "method-not-allowed": (405, "the path takes other methods (see the Allow header)"),
    "conflict": (409, "the id was used with another body, or the reservation is released"),
    "payload-too-large": (413, "the body is larger than 64 KiB"),
    "uri-too-long": (414, "the path and query are longer than 4096 characters"),
    "invalid-request": (422, "a field is missing, unknown, of the wrong type or out of range"),
    "unknown-model": (422, "the model is not in the price table nor an alias of the org"),
    "retired": (422, "the model or modifier is no longer offered that day (date, successor)"),
    "budget-exceeded": (429, "a budget or rate limit denies the request"),
    "internal-error": (500, "an unexpected error (logged by the service)"),
    "store-unavailable": (503, "the budget store is unreachable and a fail-closed limit applies"),
}
"""Every problem ``type`` (after ``TYPE_BASE``), its status and what it means."""

_STATUS_WORDS = {
    200: "OK",
    201: "Created",
    400: "Malformed request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    414: "URI too long",
    422: "Invalid request",
    429: "Budget or rate limit exceeded",
    503: "Service unavailable",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying (absent on a 429 no wait can fix).",
    "schema": {"type": "integer", "minimum": 0},
}


@dataclass(frozen=True)
class Operation:
    """One route's contract. ``ok`` is the success status and its JSON body's type (``None``:
    no JSON body); ``ok_media`` adds other media types of the success body (CSV, JSON lines)."""

    method: str
    path: str
    summary: str
    operation_id: str
    ok: tuple[int, Any]
    problems: tuple[int, ...]
    body: Any = None
    query: Any = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    auth: bool = True
    ok_media: dict[str, dict[str, Any]] | None = None
    tags: tuple[str, ...] = ()
    description: str = ""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    """OpenAPI links of the success response (what a client, or a stateful fuzzer, can call
    next with values from this answer)."""


class _Types:
    """The Structs an operation set names, as msgspec schema components, with
    ``additionalProperties: false`` on those that refuse unknown fields."""

    def __init__(self, types: list[Any]) -> None:
        schemas, components = msgspec.json.schema_components(types, ref_template=REF)
        self.schemas = dict(zip(map(id, types), schemas, strict=True))
        closed: set[str] = set()
        for info in msgspec.inspect.multi_type_info(types):
            _closed_structs(info, closed, set())
        for name, schema in components.items():
            if name in closed:
                schema["additionalProperties"] = False
        self.components = components

    def of(self, type_: Any) -> dict[str, Any]:
        return self.schemas[id(type_)]


def _closed_structs(info: Any, out: set[str], seen: set[int]) -> None:
    if id(info) in seen:
        return
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.StructType):
        if info.forbid_unknown_fields:
            out.add(info.cls.__name__)
        for f in info.fields:
            _closed_structs(f.type, out, seen)
        return
    for attr in ("types", "item_type", "key_type", "value_type", "type"):
        child = getattr(info, attr, None)
        if isinstance(child, tuple):
            for c in child:
                _closed_structs(c, out, seen)
        elif isinstance(child, msgspec.inspect.Type):
            _closed_structs(child, out, seen)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details. `type` is stable; `field` names the field at "
        "fault (a dotted path for nested ones).",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {
                "type": "string",
                "enum": [TYPE_BASE + slug for slug in PROBLEM_TYPES],
                "description": "; ".join(
                    f"{slug} ({status}): {words}" for slug, (status, words) in PROBLEM_TYPES.items()
                ),
            },
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "What is wrong, in words."},
            "field": {"type": "string"},
            "state": {"type": "string", "description": "A reservation's state (409)."},
            "retry_after_s": {"type": ["integer", "null"]},
            "scopes": {
                "type": "array",
                "items": {"$ref": REF.format(name="DeniedScope")},
                "description": "The limits that denied the request (429).",
            },
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    }


def _problem_response(status: int) -> dict[str, Any]:
    slugs = [slug for slug, (s, _) in PROBLEM_TYPES.items() if s == status]
    described = "; ".join(f"`{slug}`: {PROBLEM_TYPES[slug][1]}" for slug in slugs)
    response: dict[str, Any] = {
        "description": f"{_STATUS_WORDS[status]} ({described})",
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(name="Problem")}}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


def _query_parameters(types: _Types, query: Any) -> list[dict[str, Any]]:
    schema = types.components[types.of(query)["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    params = []
    for name, declared in schema.get("properties", {}).items():
        prop = dict(declared)
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        if prop.get("default") is None:
            prop.pop("default", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop["description"]
        param["schema"] = prop
        params.append(param)
    return params


def _operation(types: _Types, op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.tags:
        out["tags"] = list(op.tags)
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in op.path_params.items()
    ]
    if op.query is not None:
        params += _query_parameters(types, op.query)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": types.of(op.body)}},
        }
    status, ok_type = op.ok
    ok: dict[str, Any] = {"description": _STATUS_WORDS.get(status, "OK")}
    content: dict[str, Any] = {}
    if ok_type is not None:
        content["application/json"] = {"schema": types.of(ok_type)}
    content.update(op.ok_media or {})
    if content:
        ok["content"] = content
    if op.links:
        ok["links"] = op.links
    responses: dict[str, Any] = {str(status): ok}
    problems = set(op.problems) | {414}
    if op.auth:
        problems |= {401}
    if op.body is not None:
        problems |= {400, 413, 422}
    if op.query is not None:
        problems |= {422}
    for p in sorted(problems):
        responses[str(p)] = _problem_response(p)
    out["responses"] = responses
    if op.auth:
        out["security"] = [{"bearer": []}]
    return out


def _list_models(node: Any, model_ids: list[str]) -> None:
    """Every model field (titled ``ModelId``) gets the priced ids as an enum."""
    if isinstance(node, dict):
        if node.get("title") == MODEL_ID_TITLE:
            node["enum"] = model_ids
        for value in node.values():
            _list_models(value, model_ids)
    elif isinstance(node, list):
        for value in node:
            _list_models(value, model_ids)


def document(
    operations: list[Operation], generated: dict[str, Any], model_ids: list[str] | None = None
) -> dict[str, Any]:
    """The OpenAPI document: ``operations`` described here, and whatever else Litestar
    ``generated`` for paths none of them covers; model fields list ``model_ids`` (the price
    table's ids and aliases) when given."""
    types_used: list[Any] = []
    for op in operations:
        for t in (op.body, op.query, op.ok[1]):
            if t is not None and t not in types_used:
                types_used.append(t)
    if DeniedScope not in types_used:
        types_used.append(DeniedScope)
    types = _Types(types_used)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(types, op)
    ours = set(paths)
    for path, item in generated.get("paths", {}).items():
        if path not in ours:
            paths[path] = item
    components = dict(generated.get("components", {}))
    schemas = {**components.get("schemas", {}), **types.components}
    schemas["Problem"] = _problem_schema()
    components["schemas"] = dict(sorted(schemas.items()))
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `budgetd keys new` (`bdk_...`), sent exactly, once.",
        }
    }
    doc = {
        "openapi": "3.1.0",
        "info": generated.get("info", {}),
        "servers": generated.get("servers", [{"url": "/"}]),
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
    if model_ids:
        _list_models(doc, model_ids)
    return doc


class SchemaPlugin(OpenAPIRenderPlugin):
    """Serves ``/schema/openapi.json``: the routes' ``Operation``s over Litestar's document."""

    def __init__(self, operations: list[Operation]) -> None:
        super().__init__(path="/openapi.json", media_type=OpenAPIMediaType.OPENAPI_JSON)
        self.operations = operations
        self._rendered: tuple[PricingTable | None, bytes] | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        registry: PolicyRegistry = request.app.state.engine.registry
        pricing = registry.current.pricing if registry.loaded else None
        # Rendered again only when the price table changes (a policy reload may bring one).
        if self._rendered is None or self._rendered[0] is not pricing:
            ids = model_ids(pricing) if pricing is not None else None
            body = msgspec.json.encode(document(self.operations, openapi_schema, ids))
            self._rendered = (pricing, body)
        return self._rendered[1]


def model_ids(pricing: PricingTable) -> list[str]:
    """The ids and aliases of the price table, sorted: what ``model`` fields accept (besides
    the aliases an org's policy adds)."""
    return sorted(pricing.models)
