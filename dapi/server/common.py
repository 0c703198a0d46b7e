"""What the three HTTP apps share: the ``{"error": ...}`` envelope, status mapping, body limits, Go-style JSON.

Errors are raised as ``ApiError`` (or a domain error mapped in ``install_error_handlers``) and turned
into a response in one place, never per route. Malformed or oversized bodies answer 400/413 with a
message naming the problem, never 500.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dapi.chain.gojson import go_json
from dapi.logs import get_logger

log = get_logger(__name__)

__all__ = ["ApiError", "BodyLimit", "HeadAsGet", "error_responses", "go_json", "install_error_handlers", "json_bytes"]


class ApiError(Exception):
    """An error a route answers with: the HTTP status, and the message sent as ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": "<what went wrong>"}``."""

    error: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries documenting the error statuses a route can answer."""
    descriptions = {
        400: "Malformed request: the message names the field",
        401: "Missing or wrong bearer token",
        404: "Not found",
        409: "Conflict with an existing resource",
        413: "Request body larger than the configured limit",
        422: "Request body or parameters do not validate",
        500: "Internal error",
        503: "A dependency (chain, ML node, outbox) is unavailable",
    }
    return {s: {"model": ErrorBody, "description": descriptions.get(s, "Error")} for s in statuses}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON: {err.get('ctx', {}).get('error', 'parse error')}")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


_NODE_SECRET = re.compile(r"^/n/[^/]*")


def logged_path(path: str) -> str:
    """The request path for a log line, without an ML node's callback secret (``/n/<secret>/...``)."""
    return _NODE_SECRET.sub("/n/<secret>", path)


def install_error_handlers(app: FastAPI, domain: Mapping[type[Exception], int] | None = None) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), exc.headers)  # 405 keeps its Allow header

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, _validation_message(exc))

    async def gone(request: Request, exc: Exception) -> Response:
        # The client closed (or was closed for being too slow) before its body arrived: nobody to answer.
        log.info("client disconnected before its request arrived", path=logged_path(request.url.path))
        return error_response(400, "client disconnected before the request body arrived")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("request failed", path=logged_path(request.url.path), exc_info=exc)
        return error_response(500, "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ClientDisconnect, gone)
    for exc_type, status in (domain or {}).items():

        def mapped(_: Request, exc: Exception, status: int = status) -> Response:
            return error_response(status, str(exc))

        app.add_exception_handler(exc_type, mapped)
    app.add_exception_handler(Exception, crashed)


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, whether announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(413, f"request body larger than {self.limit} bytes")(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await error_response(413, f"request body larger than {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


class HeadAsGet:
    """ASGI middleware: ``HEAD`` on any route answers as ``GET`` would, without the body.

    Health checks and load balancers probe with HEAD. Handling it here, once, keeps the routes (and
    the OpenAPI documents) to the GETs they are; headers, Content-Length included, are the GET's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


async def read_json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is not acceptable JSON: nested too deeply") from None


def bearer_auth(token: str) -> Callable[[Request], Awaitable[None]]:
    """``Authorization: Bearer <token>`` when a token is set; the scheme name in any case (RFC 7235).

    The token is compared in constant time, so the answer's timing says nothing about how much of a
    guess was right.
    """
    expected = token.encode()

    async def check(request: Request) -> None:
        if not token:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        # Header values arrive as latin-1 text; their bytes are what the client sent.
        given = credentials.lstrip(" ").encode("latin-1")
        matches = hmac.compare_digest(given, expected)
        if scheme.lower() != "bearer" or not matches:
            raise ApiError(401, "Authorization is required")

    return check


def path_int(name: str, text: str, *, maximum: int = 2**63 - 1, problem: str = "") -> int:
    """A non-negative integer path parameter, in ASCII digits only.

    ``int()`` alone also takes ``"+80"``, ``"8_0"``, ``" 80"`` and the digits of other scripts (Arabic-Indic,
    full-width); none of them is a number in a URL. ``problem`` prefixes the message.
    """
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > len(str(maximum)) or int(digits) > maximum:
        shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
        prefix = f"{problem}: " if problem else ""
        raise ApiError(400, f"{prefix}{name} must be an integer 0..{maximum} in ASCII digits (got {shown})")
    return int(digits)


def json_bytes(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
