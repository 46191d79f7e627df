"""StructuredOutputsParams: what a request's output must match (vLLM's field names).

Exactly one of: `json` (a JSON schema, a dict or its JSON text), `json_object` (any JSON
object), `regex`, `choice` (one of these strings, exactly), `grammar` (Lark or GBNF/EBNF,
as llguidance reads them). Validated at construction (ValueError naming the field);
the schema is kept as compact JSON text (its keys in their order: a schema's properties
are generated in the order it lists them), so the value crosses processes as plain data
and `key` (what compiled grammars are cached by) is the text. No grammar library here:
structured/grammar.py compiles.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Union

MAX_GRAMMAR_CHARS = 256 * 1024  # a schema, regex or grammar's text
MAX_CHOICES = 1024


@dataclasses.dataclass
class StructuredOutputsParams:
    json: Optional[Union[str, dict[str, Any]]] = None
    json_object: Optional[bool] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None

    def __post_init__(self) -> None:
        asked = [name for name in ("json", "regex", "choice", "grammar")
                 if getattr(self, name) is not None]
        if self.json_object:
            asked.append("json_object")
        if len(asked) != 1:
            raise ValueError("structured outputs take exactly one of json, json_object, regex, "
                             f"choice or grammar, got {asked or 'none'}.")
        if self.json is not None:
            self.json = _canonical_schema(self.json)
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"structured outputs: {name} must be a non-empty string.")
            if value is not None and len(value) > MAX_GRAMMAR_CHARS:
                raise ValueError(f"structured outputs: {name} is longer than "
                                 f"{MAX_GRAMMAR_CHARS} characters.")
        if self.choice is not None:
            c = self.choice
            if (not isinstance(c, list) or not c or len(c) > MAX_CHOICES
                    or not all(isinstance(s, str) and s for s in c)):
                raise ValueError(f"structured outputs: choice must be a list of 1 to "
                                 f"{MAX_CHOICES} non-empty strings, got {c!r:.200}.")

    @property
    def kind(self) -> str:
        """json | json_object | regex | choice | grammar."""
        if self.json_object:
            return "json_object"
        return next(n for n in ("json", "regex", "choice", "grammar")
                    if getattr(self, n) is not None)

    @property
    def key(self) -> tuple[str, str]:
        """(kind, text): equal for requests that compile to the same grammar."""
        kind = self.kind
        if kind == "json_object":
            return kind, ""
        if kind == "choice":
            return kind, json.dumps(self.choice, ensure_ascii=False)
        return kind, getattr(self, kind)

    @classmethod
    def of(cls, value: Any) -> "StructuredOutputsParams":
        """value itself, or one built from its dict (the offline API's and extra_body's)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"structured_outputs must be an object, got {value!r:.200}.")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"structured_outputs: unknown field(s) {sorted(unknown)} (known: "
                             "json, json_object, regex, choice, grammar).")
        return cls(**value)


def _canonical_schema(value: Any) -> str:
    if isinstance(value, str):
        if len(value) > MAX_GRAMMAR_CHARS:
            raise ValueError(f"structured outputs: the JSON schema is longer than "
                             f"{MAX_GRAMMAR_CHARS} characters.")
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"structured outputs: the JSON schema is not valid JSON ({e}).")
    if not isinstance(value, (dict, bool)):
        raise ValueError("structured outputs: a JSON schema must be an object (or true/false), "
                         f"got {type(value).__name__}.")
    # keys keep their order: properties are generated in the order the schema lists them
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"structured outputs: the JSON schema is longer than "
                         f"{MAX_GRAMMAR_CHARS} characters.")
    return text
