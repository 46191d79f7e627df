"""The OpenAPI document (`/openapi.json`, `/docs`) as the server really answers (issue 17).

FastAPI's default declares a 422 validation error on every route; Tessera answers bad
input with a 400 in the OpenAI error shape, refuses with 401 / 404 / 413 / 503 and reads
the KServe bodies by hand (so they are undeclared). `install_openapi(app)` replaces
`app.openapi` with `tessera_openapi(app)`: the generated document, then
- every 422 replaced by the responses the routes give (400, 401, 404; POST routes 413 and
  503 too), each with the `ErrorResponse` schema (`{"error": {"message", "type",
  "param", "code"}}`);
- the KServe v2 request and response bodies (`InferRequest`, `InferResponse`,
  `GenerateRequest`, `GenerateResponse`) declared on their routes.
The document is built once and cached.
"""
from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": "integer"}}}}}
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
    "name": {"type": "string", "description": "text_input (in), text_output (out)"},
    "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": ["BYTES"]},
    "data": {"type": "array", "items": {"type": "string"}}}}
_PARAMETERS = {"type": "object", "description": "SamplingParams fields (max_tokens "
               "defaults to 16; n must be 1); any other key is refused with a 400",
               "additionalProperties": True}
_SCHEMAS = {
    "ErrorResponse": _ERROR,
    "InferTensor": _TENSOR,
    "InferRequest": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                     "properties": {"id": {"type": "string"},
                                    "inputs": {"type": "array",
                                               "items": {"$ref": "#/components/schemas/InferTensor"}},
                                    "outputs": {"type": "array", "items": {"type": "object"}},
                                    "parameters": _PARAMETERS}},
    "InferResponse": {"type": "object", "properties": {
        "id": {"type": "string"}, "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferTensor"}}}},
    "GenerateRequest": {"type": "object", "required": ["text_input"], "properties": {
        "text_input": {"type": "string"}, "parameters": _PARAMETERS},
        "additionalProperties": True,
        "description": "sampling fields are also accepted at the top level"},
    "GenerateResponse": {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "text_output": {"type": "string"}, "finish_reason": {"type": ["string", "null"]}}},
}
_DESCRIPTIONS = {"400": "Bad request: the message names the field", "401": "No or wrong API key",
                 "404": "No such model or route", "413": "Body larger than --max-body-bytes",
                 "503": "Queue full, shutting down, or the engine is not running"}
_KSERVE_BODIES = {"/infer": ("InferRequest", "InferResponse", "application/json"),
                  "/generate": ("GenerateRequest", "GenerateResponse", "application/json"),
                  "/generate_stream": ("GenerateRequest", None, "text/event-stream")}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_responses(method: str) -> dict[str, Any]:
    codes = ["400", "401", "404"] + (["413", "503"] if method == "post" else [])
    return {c: {"description": _DESCRIPTIONS[c],
                "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
            for c in codes}


def tessera_openapi(app) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(_SCHEMAS)
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if path in ("/health", "/v2/health/live", "/v2/health/ready"):
                continue  # open probes: 200, or 503 while the engine is down
            for code, answer in _error_responses(method).items():
                responses.setdefault(code, answer)
            suffix = next((s for s in _KSERVE_BODIES if path.endswith(s)), None)
            if suffix and path.startswith("/v2/models/") and method == "post":
                request, response, media = _KSERVE_BODIES[suffix]
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _ref(request)}}}
                schema = _ref(response) if response else {"type": "string"}
                responses["200"] = {"description": "Successful Response",
                                    "content": {media: {"schema": schema}}}
    return doc


def install_openapi(app) -> None:
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(tessera_openapi(app))
        return cached
    app.openapi = openapi
