"""A JSON Schema check of the keywords `manifest.schema.json` uses, standard library only.

The runtime reads manifests without the `jsonschema` package (numpy + onnxruntime only), yet every
manifest must satisfy the schema before any session runs; this covers that schema's keywords and
refuses a schema that uses any other, so the two cannot drift apart silently. The tests check it
against `jsonschema` itself.

>>> first_error({"a": 1}, {"type": "object", "properties": {"a": {"type": "string"}}})
'$.a: expected a string, got 1'
"""

from __future__ import annotations

import re
from typing import Any

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
KEYWORDS = {"type", "$ref", "anyOf", "enum", "const", "properties", "required", "additionalProperties",
            "minProperties", "items", "minItems", "maxItems", "minLength", "pattern", "minimum", "maximum",
            "exclusiveMinimum"} | ANNOTATIONS


def first_error(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, where: str = "$") -> str | None:
    """The first way `value` breaks `schema` ('$.roles.decoder.file: expected ...'), or None when it holds."""
    root = schema if root is None else root
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {where} are not checked by bigmodel.schema")
    if "$ref" in schema:
        return first_error(value, _resolve(root, schema["$ref"]), root, where)
    if "anyOf" in schema:
        if all(first_error(value, s, root, where) for s in schema["anyOf"]):
            return f"{where}: expected one of {len(schema['anyOf'])} allowed forms, got {_short(value)}"
        return None
    if "type" in schema and not _is_type(value, schema["type"]):
        return f"{where}: expected {_a(schema['type'])}, got {_short(value)}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{where}: expected {schema['const']!r}, got {_short(value)}"
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return f"{where}: expected one of {', '.join(map(repr, schema['enum']))}, got {_short(value)}"
    if isinstance(value, dict):
        return _object_error(value, schema, root, where)
    if isinstance(value, list):
        return _array_error(value, schema, root, where)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{where}: expected at least {schema['minLength']} character(s), got {_short(value)}"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{where}: expected a string matching {schema['pattern']}, got {_short(value)}"
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: expected at least {schema['minimum']}, got {_short(value)}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: expected at most {schema['maximum']}, got {_short(value)}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"{where}: expected more than {schema['exclusiveMinimum']}, got {_short(value)}"
    return None


def _object_error(value: dict, schema: dict[str, Any], root: dict[str, Any], where: str) -> str | None:
    missing = [k for k in schema.get("required", []) if k not in value]
    if missing:
        return f"{where}: expected the key(s) {', '.join(missing)}, got none"
    if len(value) < schema.get("minProperties", 0):
        return f"{where}: expected at least {schema['minProperties']} entr(y/ies), got {len(value)}"
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            sub = properties[key]
        elif extra is False:
            return f"{where}: unexpected key {key!r} (expected only {', '.join(properties)})"[:300]
        elif extra is True:
            continue
        else:
            sub = extra
        error = first_error(item, sub, root, f"{where}.{key}")
        if error:
            return error
    return None


def _array_error(value: list, schema: dict[str, Any], root: dict[str, Any], where: str) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{where}: expected at least {schema['minItems']} item(s), got {len(value)}"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{where}: expected at most {schema['maxItems']} item(s), got {len(value)}"
    for i, item in enumerate(value):
        error = first_error(item, schema["items"], root, f"{where}[{i}]") if "items" in schema else None
        if error:
            return error
    return None


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":  # JSON has no int/float split: 3.0 is an integer, true is not
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return whole and not isinstance(value, bool)
    if name == "number":
        return not isinstance(value, bool) and isinstance(value, int | float)
    return isinstance(value, TYPES[name])


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"schema $ref {ref!r}: only local references (#/...) are checked")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _a(name: str) -> str:
    return {"integer": "an integer", "object": "an object", "array": "an array"}.get(name, f"a {name}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
