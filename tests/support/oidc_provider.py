"""A real OpenID Connect provider for the sign-in tests, built on Authlib's server side
(``AuthorizationServer``, ``AuthorizationCodeGrant`` and the ``OpenIDCode`` extension): discovery,
JWKS, the authorization endpoint and the token endpoint, with ID tokens signed by an RSA key of
its own (RS256). Authlib does the protocol (client authentication, redirect URI and code
checks, nonce, at_hash); this module only stores codes in memory and says who is signed in.

Who is signed in at the provider is set by the test (``provider.sign_in_as(...)``), as a person
already signed in to Google or Okta would be: the authorization endpoint then answers at once
with a code, so a browser follows the whole dance by itself.

    with OidcProvider(client_id="trialflow", client_secret=..., redirect_uri=...) as provider:
        settings = make_settings(..., **provider.settings(public_url))
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from authlib.common.security import generate_token
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests.support.live_server import LiveServer

AUTH_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "email", "profile"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict[str, Any]
    nonce: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return "0"

    def get_amr(self) -> list[str]:
        return ["pwd"]


class _Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: Any, data: dict[str, str], query: dict[str, str]):
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)
        self._query, self._form = query, data

    @property
    def args(self) -> dict[str, str]:
        return self._query

    @property
    def form(self) -> dict[str, str]:
        return self._form


class OidcProvider:
    def __init__(self, client_id: str, client_secret: str, redirect_uri: str, host: str = "127.0.0.1",
                 slack: bool = False):
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.client = Client(client_id, client_secret, [redirect_uri])
        self.codes: dict[str, Code] = {}
        self.user: dict[str, Any] | None = None
        self.tokens_issued = 0
        self.slack = slack
        self.server = self._server()
        app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
        ])
        self._live = LiveServer(app, host=host)

    # --- who is signed in here ------------------------------------------------------------------

    def sign_in_as(self, email: str, name: str = "", sub: str | None = None, slack_user_id: str | None = None,
                   email_verified: bool = True) -> None:
        self.user = {"sub": sub or f"sub-{email}", "email": email, "name": name or email,
                     "email_verified": email_verified, "slack_user_id": slack_user_id}

    # --- the server -----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self._live.url

    def settings(self, public_url: str, session_secret: str) -> dict[str, Any]:
        """trialflow's settings for signing in here."""
        return {"oidc_issuer": self.issuer, "oidc_client_id": self.client.client_id,
                "oidc_client_secret": self.client.client_secret, "public_url": public_url,
                "session_secret": session_secret}

    def _server(self) -> AuthorizationServer:
        provider = self

        class Grant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

            def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
                data = request.payload.data
                provider.codes[code] = Code(code, request.client.client_id, data.get("redirect_uri"),
                                            data.get("scope") or "", request.user, data.get("nonce"))

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = provider.codes.get(code)
                return found if found is not None and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
                return authorization_code.user

        class OpenIdCode(OpenIDCode):
            def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
                return any(c.nonce == nonce for c in provider.codes.values())

            def resolve_client_private_key(self, client: Client) -> RSAKey:
                return provider.key

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                return {"iss": provider.issuer, "aud": [client.client_id]}

            def get_encode_header(self, client: Client) -> dict[str, str]:
                return {"alg": "RS256", "kid": "test-key"}

            def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
                info = UserInfo(sub=user["sub"], name=user["name"], email=user["email"],
                                email_verified=user["email_verified"])
                if provider.slack and user.get("slack_user_id"):
                    info["https://slack.com/user_id"] = user["slack_user_id"]
                return info

        class Server(AuthorizationServer):
            def query_client(self, client_id: str) -> Client | None:
                return provider.client if client_id == provider.client.client_id else None

            def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
                provider.tokens_issued += 1

            def create_oauth2_request(self, request: _Request) -> _Request:
                return request

            def create_json_request(self, request: _Request) -> _Request:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Response:
                if isinstance(body, dict):
                    return JSONResponse(body, status_code=status, headers=dict(headers))
                return Response(body or b"", status_code=status, headers=dict(headers))

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                pass

        server = Server(scopes_supported=["openid", "email", "profile"])
        server.register_token_generator("default", BearerTokenGenerator(lambda **_: generate_token(42)))
        server.register_grant(Grant, [OpenIdCode(require_nonce=True)])
        return server

    @staticmethod
    async def _incoming(request: Request) -> _Request:
        body = (await request.body()).decode() if request.method == "POST" else ""
        query = dict(request.query_params)
        data = {**query, **dict(parse_qsl(body))} if request.method == "POST" else query
        return _Request(request.method, str(request.url), request.headers, data, query)  # (case-insensitive)

    async def discovery(self, request: Request) -> Response:
        base = self.issuer
        return JSONResponse({
            "issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks", "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"], "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "claims_supported": ["sub", "email", "email_verified", "name"],
        })

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        if self.user is None:
            return HTMLResponse("<h1>Sign in to the test provider</h1><p>nobody is signed in</p>", status_code=401)
        incoming = await self._incoming(request)
        grant = self.server.get_consent_grant(request=incoming, end_user=self.user)
        return self.server.create_authorization_response(incoming, grant_user=self.user, grant=grant)

    async def token(self, request: Request) -> Response:
        return self.server.create_token_response(await self._incoming(request))

    def __enter__(self) -> OidcProvider:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)
