"""Validate a JSON report read back from disk against lipcheck's own schema.

Readers of reports (`compare`, `check --baseline`, `plot`) index fields freely; a report
that was edited, truncated or written by something else must be refused with one line
(UserError, exit code 2) before they do. This implements the subset of JSON Schema that
`schema/report.schema.json` uses (type, required, properties, additionalProperties, items,
enum, minimum, pattern, oneOf, $ref), so no runtime dependency on `jsonschema` is needed.
"""
from __future__ import annotations

import math
import re
from typing import Any

from lipcheck.errors import UserError

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate_report(data: Any, source: str) -> None:
    from lipcheck.report import load_schema
    schema = load_schema()
    problem = _problem(data, schema, schema, "")
    if problem:
        raise UserError(f"report {source} is not a valid lipcheck report: {problem}")


def _is_type(value: Any, name: str) -> bool:
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def _problem(value: Any, schema: dict, root: dict, where: str) -> str | None:
    """The first way `value` breaks `schema`, as 'where: what', or None."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in schema:
        if all(_problem(value, s, root, where) for s in schema["oneOf"]):
            return f"{where or 'top level'}: does not match any allowed form"
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, n) for n in names):
            return f"{where or 'top level'}: expected {' or '.join(names)}"
    return _value_problem(value, schema, where) or _children_problem(value, schema, root, where)


def _value_problem(value: Any, schema: dict, where: str) -> str | None:
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        return f"{where}: {value!r} is below {schema['minimum']}"
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        return f"{where}: {value!r} does not match {schema['pattern']!r}"
    return None


def _children_problem(value: Any, schema: dict, root: dict, where: str) -> str | None:
    if isinstance(value, dict):
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            return f"{where or 'top level'}: missing field {missing[0]!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            if extra is False and key not in props:
                return f"{where or 'top level'}: unexpected field {key!r}"
            found = _problem(item, sub, root, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found = _problem(item, schema["items"], root, f"{where}[{i}]")
            if found:
                return found
    return None
