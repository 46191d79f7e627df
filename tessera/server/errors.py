"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}.

ApiError carries an HTTP status and is rendered by the app's exception handler; schema
errors from pydantic become 400 (not FastAPI's 422) with a message naming the field.
"""
from __future__ import annotations

from typing import Optional

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_body(status: int, message: str, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


def validation_message(errors: list[dict]) -> tuple[str, Optional[str]]:
    """pydantic errors -> ('field: what is wrong; ...', first field). A field the body may
    not carry is named as unsupported (Tessera refuses what it does not implement)."""
    parts, first = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        field = ".".join(loc) or "body"
        first = first or field
        if err.get("type") == "extra_forbidden":
            parts.append(f"{field}: this field is not supported by this server")
            continue
        parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request body", first


def param_of(message: str, fields: set[str]) -> Optional[str]:
    """The request field a ValueError names first ('temperature must be ...'), if any."""
    word = message.split(" ", 1)[0]
    return word if word in fields else None
