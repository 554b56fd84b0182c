"""Lean JSON schemas for the tool list: what an agent needs to call a tool and read its result, nothing more.

Every session pays for the tool list in context, and clients validate results against the output schemas,
so both are kept flat: `$ref`s inlined, `T | None` written as a type list instead of an `anyOf`, and the
titles, null defaults and class docstrings (which describe our code, not the data) left out.
"""

from __future__ import annotations

from typing import Any

_SIMPLE_KEYS = {"type", "items", "enum", "description", "minimum", "maximum", "minLength", "maxLength",
                "minItems", "maxItems", "format", "additionalProperties", "exclusiveMinimum", "examples"}  # fmt: skip


def lean(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (as pydantic writes it) without `$defs`, titles or nullable `anyOf`s; same instances valid."""
    defs = schema.get("$defs", {})
    out = _walk(schema, defs)
    out.pop("description", None)  # the model's docstring: the tool's description says what it returns
    return out


def _walk(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_walk(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = {k: v for k, v in defs[node["$ref"].rsplit("/", 1)[-1]].items() if k != "description"}
        return _walk({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _walk(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _walk(value, defs)
    if "anyOf" in out:
        out = _collapse(out)
    return out


def _collapse(node: dict[str, Any]) -> dict[str, Any]:
    """`{"anyOf": [{"type": "integer", ...}, {"type": "null"}]}` -> `{"type": ["integer", "null"], ...}`."""
    options = node["anyOf"]
    nullable = any(o == {"type": "null"} for o in options)
    rest = [o for o in options if o != {"type": "null"}]
    if not nullable or len(rest) != 1 or not isinstance(rest[0].get("type"), str) or set(rest[0]) - _SIMPLE_KEYS:
        if nullable and all(set(o) == {"type"} and isinstance(o["type"], str) for o in rest):
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            return {"type": [*(o["type"] for o in rest), "null"], **merged}
        return node
    merged = {**rest[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    merged["type"] = [rest[0]["type"], "null"]
    if "enum" in merged:
        merged["enum"] = [*merged["enum"], None]
    return merged
