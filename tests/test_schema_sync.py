"""policies/schema.json must be exactly what the Structs generate, so editors complete real keys."""

from __future__ import annotations

import json
from pathlib import Path

from budgetd.cli import schema_text
from budgetd.policy.schema import json_schema

SCHEMA_FILE = Path(__file__).parent.parent / "policies" / "schema.json"


def test_schema_file_matches_the_structs() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "policies/schema.json is out of date; regenerate it with "
        "`budgetd policy schema > policies/schema.json`"
    )


def test_schema_text_is_pretty_sorted_and_ends_with_a_newline() -> None:
    text = schema_text()
    assert text.endswith("}\n")
    assert json.loads(text) == json_schema()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_schema_describes_the_policy_file() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    policy = defs["PolicyFile"]
    assert set(policy["required"]) == {"org", "timezone"}
    assert policy["additionalProperties"] is False
    assert set(policy["properties"]) == {
        "org",
        "timezone",
        "defaults",
        "channels",
        "aliases",
        "budgets",
        "rate_limits",
        "teams",
    }
