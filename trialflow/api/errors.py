"""Every refusal is a JSON ``{"error": <a sentence a person can act on>, ...}``, whatever raised it.

    trialflow's own errors         NotFound 404 · NotAllowed 403 · TransitionRefused 409 · InvalidSignup 422
    Unreadable                     400: not UTF-8, not JSON, or text no database can keep
    BodyTooLarge                   413
    RequestValidationError         422: a query or path parameter FastAPI could not read, named
    Starlette's HTTPException      its status (404 no such route, 405 wrong method), with its words
    anything else                  500, logged once with its traceback: a bug to fix, never an answer by design
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from trialflow.api.common import BodyTooLarge, Unreadable, error
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, TransitionRefused

log = logging.getLogger("trialflow.api")

UNEXPECTED = "Something went wrong on our side; it has been logged."


def too_large_message(limit: int) -> str:
    return f"The request body is too large ({limit} bytes at most)."


# Pydantic's wording that means nothing to the sender: "Value error, ", "... or instance of SlackAction".
_PYDANTIC_WORDS = re.compile(r"^Value error, | or instance of \w+")


def _where(loc: tuple[Any, ...] | list[Any], what: str | None) -> tuple[str, str]:
    """(field name, how a person reads where it is) from a pydantic error location."""
    kinds = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "body field"}
    parts = [str(p) for p in loc]
    kind = kinds.get(parts[0], "") if parts and what is None else ""
    name = ".".join(parts[1:] if kind else parts)
    if what is not None:
        return name, f"{what}'s {name}" if name else what
    return name, f"{kind} {name}".strip()


M = TypeVar("M", bound=BaseModel)


def document_as(model: type[M], document: Any, what: str) -> M | JSONResponse:
    """``document`` (parsed JSON) read as ``model``, or the 400 answer that says what is wrong with it."""
    if not isinstance(document, dict):
        return error(400, f"{what} must be a JSON object.")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        message, field = validation_message(exc.errors(), what)
        return error(400, message, field=field)


def validation_message(errors: Sequence[Any], what: str | None = None) -> tuple[str, str | None]:
    """One sentence for every problem pydantic found, and the first field it concerns. ``what``
    names the document (``"The interaction payload"``); without it the location's first part
    says where (query, path, header, body), as in FastAPI's own errors."""
    sentences, first = [], None
    for problem in errors:
        name, where = _where(problem.get("loc") or (), what)
        first = first or name or None
        given = problem.get("input")
        shown = f" (got {given!r:.60})" if isinstance(given, (str, int, float)) else ""
        said = _PYDANTIC_WORDS.sub("", str(problem.get("msg") or "is not valid"))
        sentences.append(f"{where}: {said}{shown}")
    return "; ".join(sentences) + ".", first


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route takes at this path (asked of the router, which nests included routers)."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.router.routes)]


def install_error_answers(app: FastAPI, max_body_bytes: int) -> None:
    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_request: Request, _exc: BodyTooLarge) -> JSONResponse:
        return error(413, too_large_message(max_body_bytes))

    @app.exception_handler(Unreadable)
    async def _unreadable_body(_request: Request, exc: Unreadable) -> JSONResponse:
        return error(400, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(TransitionRefused)
    async def _refused(_request: Request, exc: TransitionRefused) -> JSONResponse:
        return error(409, str(exc), state=exc.state, trigger=exc.trigger)

    @app.exception_handler(NotAllowed)
    async def _not_allowed(_request: Request, exc: NotAllowed) -> JSONResponse:
        return error(403, str(exc))

    @app.exception_handler(InvalidSignup)
    async def _invalid(_request: Request, exc: InvalidSignup) -> JSONResponse:
        return error(422, exc.message, field=exc.field)

    @app.exception_handler(RequestValidationError)
    async def _unreadable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(list(exc.errors()))
        return error(422, message, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        words = {404: "There is nothing at this address.", 405: "This address does not take that method."}
        message = exc.detail if isinstance(exc.detail, str) and exc.status_code not in words else words.get(
            exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by two routes
            # (GET and POST /api/events) takes both, and Allow must say so (RFC 9110).
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, UNEXPECTED)
