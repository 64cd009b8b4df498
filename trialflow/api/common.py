"""What every route shares: the runtime dependency, bounded body reading, and error answers.

Routers (``slack``, ``github``, ``activity``, ``events``, ``dashboard``) and the app import this
module; it imports none of them, so the app can include the routers without an import circle.
"""
from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from trialflow.domain.normalize import bad_text
from trialflow.runtime import Runtime


class BodyTooLarge(Exception):
    """Raised while reading a body over its limit; the app answers it with a 413."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` without reading it all."""
    return await collect_body(request.stream(), request.headers.get("content-length"), limit)


async def collect_body(chunks, declared: str | None, limit: int) -> bytes:
    """A body from its chunks: BodyTooLarge as soon as the declared or received size passes ``limit``."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        parts.append(chunk)
    return b"".join(parts)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RT = Annotated[Runtime, Depends(get_runtime)]


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class Unreadable(Exception):
    """A body trialflow cannot read at all (not UTF-8, not JSON, text no database can keep); the app answers 400."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# Python's json reads these words, but they are not JSON and no sender of ours writes them.
def _no_constants(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON number")


def parse_json(body: bytes, what: str = "The body", check_text: bool = True) -> Any:
    """The JSON document in ``body``; Unreadable with a sentence naming what is wrong.
    ``check_text=False`` leaves ``bad_text`` to a caller that names the field."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise Unreadable(f"{what} is not UTF-8 text.") from None
    except (ValueError, RecursionError):  # RecursionError: nested deeper than any real payload
        raise Unreadable(f"{what} is not valid JSON.") from None
    problem = bad_text(document) if check_text else None
    if problem:
        raise Unreadable(f"{what}: {problem}.")
    return document


def parse_form(body: bytes) -> dict[str, str]:
    """A URL-encoded form (first value of each field); Unreadable unless it is UTF-8 all through."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise Unreadable("The form body is not UTF-8 text.") from None
    form = {k: v[0] for k, v in fields.items()}
    problem = bad_text(form)
    if problem:
        raise Unreadable(f"The form body: {problem}.")
    return form
