"""Who may read staff data: the gate in front of the staff surfaces and ``/metrics``.

Staff surfaces (``STAFF_EXACT``, ``STAFF_PREFIXES``: the trials API, the funnel, the dashboard and
the API docs) need one of:

- a staff sign-in: the session (``trialflow.api.signin``) of an OpenID Connect identity that
  matches an active row of ``staff.csv`` (by email, or by Slack user id when the issuer is Slack);
- a machine token: ``Authorization: Bearer <token>`` with a token of ``TRIALFLOW_API_TOKENS``.

Without either, an API request gets 401 (JSON) and a browser (``Accept: text/html``) is sent to
sign in; a signed-in person who is not active staff gets 403 and a page saying so. With no sign-in
and no tokens configured at all (the embedded default), they answer this machine only.
``/metrics`` takes ``Authorization: Bearer <TRIALFLOW_METRICS_TOKEN>`` (Prometheus'
``authorization`` / ``bearer_token`` settings), or, with none set, this machine only.

Everything else keeps its own check (signups are public; Slack, GitHub, activity reports and
``/api/events`` verify their signatures and tokens) and passes through untouched.

Every read of a trial and every refusal is logged on ``trialflow.audit`` with who (staff email,
token name) and from where; never a token, a cookie or a query string.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from trialflow.api import signin
from trialflow.api.clients import client_address, is_local
from trialflow.api.signin import SESSION_KEY, page
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory, Person
from trialflow.settings import Settings

audit = logging.getLogger("trialflow.audit")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STAFF_EXACT = frozenset({"/dashboard", "/api/funnel", "/api/funnel.csv", "/api/trials", "/docs", "/redoc", "/openapi.json"})
STAFF_PREFIXES = ("/dashboard/", "/api/funnel/", "/api/trials/", "/docs/", "/redoc/")
# The dashboard's stylesheet is the package's own file, not staff data (the 403 page uses it too).
OPEN_UNDER_STAFF = ("/dashboard/static/",)
METRICS = "/metrics"
SESSION_COOKIE = "trialflow_session"
LOCAL_ONLY = ("Staff surfaces answer only on this machine until staff sign-in (TRIALFLOW_OIDC_ISSUER, "
              "TRIALFLOW_OIDC_CLIENT_ID, TRIALFLOW_OIDC_CLIENT_SECRET, TRIALFLOW_PUBLIC_URL, "
              "TRIALFLOW_SESSION_SECRET) or TRIALFLOW_API_TOKENS is set.")


def is_staff_surface(path: str) -> bool:
    if path.startswith(OPEN_UNDER_STAFF):
        return False
    return path in STAFF_EXACT or path.startswith(STAFF_PREFIXES)


@dataclass(frozen=True)
class Caller:
    """Who was let in: a staff email, a token's name, or ``local`` (the embedded default)."""
    who: str
    how: str            # "sign-in", "token" or "local"
    address: str


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str         # for the audit log
    message: str        # for the caller
    who: str = "anonymous"
    sign_in: bool = False   # a browser is sent to sign in instead


def _path(scope: Scope) -> str:
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def bearer(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without one."""
    scheme, _, token = _header(scope, b"authorization").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_name(settings: Settings, given: str) -> str | None:
    """The name of the API token ``given`` is, compared in constant time against every one."""
    found = None
    for name, token in settings.api_token_pairs():
        if hmac.compare_digest(given.encode(), token.encode()):
            found = name
    return found


def _wants_html(scope: Scope) -> bool:
    return "text/html" in _header(scope, b"accept").lower()


def signed_in_identity(scope: Scope, settings: Settings) -> dict[str, Any] | None:
    """The identity the session holds, while it is younger than TRIALFLOW_SESSION_MAX_AGE_SECONDS."""
    session = scope.get("session")
    if not isinstance(session, dict):
        return None
    identity = session.get(SESSION_KEY)
    if not isinstance(identity, dict):
        return None
    # The cookie's own age is renewed with every answer; a sign-in is not: it ends this long after it began.
    if time.time() - float(identity.get("at") or 0) > settings.session_max_age_seconds:
        session.pop(SESSION_KEY, None)
        return None
    return identity


def find_staff(rt: Runtime, identity: dict[str, Any]) -> Person | None:
    """The active staff member a signed-in identity is: by Slack user id for Slack's issuer, else by email."""
    with rt.session_factory() as session:
        people = Directory(session)
        slack_id = identity.get("slack_user_id")
        person = people.by_slack_id(slack_id) if slack_id else None
        if person is None and identity.get("email"):
            person = people.by_email(str(identity["email"]).lower())
    return person if person is not None and person.active else None


class StaffGate:
    """ASGI middleware: lets staff (and Prometheus) through, answers everyone else."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.rt = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _path(scope)
        if path == METRICS:
            refusal = self._metrics(scope)
        elif is_staff_surface(path):
            decided = await self._staff(scope)
            if isinstance(decided, Caller):
                scope.setdefault("state", {})["caller"] = decided
                _log_read(scope, path, decided)
                refusal = None
            else:
                refusal = decided
        else:
            refusal = None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        audit.warning("refused %s %s: %s; by %s from %s", scope.get("method"), path, refusal.reason, refusal.who,
                      client_address(scope, self.rt.settings.trusted_proxies))
        await _answer(scope, send, refusal, self.rt.settings)

    def _metrics(self, scope: Scope) -> Refusal | None:
        settings = self.rt.settings
        if settings.metrics_token is None:
            if is_local(scope, settings.trusted_proxies):
                return None
            return Refusal(403, "not this machine, and no TRIALFLOW_METRICS_TOKEN is set",
                           "/metrics answers only on this machine until TRIALFLOW_METRICS_TOKEN is set.")
        given = bearer(scope)
        if given is not None and hmac.compare_digest(given.encode(), settings.metrics_token.get_secret_value().encode()):
            return None
        return Refusal(401, "wrong metrics token" if given else "no metrics token",
                       "Send 'Authorization: Bearer <TRIALFLOW_METRICS_TOKEN>'.")

    async def _staff(self, scope: Scope) -> Caller | Refusal:
        settings = self.rt.settings
        address = client_address(scope, settings.trusted_proxies)
        if not settings.staff_auth_configured:
            if is_local(scope, settings.trusted_proxies):
                return Caller("local", "local", address)
            return Refusal(403, "not this machine, and no authentication is configured", LOCAL_ONLY)
        given = bearer(scope)
        if given is not None:
            name = token_name(settings, given)
            if name is None:
                return Refusal(401, "wrong token", "That bearer token is not one of TRIALFLOW_API_TOKENS.")
            return Caller(name, "token", address)
        identity = signed_in_identity(scope, settings) if settings.sign_in_enabled else None
        if identity is None:
            return Refusal(401, "no credentials", "Sign in, or send 'Authorization: Bearer <token>' with a token "
                           "of TRIALFLOW_API_TOKENS.", sign_in=settings.sign_in_enabled)
        person = await run_in_threadpool(find_staff, self.rt, identity)
        shown = str(identity.get("email") or identity.get("slack_user_id") or identity.get("sub") or "?")
        if person is None:
            return Refusal(403, "signed in, but not active staff", f"You are signed in as {shown}, who is not "
                           "active staff in trialflow's staff list (staff.csv). Ask an admin to add you.", who=shown)
        return Caller(person.email, "sign-in", address)


def _log_read(scope: Scope, path: str, caller: Caller) -> None:
    if path.startswith("/api/trials/"):
        what = f"read trial {path.removeprefix('/api/trials/').strip('/')}"
    elif path == "/api/trials":
        what = "listed trials"
    else:
        what = f"opened {path}"
    audit.info("staff %s %s: by %s (%s) from %s", scope.get("method"), what, caller.who, caller.how, caller.address)


async def _answer(scope: Scope, send: Send, refusal: Refusal, settings: Settings) -> None:
    html = _wants_html(scope)
    headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
    if refusal.sign_in and html:
        target = _path(scope) + (("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else "")
        location = "/auth/login?next=" + quote(target, safe="")
        await _send(send, 302, b"", [*headers, (b"location", location.encode("latin-1"))])
        return
    if refusal.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trialflow"'))
    if html:
        body = page("Not allowed" if refusal.status == 403 else "Sign-in needed", refusal.message,
                    signed_in=refusal.status == 403 and settings.sign_in_enabled and refusal.who != "anonymous")
        await _send(send, refusal.status, body.encode(), [*headers, (b"content-type", b"text/html; charset=utf-8")])
        return
    body_bytes = json.dumps({"error": refusal.message}).encode()
    await _send(send, refusal.status, body_bytes, [*headers, (b"content-type", b"application/json")])


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, rt: Runtime) -> None:
    """The gate, and under it the session the sign-in keeps (added last: it runs first)."""
    settings = rt.settings
    app.include_router(signin.router)
    app.add_middleware(StaffGate, runtime=rt)
    if settings.sign_in_enabled:
        assert settings.session_secret is not None and settings.public_url is not None
        app.add_middleware(SessionMiddleware, secret_key=settings.session_secret.get_secret_value(),
                           session_cookie=SESSION_COOKIE, max_age=settings.session_max_age_seconds,
                           same_site="lax", https_only=settings.public_url.lower().startswith("https://"))
        app.state.oauth = signin.oauth_client(settings)
