"""JSON schemas for the structured-output tests, generated with hypothesis-jsonschema from
meta-schemas (JSON schemas whose instances are JSON schemas): objects of 1-5 named
properties, each a leaf (strings bounded by maxLength or by a pattern, integers and
numbers with bounds, booleans, enums of mixed values), an array of leaves (2-4 items at
most), or a nested object of 1-3 leaves; every object's properties required and no
others (OpenAI's strict mode). Derandomized: the same schemas on every run.
"""
from __future__ import annotations

import json
from typing import Any

PATTERNS = ["^[a-z]{1,8}$", "^[0-9]{3}-[0-9]{4}$", "^(red|green|blue)$", "^[A-Z][a-z]{0,9}$"]


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


LEAF = {"anyOf": [
    _obj({"type": {"const": "string"}, "maxLength": _int(1, 16)}, ["type", "maxLength"]),
    _obj({"type": {"const": "string"}, "pattern": {"enum": PATTERNS}}, ["type", "pattern"]),
    _obj({"type": {"const": "integer"}, "minimum": _int(-100, 0), "maximum": _int(1, 10000)},
         ["type", "minimum", "maximum"]),
    _obj({"type": {"const": "number"}, "minimum": _int(-50, 0),
          "exclusiveMaximum": _int(1, 100)}, ["type", "minimum", "exclusiveMaximum"]),
    _obj({"type": {"const": "boolean"}}, ["type"]),
    _obj({"enum": {"type": "array", "items": {"enum": ["a", "b", "cat", "dog", 1, 2, None, True]},
                   "minItems": 1, "maxItems": 4, "uniqueItems": True}}, ["enum"]),
]}
NAME = "^[a-z]{1,6}$"


def _strategy():
    """Schemas' properties: each leaf from its meta-schema by hypothesis-jsonschema, put
    together with hypothesis' own strategies (one meta-schema for the whole took minutes)."""
    from hypothesis import strategies as st
    from hypothesis_jsonschema import from_schema
    leaf = st.one_of([from_schema(meta) for meta in LEAF["anyOf"]])
    name = st.from_regex(NAME, fullmatch=True)
    array = st.fixed_dictionaries({"type": st.just("array"), "items": leaf,
                                   "maxItems": st.integers(2, 4)},
                                  optional={"minItems": st.integers(0, 2)})
    nested = st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(
        name, leaf, min_size=1, max_size=3)})
    return st.dictionaries(name, st.one_of(leaf, array, nested), min_size=1, max_size=5)


def _closed(schema: Any) -> Any:
    """Every object schema's properties required, no others."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            schema["required"] = list(schema["properties"])
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    return schema


def generated_schemas(n: int) -> list[dict]:
    """n distinct schemas (the same on every run)."""
    from hypothesis import HealthCheck, Phase, given, settings
    found: dict[str, dict] = {}

    @settings(max_examples=n * 4, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(_strategy())
    def collect(properties):
        schema = _closed({"type": "object", "properties": properties})
        found.setdefault(json.dumps(schema, sort_keys=True), schema)

    collect()
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} distinct schemas were generated, not {n}")
    return list(found.values())[:n]
