"""Every error the app answers is a problem (`api/problems.py`), and none is logged with request data.

- `ProblemError` (the routes and dependencies): its kind and detail.
- FastAPI's validation errors (a form field missing or out of range): 422 `invalid-request`,
  `errors` one entry per field with its location, message and type, never the value sent (FastAPI
  echoes it as `input`; it could be a patient's text).
- Starlette's HTTP errors (an unknown path 404, a wrong method 405, an unreadable body 400) by
  status; a 405's `Allow` lists the methods of every route on the path (Starlette's names only
  the first route it matched: `/jobs/{id}` answers GET and DELETE).
- Anything else: 500 `internal`, logged by `scrubbed_errors` with its type and where it was raised,
  never its message or the request: an exception's message can quote what it was given.
"""

from __future__ import annotations

import http
import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import BY_STATUS, MEDIA_TYPE, ProblemError, problem

log = logging.getLogger("api.errors")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


async def _problem_error(request: Request, exc: ProblemError):
    return problem(exc.kind, exc.detail, retry_after_s=exc.retry_after_s, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError):
    errors = [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    # "image: Field required": the location without its "body" / "header" prefix.
    detail = "; ".join(f"{'.'.join(e['loc'][1:]) or '.'.join(e['loc']) or 'request'}: {e['msg']}" for e in errors)
    return problem("invalid-request", detail or "the request is not valid", errors=errors)


async def _http_error(request: Request, exc: HTTPException):
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed(request))
    kind = BY_STATUS.get(exc.status_code)
    if kind is not None:
        return problem(kind, str(exc.detail), headers=headers)
    # A status the service does not raise itself: still the problem shape, with the generic type.
    title = http.HTTPStatus(exc.status_code).phrase
    body = {"type": "about:blank", "title": title, "status": exc.status_code, "detail": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=headers, media_type=MEDIA_TYPE)


def _allowed(request: Request) -> list[str]:
    path = request.scope["path"]
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)  # HEAD only where the route has it: FastAPI's routes do not
    return sorted(methods)


def _flat(routes):
    """Every route, those of included routers too (FastAPI keeps an included router whole)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


def where(exc: BaseException) -> str:
    """The exception's type and the frames it passed, file:line in function; no message, no values."""
    parts = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = " < ".join(
            f"{f.filename.rsplit('/', 2)[-1] if '/' in f.filename else f.filename}:{f.lineno} in {f.name}"
            for f in reversed(traceback.extract_tb(exc.__traceback__))
        )
        parts.append(f"{type(exc).__module__}.{type(exc).__qualname__} at {frames}")
        exc = exc.__cause__ or exc.__context__
    return "; caused by ".join(parts)


class InternalError(Exception):
    """What the server sees of an unexpected error: its type only (`scrubbed_errors`)."""


class ScrubbedErrors:
    """Outside Starlette's ServerErrorMiddleware, which answers the 500 and raises the error again
    for the server to log with its traceback and message. The message can quote request data, so
    this logs the error's type and frames (`where`) and raises an `InternalError` naming only its type."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            log.error("unexpected error on %s %s: %s", scope.get("method", ""), _template(scope), where(exc))
            raise InternalError(type(exc).__qualname__) from None


def _template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "(unmatched)"  # the template, never the path: it may hold anything
