"""The OpenAPI document and the pages that show it, ``/docs`` (Swagger UI) and ``/redoc``, offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they show nothing on a network
without one and tell that CDN who reads our docs. Here every asset comes from trialflow itself,
under ``/docs/static/``: the files are those of the ``fastapi-offline`` package on PyPI
(installed from the lock like every other dependency, so an upgrade is a lock change, not a copy
into the repository). Swagger UI's validator badge, which calls validator.swagger.io, is off.

Bodies the routes read themselves are documented here: ``json_body``/``form_body`` give a route's
``openapi_extra``, ``answers`` its ``responses``; ``document`` adds the models they name (and the
events token's security scheme) to the generated document.
"""
from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from trialflow.api.common import error
from trialflow.api.schemas import ErrorAnswer

router = APIRouter(include_in_schema=False)

ASSETS = files("fastapi_offline") / "static"
ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
               "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
STATIC = "/docs/static"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"

EVENTS_SECURITY = "eventsToken"
# What the staff gate (api/auth.py) answers in front of the staff surfaces and /metrics.
STAFF = (401, 403)
_documented: dict[str, type[BaseModel]] = {}

REFUSALS = {
    400: "The body is not what the endpoint reads (not JSON or not a form, not UTF-8, the wrong shape).",
    401: "A signature, timestamp, token or staff sign-in is missing, wrong or stale. Nothing changed.",
    403: "Not allowed: not active staff, or not this machine while no sign-in or token is configured.",
    404: "There is no such trial or instance.",
    409: "The trial's state does not allow this step now.",
    413: "The body is larger than the endpoint takes.",
    422: "A field or parameter has a value trialflow cannot use; `field` names it.",
    429: "Too many signups from this address or for this domain; try again after Retry-After seconds.",
    503: "Not configured (a secret or token is unset), or the database cannot be reached.",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    _documented[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a JSON body itself."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": _ref(model)}}}, **extra}


def form_body(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a URL-encoded form itself."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/x-www-form-urlencoded": {"schema": _ref(model)}}}, **extra}


def header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    """A required request header, as an OpenAPI parameter."""
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def answers(ok: dict[int, tuple[type[BaseModel] | None, str]], *refusals: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: its successes (model or None for an empty body) and its refusals."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status, (model, description) in ok.items():
        documented[status] = {"description": description, **({"model": model} if model else {"content": {}})}
    for status in refusals:
        # Content given, not a model: a route whose own answers are HTML or text refuses in JSON.
        documented[status] = {"description": REFUSALS[status],
                              "content": {"application/json": {"schema": _ref(ErrorAnswer)}}}
        if status == 429:
            documented[status]["headers"] = {"Retry-After": {"description": "Seconds to wait.", "required": True,
                                                              "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return documented


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document: FastAPI's, plus the models the routes' own bodies name."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, model in sorted(_documented.items()):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    components.setdefault("securitySchemes", {})[EVENTS_SECURITY] = {
        "type": "http", "scheme": "bearer", "description": "TRIALFLOW_EVENTS_TOKEN, the marketing site's token."}
    app.openapi_schema = schema
    return schema


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title="trialflow · API", oauth2_redirect_url=OAUTH2_REDIRECT,
                               swagger_js_url=f"{STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{STATIC}/swagger-ui.css",
                               swagger_favicon_url=f"{STATIC}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})


@router.get(OAUTH2_REDIRECT)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title="trialflow · API", redoc_js_url=f"{STATIC}/redoc.standalone.js",
                          redoc_favicon_url=f"{STATIC}/favicon.png", with_google_fonts=False)


@router.get(STATIC + "/{name}")
def asset(name: str) -> Response:
    """Only the four files the pages name: nothing else on disk is reachable."""
    if name not in ASSET_TYPES:
        return error(404, f"No asset {name[:80]!r}.")
    return Response((ASSETS / name).read_bytes(), media_type=ASSET_TYPES[name],
                    headers={"Cache-Control": "max-age=86400"})
