"""Staff sign-in with OpenID Connect (Authlib's Starlette client): ``/auth/login``,
``/auth/callback``, ``/auth/logout``.

Any OpenID Connect provider works (Sign in with Slack, Google Workspace, Okta): the provider is
found from ``TRIALFLOW_OIDC_ISSUER``'s discovery document, the redirect URI is
``TRIALFLOW_PUBLIC_URL`` + ``/auth/callback`` (register it with the provider), and Authlib checks
the state, the nonce and the ID token's signature, issuer, audience and expiry.

The session (a signed cookie: ``trialflow.api.auth.install``) keeps who signed in and when; no
token of the provider's. Whether that person is staff is decided on every request by
``trialflow.api.auth``, so a row made inactive in staff.csv ends access at once.
"""
from __future__ import annotations

import logging
import time
from html import escape
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from trialflow.api.clients import client_address
from trialflow.api.common import RT
from trialflow.settings import Settings

audit = logging.getLogger("trialflow.audit")
router = APIRouter(include_in_schema=False)

SESSION_KEY = "signed_in"
SLACK_USER_ID_CLAIM = "https://slack.com/user_id"
DEFAULT_NEXT = "/dashboard"
PROVIDER_TIMEOUT_SECONDS = 10.0


def page(title: str, message: str, signed_in: bool = False) -> str:
    """A small page for people: refusals and sign-in errors."""
    out = '<p><a href="/auth/logout">Sign out</a> to sign in as someone else.</p>' if signed_in else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>trialflow · {escape(title)}</title>'
            f'<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head><body><main>'
            f'<h1 id="title">{escape(title)}</h1><p id="message">{escape(message)}</p>{out}</main></body></html>')


def _page(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(page(title, message), status_code=status, headers={"Cache-Control": "no-store"})


def oauth_client(settings: Settings) -> Any:
    """Authlib's client for the issuer (its metadata is fetched on the first sign-in)."""
    assert settings.oidc_issuer and settings.oidc_client_secret is not None
    oauth = OAuth()
    return oauth.register(
        "staff", client_id=settings.oidc_client_id, client_secret=settings.oidc_client_secret.get_secret_value(),
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "timeout": PROVIDER_TIMEOUT_SECONDS})


def is_slack(issuer: str) -> bool:
    host = urlsplit(issuer).hostname or ""
    return host == "slack.com" or host.endswith(".slack.com")


def identity_from_claims(settings: Settings, claims: dict[str, Any], now: float) -> dict[str, Any]:
    """What the session keeps of the ID token: who (email only when the provider verified it;
    the Slack user id when the issuer is Slack) and when they signed in."""
    verified = claims.get("email_verified") not in (False, "false")
    email = str(claims["email"]).strip().lower() if claims.get("email") and verified else None
    slack_id = claims.get(SLACK_USER_ID_CLAIM) if is_slack(settings.oidc_issuer or "") else None
    return {"sub": str(claims.get("sub") or ""), "email": email, "slack_user_id": slack_id,
            "name": str(claims.get("name") or "")[:200], "at": now}


def safe_next(target: str | None) -> str:
    """Only a path of this site: never another site's address (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    return target


@router.get("/auth/login")
async def login(request: Request, rt: RT, next: str | None = None) -> Response:
    """Start the sign-in: to the provider, and back to ``next``."""
    settings = rt.settings
    if not settings.sign_in_enabled or settings.public_url is None:
        return _page(404, "Sign-in is not configured", "Set TRIALFLOW_OIDC_ISSUER and the other sign-in settings.")
    request.session["next"] = safe_next(next)
    redirect_uri = settings.public_url.rstrip("/") + "/auth/callback"
    try:
        response: Response = await request.app.state.oauth.authorize_redirect(request, redirect_uri)
    except (httpx.HTTPError, OAuthError, ValueError, KeyError) as exc:
        audit.warning("sign-in could not start: the provider %s did not answer its discovery document (%s)",
                      settings.oidc_issuer, type(exc).__name__)
        return _page(502, "Sign-in is unavailable", "The sign-in provider could not be reached. Try again in a minute.")
    return response


@router.get("/auth/callback")
async def callback(request: Request, rt: RT) -> Response:
    """The provider sends the person back here with a code: exchanged, the ID token checked."""
    settings = rt.settings
    if not settings.sign_in_enabled:
        return _page(404, "Sign-in is not configured", "Set TRIALFLOW_OIDC_ISSUER and the other sign-in settings.")
    address = client_address(request.scope, settings.trusted_proxies)
    try:
        token = await request.app.state.oauth.authorize_access_token(request)
    except OAuthError as exc:
        audit.warning("sign-in failed from %s: %s", address, exc.error)
        return _page(400, "Sign-in did not complete", f"The sign-in did not complete ({exc.error}). "
                     "Start again from the page you wanted.")
    except (httpx.HTTPError, ValueError) as exc:
        audit.warning("sign-in failed from %s: %s", address, type(exc).__name__)
        return _page(502, "Sign-in did not complete", "The sign-in provider could not be reached. Try again.")
    claims = token.get("userinfo") or {}
    identity = identity_from_claims(settings, dict(claims), time.time())
    target = safe_next(request.session.get("next"))
    # A fresh session: nothing from before the sign-in (the provider's state, an earlier identity) stays.
    request.session.clear()
    request.session[SESSION_KEY] = identity
    audit.info("signed in: %s from %s", identity["email"] or identity["slack_user_id"] or identity["sub"], address)
    return RedirectResponse(target, status_code=303)


@router.api_route("/auth/logout", methods=["GET", "POST"])
async def logout(request: Request, rt: RT) -> Response:
    """Forget the sign-in."""
    if "session" in request.scope:
        request.session.clear()
    return _page(200, "Signed out", "You are signed out of trialflow.")
