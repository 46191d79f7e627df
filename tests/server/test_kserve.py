"""KServe v2 / Triton routes over plain HTTP, against the shared live server.

Server and model metadata, health and readiness, `infer` with a BYTES `text_input`
tensor (checked against greedy /v1/completions answers), Triton's generate and
generate_stream extension, versioned paths, and errors in the OpenAI shape.
"""
from __future__ import annotations

import json
from typing import Optional

import httpx
import pytest

import tessera
from tests.server.helpers import assert_error

TIMEOUT = httpx.Timeout(300.0, connect=10.0)
PROMPTS = ["The sky is", "Two plus two is"]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def expected(http, model_name) -> dict[str, str]:
    """Greedy 8-token completions of PROMPTS through /v1/completions."""
    out = {}
    for p in PROMPTS:
        r = http.post("/v1/completions", json={"model": model_name, "prompt": p, **GREEDY})
        assert r.status_code == 200, r.text
        out[p] = r.json()["choices"][0]["text"]
    assert all(out.values())
    return out


def infer_body(texts: list[str], parameters: Optional[dict] = None) -> dict:
    return {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(texts)],
                        "data": texts}], "parameters": parameters or {}}


# -- metadata, health ----------------------------------------------------------------------
def test_server_metadata(http):
    r = http.get("/v2")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "tessera"
    assert body["version"] == tessera.__version__
    assert "generate" in body["extensions"]


def test_live_and_ready(http):
    r = http.get("/v2/health/live")
    assert r.status_code == 200 and r.json()["live"] is True
    r = http.get("/v2/health/ready")
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_metadata(http, model_name, suffix):
    r = http.get(f"/v2/models/{model_name}{suffix}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == model_name
    assert body["versions"] == ["1"]
    assert [(t["name"], t["datatype"]) for t in body["inputs"]] == [("text_input", "BYTES")]
    assert [(t["name"], t["datatype"]) for t in body["outputs"]] == [("text_output", "BYTES")]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_model_ready(http, model_name, suffix):
    r = http.get(f"/v2/models/{model_name}{suffix}/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": model_name, "ready": True}


# -- infer, generate, generate_stream --------------------------------------------------------
def test_infer_two_strings_matches_greedy_completions(http, model_name, expected):
    r = http.post(f"/v2/models/{model_name}/infer", json={"id": "req-7", **infer_body(
        PROMPTS, GREEDY)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == model_name
    assert body["model_version"] == "1"
    [out] = body["outputs"]
    assert out["name"] == "text_output"
    assert out["datatype"] == "BYTES"
    assert out["shape"] == [2]
    assert out["data"] == [expected[p] for p in PROMPTS]


def test_infer_versioned_path(http, model_name, expected):
    r = http.post(f"/v2/models/{model_name}/versions/1/infer",
                  json=infer_body(PROMPTS[1:], GREEDY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1"
    assert body["outputs"][0]["data"] == [expected[PROMPTS[1]]]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_generate_matches_greedy_completion(http, model_name, expected, suffix):
    r = http.post(f"/v2/models/{model_name}{suffix}/generate",
                  json={"text_input": PROMPTS[0], "parameters": GREEDY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == model_name
    assert body["model_version"] == "1"
    assert body["text_output"] == expected[PROMPTS[0]]
    assert body["finish_reason"] == "length"


def test_generate_takes_top_level_sampling_fields(http, model_name, expected):
    r = http.post(f"/v2/models/{model_name}/generate",
                  json={"text_input": PROMPTS[1], **GREEDY})
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == expected[PROMPTS[1]]


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_generate_stream_deltas_concatenate_to_generate(http, model_name, expected, suffix):
    events = []
    with http.stream("POST", f"/v2/models/{model_name}{suffix}/generate_stream",
                     json={"text_input": PROMPTS[0], "parameters": GREEDY}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: "), line
                events.append(json.loads(line[len("data: "):]))
    assert len(events) >= 2  # streamed in pieces, not one block
    assert all(e["model_name"] == model_name and e["model_version"] == "1" for e in events)
    assert "".join(e["text_output"] for e in events) == expected[PROMPTS[0]]
    assert [e["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["finish_reason"] == "length"


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/models/no-such-model"),
    ("GET", "/v2/models/no-such-model/ready"),
    ("GET", "/v2/models/no-such-model/versions/1"),
    ("POST", "/v2/models/no-such-model/infer"),
    ("POST", "/v2/models/no-such-model/generate"),
    ("POST", "/v2/models/no-such-model/generate_stream"),
])
def test_unknown_model_is_404(http, method, path):
    r = http.request(method, path, json=infer_body(["hi"]) | {"text_input": "hi"}
                     if method == "POST" else None)
    err = assert_error(r, 404, param="model_name")
    assert "no-such-model" in err["message"]


def test_unknown_version_is_404(http, model_name):
    assert_error(http.get(f"/v2/models/{model_name}/versions/2"), 404, param="model_version")
    assert_error(http.post(f"/v2/models/{model_name}/versions/2/infer", json=infer_body(["hi"])),
                 404, param="model_version")


@pytest.mark.parametrize("body", [
    {"inputs": []},
    {"parameters": {"max_tokens": 2}},
    {"inputs": [{"name": "other", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
    {"inputs": [{"name": "text_input", "datatype": "INT32", "shape": [1], "data": [1]}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [0], "data": []}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [5]}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [3], "data": ["hi"]}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "data": ["hi"]}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
                {"name": "extra", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
    {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
     "outputs": [{"name": "logits"}]},
], ids=["no-inputs", "no-inputs-key", "wrong-name", "wrong-type", "empty", "not-strings",
        "wrong-shape", "no-shape", "another-input", "unknown-output"])
def test_infer_without_a_usable_text_input_is_400(http, model_name, body):
    param = "outputs" if "outputs" in body else "inputs"
    assert_error(http.post(f"/v2/models/{model_name}/infer", json=body), 400, param=param)


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_generate_without_text_input_is_400(http, model_name, route):
    assert_error(http.post(f"/v2/models/{model_name}/{route}", json={"parameters": GREEDY}),
                 400, param="text_input")


def test_infer_invalid_json_is_400(http, model_name):
    assert_error(http.post(f"/v2/models/{model_name}/infer", content=b"{not json",
                           headers={"content-type": "application/json"}), 400)


def test_infer_bad_parameter_value_is_400(http, model_name):
    err = assert_error(http.post(f"/v2/models/{model_name}/infer",
                                 json=infer_body(["hi"], {"temperature": -1})), 400,
                       param="temperature")
    assert "temperature" in err["message"]


@pytest.mark.parametrize("route,body", [
    ("generate", {"text_input": "hi", "parameters": {"temperature": "0"}}),
    ("generate", {"text_input": "hi", "parameters": ["max_tokens", 2]}),
    ("infer", infer_body(["hi"], {"stop": 5})),
], ids=["string-temperature", "parameters-not-an-object", "stop-not-a-list"])
def test_mistyped_parameters_are_400_not_500(server, model_name, route, body):
    # a fresh connection per request: a 500 makes the server drop the connection
    r = httpx.post(f"{server.base_url}/v2/models/{model_name}/{route}", json=body,
                   timeout=TIMEOUT)
    assert_error(r, 400)
