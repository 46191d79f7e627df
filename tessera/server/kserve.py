"""KServe v2 / Triton Inference Server protocol.

Routes: GET /v2 (server metadata), /v2/health/live, /v2/health/ready,
/v2/models/{m}[/versions/{v}] (model metadata), .../ready, POST .../infer (one BYTES
`text_input` tensor in, its shape [n] for its n strings; `text_output` out; one
completion per element), and Triton's
generate extension: POST .../generate (JSON {"text_input", "parameters"} -> {"text_output"})
and .../generate_stream (SSE, one event per text delta). Sampling settings come from
`parameters` (SamplingParams field names, also accepted at a generate body's top level;
max_tokens defaults to 16; `structured_outputs` constrains the output: {"json": schema}, a
regex, a choice or a grammar, checked like the OpenAI routes'); any other key, and any
other top-level key of an infer body, is refused with a 400 naming it.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tessera import __version__
from tessera.sampling_params import SamplingParams
from tessera.server.errors import ApiError, error_body
from tessera.server.openai_api import all_final, sse_response, until_disconnect
from tessera.server.streaming import DeltaTracker, admitted, sse

router = APIRouter()
_PARAM_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
VERSION = "1"


def _model(request: Request, name: str, version: Optional[str]):
    s = request.app.state.tessera
    names = [n for m in s.all_models() for n in m.model_names]
    if name not in names:
        raise ApiError(404, f"Model `{name}` is not served here (serving "
                            f"{', '.join(f'`{n}`' for n in names)}).", "model_name")
    if version not in (None, VERSION):
        raise ApiError(404, f"Model `{name}` has no version {version!r} (versions: {VERSION}).",
                       "model_version")
    return s.for_model(name)


def _params(s, parameters: Any) -> SamplingParams:
    """SamplingParams from `parameters` (their field names); any other key is refused."""
    if parameters is not None and not isinstance(parameters, dict):
        raise ApiError(400, "parameters must be a JSON object.", "parameters")
    given = dict(parameters or {})
    unknown = sorted(k for k in given if k not in _PARAM_FIELDS)
    if unknown:
        raise ApiError(400, f"parameter {unknown[0]!r} is not supported (sampling parameters: "
                            f"{', '.join(sorted(_PARAM_FIELDS))}).", unknown[0])
    if given.get("max_tokens") is None:  # absent or null: 16
        given["max_tokens"] = 16
    params = s.client.input.default_sampling_params(**given)
    if params.n != 1:  # one text_output per input: more samples would be computed and lost
        raise ApiError(400, f"n must be 1 on the KServe routes (one text_output per input), "
                            f"got {params.n}.", "n")
    return params


async def _check_grammar(s, params: SamplingParams) -> None:
    """structured_outputs' grammar compiled off the event loop (ValueError: 400)."""
    if params.structured_outputs is not None:
        await s.prompts.run(s.client.input.check_structured, params,
                            what="structured_outputs grammar")


def _refuse_keys(body: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise ApiError(400, f"{unknown[0]!r} is not supported here (known: {', '.join(known)}).",
                       unknown[0])


@router.get("/v2")
async def server_metadata():
    return {"name": "tessera", "version": __version__, "extensions": ["generate"]}


@router.get("/v2/health/live")
async def live():
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request):
    if request.app.state.tessera.dead():
        return JSONResponse(error_body(503, "the engine is not running"), status_code=503)
    return {"ready": True}


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: Optional[str] = None):
    _model(request, name, version)
    tensor = {"datatype": "BYTES", "shape": [-1]}
    return {"name": name, "versions": [VERSION], "platform": "tessera",
            "inputs": [{"name": "text_input", **tensor}],
            "outputs": [{"name": "text_output", **tensor}]}


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: Optional[str] = None):
    s = _model(request, name, version)
    if s.client.dead:
        return JSONResponse(error_body(503, "the engine is not running"), status_code=503)
    return {"name": name, "ready": True}


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: Optional[str] = None):
    s = _model(request, name, version)
    body = await _json(request)
    _refuse_keys(body, ("id", "inputs", "outputs", "parameters"))
    if not isinstance(body.get("inputs"), list):
        raise ApiError(400, "infer needs 'inputs', a list of tensors.", "inputs")
    texts = _text_input(body["inputs"])
    for wanted in body.get("outputs") or []:
        if not isinstance(wanted, dict) or wanted.get("name") != "text_output":
            raise ApiError(400, "the only output is 'text_output'.", "outputs")
    params = _params(s, body.get("parameters"))
    s.client.check_fan_out(len(texts))
    await _check_grammar(s, params)
    front = s.client.input
    prompts = await s.prompts.run(lambda: [front.prepare_prompt(t) for t in texts],
                                  what="text_input")
    rid = body.get("id") or uuid.uuid4().hex
    streams = [s.client.generate(f"v2-{uuid.uuid4().hex}", p, params) for p in prompts]
    finals = await until_disconnect(request, all_final(streams))
    outputs = [o.outputs[0].text for o in finals]
    return {"id": rid, "model_name": name, "model_version": version or VERSION,
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [len(outputs)],
                         "data": outputs}]}


def _text_input(tensors: list) -> list[str]:
    """The prompts of the one input tensor, `text_input` (BYTES, data a list of strings,
    shape its length: [n] or [n, 1]); any other input is refused."""
    names = [t.get("name") if isinstance(t, dict) else None for t in tensors]
    others = [n for n in names if n != "text_input"]
    if others or len(names) != 1:
        raise ApiError(400, "infer takes one input tensor, 'text_input' (BYTES), got "
                            f"{names or 'none'}.", "inputs")
    tensor = tensors[0]
    if tensor.get("datatype", "BYTES") != "BYTES":
        raise ApiError(400, "infer needs a BYTES input tensor named 'text_input'.", "inputs")
    texts = tensor.get("data")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "text_input.data must be a non-empty list of strings.", "inputs")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or shape not in ([len(texts)], [len(texts), 1])):
        raise ApiError(400, f"text_input.shape must be [{len(texts)}] (or [{len(texts)}, 1]) "
                            f"for its {len(texts)} strings, got {shape!r}.", "inputs")
    return texts


async def _generate_setup(request: Request, name: str, version: Optional[str]):
    s = _model(request, name, version)
    body = await _json(request)
    text = body.get("text_input")
    if not isinstance(text, str):
        raise ApiError(400, "generate needs a string field 'text_input'.", "text_input")
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ApiError(400, "parameters must be a JSON object.", "parameters")
    params = _params(s, {**{k: v for k, v in body.items()
                            if k not in ("parameters", "text_input", "id")},
                         **(parameters or {})})
    await _check_grammar(s, params)
    prompt = await s.prompts.run(s.client.input.prepare_prompt, text, what="text_input")
    return s, params, s.client.generate(f"v2-{uuid.uuid4().hex}", prompt, params)


@router.post("/v2/models/{name}/generate")
@router.post("/v2/models/{name}/versions/{version}/generate")
async def generate(request: Request, name: str, version: Optional[str] = None):
    s, params, stream = await _generate_setup(request, name, version)
    out = (await until_disconnect(request, all_final([stream])))[0].outputs[0]
    return {"model_name": name, "model_version": version or VERSION, "text_output": out.text,
            "finish_reason": out.finish_reason}


@router.post("/v2/models/{name}/generate_stream")
@router.post("/v2/models/{name}/versions/{version}/generate_stream")
async def generate_stream(request: Request, name: str, version: Optional[str] = None):
    s, params, stream = await _generate_setup(request, name, version)
    stream = (await admitted([stream]))[0]  # a refusal is the status, not an event

    async def events() -> AsyncIterator[str]:
        tracker = DeltaTracker(params.stop)
        async for out in stream:
            c = out.outputs[0]
            if tracker.skip(c):
                continue
            text, _, _ = tracker.delta(c)
            if text or c.finished:
                yield sse({"model_name": name, "model_version": version or VERSION,
                           "text_output": text, "finish_reason": c.finish_reason})
    return sse_response(events(), s.stream_stall_s, done=False)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.")
    return body
