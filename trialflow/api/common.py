"""What every route shares: the runtime dependency, bounded body reading, and error answers.

Routers (``slack``, ``github``, ``activity``, ``events``, ``dashboard``) and the app import this
module; it imports none of them, so the app can include the routers without an import circle.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

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
