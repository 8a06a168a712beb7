"""Schemathesis hooks for .ci/fuzz (loaded through SCHEMATHESIS_HOOKS).

JSON Schema counts ``2.0`` as an integer and schemathesis spells some generated integers that
way; budgetd refuses a non-integer literal where it takes a whole number, on purpose
(docs/decisions.md, Contract). Left in, nearly every generated reservation carried one of its
five integers as a float, so almost none was granted and the stateful phase never followed the
reserve → commit / release links. Bodies are sent with whole floats written as integers;
fractions (``2.5``) and everything else are sent as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _integers(body)
