"""A local HTTP server that answers like the GraphQL API of many Sourcegraph instances at once.

Built from ``../shared/fixtures/sourcegraph/``: requests are parsed, validated and executed with
graphql-core against the fixtures' schema subset (``schema.subset.graphql``), so a query trialflow
sends that the real schema would refuse is refused here too; error texts, the 401 answer and the
429 are the fixtures'. One addition to the subset, from Sourcegraph's schema:
``setUserIsSiteAdmin(userID: ID!, siteAdmin: Boolean!): EmptyResponse`` (site admins only;
sourcegraph-public-snapshot ``cmd/frontend/internal/graphqlbackend/site_admin.go``).

Instances are reached through trialflow's URL template, one path prefix per host::

    settings = make_settings(..., **fake_sourcegraph.settings())
    # instance_api_url = "http://127.0.0.1:PORT/{host}/.api/graphql"

The instances' users and the resolvers answering from them are in ``sourcegraph_state.py``.
Every instance exists on first use, with a site-admin automation account whose token is
``.token``. Arrange with ``add_user``, ``sign_in``, ``use``, ``disable_reset``, ``rate_limit``,
``revoke``, ``down``; look with ``users``, ``reset_links`` (every link handed out, for the
"no reset link anywhere" greps) and ``calls``.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLError, build_schema, graphql_sync

from tests.support.sourcegraph_state import FakeInstance, FakeUser, Resolvers

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "sourcegraph"
DEFAULT_TOKEN = "sgp_trialflowFakeToken0123456789abcdef"
AUTOMATION = "trialflow-automation"
_EXTENSION = ("\ntype EmptyResponse {\n  alwaysNil: String\n}\n")


def _schema():
    sdl = (FIXTURES / "schema.subset.graphql").read_text()
    promote = "\n  setUserIsSiteAdmin(userID: ID!, siteAdmin: Boolean!): EmptyResponse"
    sdl = sdl.replace("type Mutation {", "type Mutation {" + promote, 1)
    return build_schema(sdl + _EXTENSION)


SCHEMA = _schema()
UNAUTHORIZED = (FIXTURES / "unauthorized.401.txt").read_text().replace("\r\n", "\n").split("\n\n", 1)


class FakeSourcegraph:
    def __init__(self, token: str = DEFAULT_TOKEN, now: Callable[[], datetime] | None = None,
                 codes: Callable[[], str] | None = None):
        self.token = token
        self.now = now or (lambda: datetime.now(UTC))
        self.codes = codes or (lambda: secrets.token_urlsafe(15))
        self.lock = threading.RLock()
        self.instances: dict[str, FakeInstance] = {}
        self.reset_links: list[str] = []
        self.calls: list[dict[str, Any]] = []        # {host, operation, variables, status}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True

    # --- running -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def settings(self) -> dict[str, str]:
        return {"instance_api_url": self.url + "/{host}/.api/graphql", "instance_token": self.token}

    def __enter__(self) -> FakeSourcegraph:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-sourcegraph",
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- arranging and looking -----------------------------------------------------------------

    def instance(self, host: str) -> FakeInstance:
        with self.lock:
            if host not in self.instances:
                made = self.instances[host] = FakeInstance(host, self.token, self.now())
                made.add(AUTOMATION, "cloud-automation@example.com", self.now(), site_admin=True, database_id=1)
            return self.instances[host]

    def add_user(self, host: str, username: str, email: str | None, site_admin: bool = False) -> FakeUser:
        with self.lock:
            return self.instance(host).add(username, email, self.now(), site_admin)

    def user(self, host: str, email: str) -> FakeUser | None:
        with self.lock:
            return next((u for u in self.instance(host).users if u.email == email), None)

    def users(self, host: str) -> list[FakeUser]:
        with self.lock:
            inst = self.instance(host)
            return [u for u in inst.users if u is not inst.automation]

    def sign_in(self, host: str, email: str, at: datetime | None = None) -> None:
        """``email`` followed their link and signed in (their account must exist)."""
        with self.lock:
            user = self.user(host, email)
            assert user is not None, f"{email} has no account on {host}"
            user.activity.append(at or self.now())

    def use(self, host: str, email: str, searches: int = 0, code_intel: int = 0, at: datetime | None = None) -> None:
        with self.lock:
            when = at or self.now()
            user = self.user(host, email)
            assert user is not None, f"{email} has no account on {host}"
            user.activity.append(when)
            user.events += [(when, "search", searches), (when, "references", code_intel // 2),
                            (when, "definitions", code_intel - code_intel // 2)]

    def disable_reset(self, host: str) -> None:
        with self.lock:
            self.instance(host).reset_enabled = False

    def rate_limit(self, host: str, retry_after: int = 30, times: int = 1) -> None:
        with self.lock:
            self.instance(host).limits.extend([retry_after] * times)

    def revoke(self, host: str) -> None:
        """The automation account's token no longer works there (401 Invalid access token.)."""
        with self.lock:
            self.instance(host).token = "sgp_" + secrets.token_hex(20)

    def down(self, host: str, down: bool = True) -> None:
        """The instance does not answer (its load balancer says 502)."""
        with self.lock:
            self.instance(host).answering = not down

    def operations(self, host: str | None = None) -> list[str]:
        with self.lock:
            return [c["operation"] for c in self.calls if host is None or c["host"] == host]

    # --- answering -----------------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        match = re.fullmatch(r"/([^/]+)/\.api/graphql", path.split("?", 1)[0])
        if not match:
            return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n"
        host = match.group(1).lower()
        with self.lock:
            inst = self.instance(host)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            call = {"host": host, "operation": body.get("operationName") or path.partition("?")[2],
                    "variables": body.get("variables") or {}, "status": 0}
            self.calls.append(call)
            status, extra, answer = self._answer(inst, headers, body)
            call["status"] = status
            return status, extra, answer

    def _answer(self, inst: FakeInstance, headers: dict[str, str], body: dict[str, Any]):
        if not inst.answering:
            return 502, {"Content-Type": "text/plain"}, b"Bad Gateway\n"
        if inst.limits:
            return 429, {"Retry-After": str(inst.limits.pop(0))}, b""
        caller = None
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, rest = auth.partition(" ")
            quoted = re.fullmatch(r'token="([^"]*)"', rest.strip())
            given = quoted.group(1) if quoted else rest.strip()
            if scheme.lower() == "token":
                if given != inst.token:
                    head, text = UNAUTHORIZED
                    hdrs = dict(line.split(": ", 1) for line in head.splitlines()[1:])
                    return 401, hdrs, text.encode()
                caller = inst.automation
                caller.activity.append(self.now())  # the API calls count as its activity, as on a real instance
        result = graphql_sync(SCHEMA, body.get("query") or "", root_value=Resolvers(self, inst, caller),
                              variable_values=body.get("variables"), operation_name=body.get("operationName"))
        answer: dict[str, Any] = {}
        if result.errors:
            answer["errors"] = [_formatted(e) for e in result.errors]
        answer["data"] = result.data
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


def _formatted(error: GraphQLError) -> dict[str, Any]:
    shown = dict(error.formatted)
    if shown.get("path"):
        shown.pop("locations", None)  # resolver errors carry their path only (graph-gophers)
    shown.pop("extensions", None)
    return shown


def _handler_for(fake: FakeSourcegraph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = fake.handle(self.path, headers, raw)
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            body = b"405 method not allowed\n"
            self.send_response(405)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler



@pytest.fixture
def fake_sourcegraph():
    with FakeSourcegraph() as fake:
        yield fake
