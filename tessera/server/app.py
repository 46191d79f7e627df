"""The FastAPI application: state, middleware, error mapping, routes.

Objects: ServerState (engine client, metrics, served model names, start time, the
prompt workers that tokenize and render templates off the event loop: prompt_work.py),
CorsOptions and `create_app(state, api_key, max_body_bytes, lifespan, cors, metrics_open)`.
A pure-ASGI middleware enforces the API key (constant-time compare; every route but the
health probes and /version, /metrics too unless metrics_open) and the body-size bound
(413) before any route runs; outside it, where origins are allowed, Starlette's CORS
middleware answers preflights and marks responses. Exception handlers render every error
in the OpenAI shape:
pydantic schema errors and ValueErrors as 400 naming the field, ApiError with its
status, a refused request (queue full) as 503, a dead engine as 503, an unknown route or
method as 404 / 405, and anything else as 500 with an incident id (the details go to the
log, never to the client).
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import uuid
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera import __version__
from tessera.server import kserve, openai_api
from tessera.engine.mp_client import EngineDeadError, MPClient, RequestRejected
from tessera.server.errors import (ApiError, error_body, error_response, param_of,
                                   validation_message)
from tessera.server.protocol import request_fields
from tessera.server.metrics import ServerMetrics
from tessera.server.openapi import install_openapi
from tessera.server.prompt_work import PromptWorkers
from tessera.server.tools import ToolOptions

logger = logging.getLogger(__name__)
OPEN = ("/health", "/v2/health/live", "/v2/health/ready", "/version")  # never behind a key


@dataclasses.dataclass
class ServerState:
    client: MPClient
    metrics: ServerMetrics
    model_names: list[str]  # requests may name any; responses give the first
    model_path: str
    started: int
    prompts: PromptWorkers = dataclasses.field(default_factory=PromptWorkers)  # off the loop
    trust_request_chat_template: bool = False  # --trust-request-chat-template
    tools: ToolOptions = dataclasses.field(default_factory=ToolOptions)  # tool-call flags
    stream_stall_s: float = 60.0  # --stream-stall-timeout
    # with a deployment file: every other served name -> that model's state
    others: dict[str, "ServerState"] = dataclasses.field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def for_model(self, name: Optional[str]) -> "ServerState":
        """The state of the model a request names (this one for none, or one of its own
        names)."""
        return self.others.get(name, self) if name else self

    def all_models(self) -> list["ServerState"]:
        """This model's state first, then each other model's once."""
        out = [self]
        for other in self.others.values():
            if all(other is not o for o in out):
                out.append(other)
        return out

    def dead(self) -> Optional[str]:
        """Why some model's engine is gone, if one is."""
        return next((m.client.dead for m in self.all_models() if m.client.dead), None)


@dataclasses.dataclass
class CorsOptions:
    """Which web origins may call the API (none: no CORS headers at all)."""
    allowed_origins: list[str] = dataclasses.field(default_factory=list)
    allowed_methods: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    allow_credentials: bool = False


class GuardMiddleware:
    """API key and body-size checks, answered before the app sees the request. With a
    key, every route but the health probes and /version (OPEN) needs it, the docs and the
    schema too, and /metrics unless metrics_open; the scheme is case-insensitive ("bearer
    KEY"), the key compared in constant time, and a 401 says how to authenticate
    (WWW-Authenticate: Bearer)."""

    def __init__(self, app, api_key: Optional[str], max_body_bytes: int,
                 metrics_open: bool = False):
        self.app, self.max_body = app, max_body_bytes
        self.key = api_key.encode() if api_key else None
        self.open = OPEN + (("/metrics",) if metrics_open else ())

    def _authorized(self, headers: dict) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        ok_key = hmac.compare_digest(given.strip(), self.key)
        return scheme.lower() == b"bearer" and ok_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key and scope["path"] not in self.open and not self._authorized(headers):
            return await _reply(send, 401, "Invalid or missing API key (Authorization: "
                                           "Bearer <key>).",
                                [(b"www-authenticate", b'Bearer realm="tessera"')])
        too_big = f"The request body is larger than {self.max_body} bytes."
        length = headers.get(b"content-length")
        if length is not None:
            if int(length) > self.max_body:
                return await _reply(send, 413, too_big)
            return await self.app(scope, receive, send)
        # No length given (chunked): read the body here, up to the bound, then replay it.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _reply(send, 413, too_big)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


async def _reply(send, status: int, message: str, extra_headers: tuple = ()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def create_app(state: ServerState, api_key: Optional[str] = None,
               max_body_bytes: int = 4 << 20, lifespan=None,
               cors: Optional[CorsOptions] = None, metrics_open: bool = False):
    app = FastAPI(title="Tessera", version=__version__, lifespan=lifespan)
    app.state.tessera = state
    app.include_router(openai_api.router)
    app.include_router(kserve.router)
    install_openapi(app)  # the document as the routes answer (server/openapi.py)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.exception_handler(RequestValidationError)
    async def on_schema_error(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return error_response(400, message, param)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    fields = request_fields()

    @app.exception_handler(ValueError)
    async def on_value_error(request: Request, exc: ValueError):
        return error_response(400, str(exc), param_of(str(exc), fields))

    @app.exception_handler(RequestRejected)
    async def on_rejected(request: Request, exc: RequestRejected):
        return error_response(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        message = {404: "There is no such route.", 405: "This route does not take that method."}
        return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def on_internal_error(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        logger.error("internal error %s on %s %s", incident, request.method, request.url.path,
                     exc_info=exc)
        return error_response(500, f"Internal server error (incident {incident}; the "
                                   "server's log has the details).")

    @app.exception_handler(EngineDeadError)
    async def on_dead(request: Request, exc: EngineDeadError):
        return error_response(503, f"The engine is not running: {exc}")

    guarded = GuardMiddleware(app, api_key, max_body_bytes, metrics_open)
    if cors is None or not cors.allowed_origins:
        return guarded
    from starlette.middleware.cors import CORSMiddleware
    return CORSMiddleware(guarded, allow_origins=cors.allowed_origins,
                          allow_methods=cors.allowed_methods,
                          allow_headers=cors.allowed_headers,
                          allow_credentials=cors.allow_credentials)
