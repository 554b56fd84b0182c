"""Lean JSON schemas for the tool list: what an agent needs to call a tool and read its result, nothing more.

Every session pays for the tool list in context, and clients validate results against the output schemas,
so both are kept flat: `$ref`s inlined, `T | None` written as a type list instead of an `anyOf`, and the
titles, null defaults and class docstrings (which describe our code, not the data) left out.
"""

from __future__ import annotations

from typing import Any


def lean(schema: dict[str, Any], *, inputs: bool = False) -> dict[str, Any]:
    """`schema` (as pydantic writes it) without `$defs`, titles, `null` options or nested `anyOf`s.

    `null` is dropped where a property may be left out instead: optional arguments (the agent omits them;
    null is still accepted) and optional result fields (results are dumped without their None values).
    Input schemas keep their defaults, which tell the agent something; output schemas drop them.
    """
    defs = schema.get("$defs", {})
    out: dict[str, Any] = _walk(schema, defs, inputs)
    out.pop("description", None)  # the model's docstring: the tool's description says what it returns
    if not inputs:  # a result's fields and their types; which are always there matters to validators only
        out.pop("required", None)
        for sub in _nested_objects(out):
            sub.pop("required", None)
            sub.pop("type", None)  # `properties` says it is an object
    return out


def _nested_objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for sub in schema.get("properties", {}).values():
        for node in (sub, sub.get("items", {})):
            if isinstance(node, dict) and "properties" in node:
                found += [node, *_nested_objects(node)]
    return found


_PER_TYPE = {
    "items",
    "properties",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
}


def _walk(node: Any, defs: dict[str, Any], inputs: bool) -> Any:
    if isinstance(node, list):
        return [_walk(item, defs, inputs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = {k: v for k, v in defs[node["$ref"].rsplit("/", 1)[-1]].items() if k != "description"}
        return _walk({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs, inputs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and (value is None or not inputs)):
            continue
        if key == "additionalProperties" and value is True:
            continue
        if key == "properties":
            required = set(node.get("required", ()))
            out[key] = {name: _optional(_walk(sub, defs, inputs), name in required) for name, sub in value.items()}
        else:
            out[key] = _walk(value, defs, inputs)
    return _collapse(out, inputs) if "anyOf" in out else out


def _optional(node: dict[str, Any], required: bool) -> dict[str, Any]:
    """A property that may be left out needs no `null`: drop it from its type (and enum)."""
    kind = node.get("type")
    if required or not isinstance(kind, list) or "null" not in kind:
        return node
    kinds = [k for k in kind if k != "null"]
    out = {**node, "type": kinds[0] if len(kinds) == 1 else kinds}
    if "enum" in out:
        out["enum"] = [v for v in out["enum"] if v is not None]
    return out


def _collapse(node: dict[str, Any], inputs: bool) -> dict[str, Any]:
    """`{"anyOf": [{"type": "integer", ...}, {"type": "null"}]}` -> `{"type": ["integer", "null"], ...}`.

    Options of distinct types whose other keywords each constrain one type only merge into one schema
    that accepts the same values; anything else keeps its `anyOf`. Input schemas keep an `anyOf` of two
    real types: some clients map tool inputs onto a dialect with one `type` per schema.
    """
    options, rest = node["anyOf"], {k: v for k, v in node.items() if k != "anyOf"}
    if inputs and sum(o != {"type": "null"} for o in options) > 1:
        return node
    types: list[str] = []
    merged: dict[str, Any] = {}
    for option in options:
        kind = option.get("type")
        if not isinstance(kind, str) or kind in types:
            return node
        types.append(kind)
        for key, value in option.items():
            if key == "type":
                continue
            if key == "enum" and len(options) == 2 and {"type": "null"} in options:
                value = [*value, None]
            elif key not in _PER_TYPE or merged.get(key, value) != value:
                return node
            merged[key] = value
    return {**merged, "type": types[0] if len(types) == 1 else types, **rest}
