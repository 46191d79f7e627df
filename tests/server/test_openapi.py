"""The OpenAPI document says what the server answers (issue 17): no 422 (bad input is a 400
in the OpenAI error shape), the error responses each route gives, and the KServe bodies.
Built in-process from the app (no engine needed: the document reads only the routes)."""
from __future__ import annotations

import json

import jsonschema

from tessera.server.app import create_app
from tessera.server.errors import error_body
from tessera.server.openapi import _SCHEMAS


def _doc() -> dict:
    app = create_app(None)
    return getattr(app, "app", app).openapi()


def test_no_422_and_every_route_declares_its_errors():
    doc = _doc()
    assert '"422"' not in json.dumps(doc)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if path in ("/health", "/v2/health/live", "/v2/health/ready"):
                continue
            error = op["responses"]["400"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (path, method)
            if method == "post":
                assert {"413", "503"} <= op["responses"].keys(), path


def test_the_kserve_bodies_are_declared():
    paths = _doc()["paths"]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/InferRequest"}
    generate = paths["/v2/models/{name}/generate"]["post"]
    assert generate["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateResponse"}
    stream = paths["/v2/models/{name}/generate_stream"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream


def test_the_declared_error_shape_is_the_one_sent():
    jsonschema.validate(error_body(400, "temperature must be a finite number", "temperature"),
                        _SCHEMAS["ErrorResponse"])
    request = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                           "data": ["Hi"]}], "parameters": {"max_tokens": 4}}
    resolver = {"$ref": "#/components/schemas/InferRequest", "components": {"schemas": _SCHEMAS}}
    jsonschema.validate(request, resolver)
