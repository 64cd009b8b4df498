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

Every instance exists on first use, with a site-admin automation account whose token is
``.token``. Arrange with ``add_user``, ``sign_in``, ``use``, ``disable_reset``, ``rate_limit``,
``revoke``, ``down``; look with ``users``, ``reset_links`` (every link handed out, for the
"no reset link anywhere" greps) and ``calls``.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from graphql import GraphQLError, build_schema, graphql_sync

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "sourcegraph"
DEFAULT_TOKEN = "sgp_trialflowFakeToken0123456789abcdef"
AUTOMATION = "trialflow-automation"
VERSION = "5.3.0"
_EXTENSION = ("\ntype EmptyResponse {\n  alwaysNil: String\n}\n")
_USERNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|[-.](?=[A-Za-z0-9]))*-?$")
_WINDOWS = {"LAST_WEEK": 7, "LAST_MONTH": 30, "LAST_THREE_MONTHS": 90}


def _schema():
    sdl = (FIXTURES / "schema.subset.graphql").read_text()
    promote = "\n  setUserIsSiteAdmin(userID: ID!, siteAdmin: Boolean!): EmptyResponse"
    sdl = sdl.replace("type Mutation {", "type Mutation {" + promote, 1)
    return build_schema(sdl + _EXTENSION)


SCHEMA = _schema()
UNAUTHORIZED = (FIXTURES / "unauthorized.401.txt").read_text().replace("\r\n", "\n").split("\n\n", 1)


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


@dataclass
class FakeUser:
    database_id: int
    username: str
    email: str | None
    created_at: datetime
    site_admin: bool = False
    verified: bool = True
    activity: list[datetime] = field(default_factory=list)          # when they were active
    # (when, "search" | "references" | "definitions", how many)
    events: list[tuple[datetime, str, int]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return base64.b64encode(f"User:{self.database_id}".encode()).decode()

    @property
    def last_active_at(self) -> datetime | None:
        return max(self.activity) if self.activity else None


@dataclass
class FakeInstance:
    host: str
    token: str
    created: datetime
    reset_enabled: bool = True
    answering: bool = True
    next_id: int = 2
    users: list[FakeUser] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)                # Retry-After of the next 429s

    def add(self, username: str, email: str | None, at: datetime, site_admin: bool = False,
            database_id: int | None = None) -> FakeUser:
        user = FakeUser(database_id or self.next_id, username, email, at, site_admin)
        self.next_id = max(self.next_id, user.database_id) + 1
        self.users.append(user)
        return user

    @property
    def automation(self) -> FakeUser:
        """The site-admin account whose token trialflow holds (the first user)."""
        return next(u for u in self.users if u.database_id == 1)

    def by_id(self, graphql_id: str) -> FakeUser | None:
        return next((u for u in self.users if u.id == graphql_id), None)


class FakeSourcegraph:
    def __init__(self, token: str = DEFAULT_TOKEN, now: Callable[[], datetime] | None = None,
                 codes: Callable[[], str] | None = None):
        self.token = token
        self.now = now or (lambda: datetime.now(timezone.utc))
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

    def __enter__(self) -> "FakeSourcegraph":
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
        result = graphql_sync(SCHEMA, body.get("query") or "", root_value=_Root(self, inst, caller),
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


class _Root:
    """The resolvers: graphql-core calls a field's callable with (info, **arguments)."""

    def __init__(self, fake: FakeSourcegraph, inst: FakeInstance, caller: FakeUser | None):
        self.fake, self.inst, self.caller = fake, inst, caller

    def _admin(self, message: str = "must be site admin") -> None:
        if self.caller is None or not self.caller.site_admin:
            raise GraphQLError(message)

    def _link(self, user: FakeUser, email_param: bool) -> str:
        extra = "&email=" if email_param else ""
        link = f"https://{self.inst.host}/password-reset?code={self.fake.codes()}{extra}&userID={user.database_id}"
        self.fake.reset_links.append(link)
        return link

    # Query

    def currentUser(self, info: Any) -> dict[str, Any] | None:  # noqa: N802 - GraphQL's name
        return _user(self.caller) if self.caller else None

    def user(self, info: Any, username: str | None = None, email: str | None = None,
             databaseID: int | None = None) -> dict[str, Any] | None:  # noqa: N803
        if username is None and email is None and databaseID is None:
            raise GraphQLError("must specify either username or email to look up a user")
        for u in self.inst.users:
            if (username is not None and u.username == username) \
                    or (databaseID is not None and u.database_id == databaseID) \
                    or (email is not None and u.verified and (u.email or "").lower() == email.lower()):
                return _user(u)
        return None

    def users(self, info: Any, first: int | None = None, after: str | None = None, query: str | None = None,
              activePeriod: str | None = None, inactiveSince: str | None = None) -> dict[str, Any]:  # noqa: N803
        found = [u for u in self.inst.users if not query or query in u.username]
        start = int(after or 0)
        page = found[start:start + first] if first else found[start:]
        end = start + len(page)
        return {"nodes": [_user(u) for u in page], "totalCount": len(found),
                "pageInfo": {"hasNextPage": end < len(found), "endCursor": str(end) if page else None}}

    def site(self, info: Any) -> dict[str, Any]:
        self_ = self

        def usage_statistics(info: Any, days: int | None = None, weeks: int | None = None,
                             months: int | None = None) -> dict[str, Any]:
            self_._admin()
            return self_._usage_statistics(days or 3, weeks or 2, months or 1)

        return {"productVersion": VERSION, "buildVersion": VERSION, "usageStatistics": usage_statistics,
                "analytics": self._analytics(), "users": self._site_users}

    # Mutation

    def createUser(self, info: Any, username: str, email: str | None = None,  # noqa: N802
                   verifiedEmail: bool | None = None) -> dict[str, Any]:  # noqa: N803
        self._admin()
        if not _USERNAME.match(username):
            raise GraphQLError("failed to create user: cannot create user: users_username_valid_chars")
        if any(u.username.lower() == username.lower() for u in self.inst.users):
            raise GraphQLError("failed to create user: cannot create user: err_username_exists")
        if email and any(u.verified and (u.email or "").lower() == email.lower() for u in self.inst.users):
            raise GraphQLError("failed to create user: cannot create user: err_email_exists")
        user = self.inst.add(username, email, self.fake.now())
        return {"user": _user(user), "resetPasswordURL": self._link(user, False) if self.inst.reset_enabled else None}

    def randomizeUserPassword(self, info: Any, user: str) -> dict[str, Any]:  # noqa: N802
        self._admin()
        found = self.inst.by_id(user)
        if found is None:
            raise GraphQLError("user not found")
        if not self.inst.reset_enabled:
            raise GraphQLError("resetting passwords is not enabled")
        return {"resetPasswordURL": self._link(found, True), "emailSent": False}

    def setUserIsSiteAdmin(self, info: Any, userID: str, siteAdmin: bool) -> dict[str, Any]:  # noqa: N802, N803
        self._admin("must be site admin to set users as site admins")
        if self.caller is not None and self.caller.id == userID:
            raise GraphQLError("refusing to set current user site admin status")
        found = self.inst.by_id(userID)
        if found is None:
            raise GraphQLError("user not found")
        found.site_admin = siteAdmin
        return {"alwaysNil": None}

    # site.*

    def _window(self, date_range: str | None) -> datetime:
        if date_range not in _WINDOWS:
            raise GraphQLError("runtime error: invalid memory address or nil pointer dereference")
        return self.fake.now() - timedelta(days=_WINDOWS[date_range])

    def _stat(self, happened: list[tuple[datetime, int, int]], since: datetime, grouping: str | None) -> dict[str, Any]:
        """An AnalyticsStatItem from (when, how many, whose database id): a summary, and one node per
        day or per Monday of the window, newest first, zero-filled."""
        inside = [(at, n, who) for at, n, who in happened if at >= since and n]
        today = self.fake.now().replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(weeks=1) if grouping == "WEEKLY" else timedelta(days=1)
        start = today - timedelta(days=today.weekday()) if grouping == "WEEKLY" else today
        nodes = []
        while start + step > since:
            hits = [(n, who) for at, n, who in inside if start <= at < start + step]
            unique = float(len({who for _, who in hits}))
            nodes.append({"date": _iso(start), "count": float(sum(n for n, _ in hits)), "uniqueUsers": unique,
                          "registeredUsers": unique})
            start -= step
        unique = float(len({who for _, _, who in inside}))
        return {"summary": {"totalCount": float(sum(n for _, n, _ in inside)), "totalUniqueUsers": unique,
                            "totalRegisteredUsers": unique}, "nodes": nodes}

    def _events(self, kind: str) -> list[tuple[datetime, int, int]]:
        return [(at, n, u.database_id) for u in self.inst.users for at, k, n in u.events if k == kind]

    def _analytics(self) -> dict[str, Any]:
        self_ = self

        def item(kind: str, dateRange: str | None, grouping: str | None) -> dict[str, Any]:  # noqa: N803
            self_._admin()
            return self_._stat(self_._events(kind), self_._window(dateRange), grouping)

        def search(info: Any, dateRange: str | None = None, grouping: str | None = None) -> dict[str, Any]:  # noqa: N803
            zero = item("none", dateRange, grouping)
            return {"searches": item("search", dateRange, grouping), "resultClicks": zero, "fileViews": zero,
                    "fileOpens": zero, "codeCopied": zero}

        def code_intel(info: Any, dateRange: str | None = None, grouping: str | None = None) -> dict[str, Any]:  # noqa: N803
            zero = item("none", dateRange, grouping)
            return {"referenceClicks": item("references", dateRange, grouping),
                    "definitionClicks": item("definitions", dateRange, grouping),
                    "inAppEvents": zero, "codeHostEvents": zero, "searchBasedEvents": zero, "preciseEvents": zero,
                    "crossRepoEvents": zero}

        def users(info: Any, dateRange: str | None = None, grouping: str | None = None) -> dict[str, Any]:  # noqa: N803
            self_._admin()
            seen = [(at, 1, u.database_id) for u in self_.inst.users for at in u.activity]
            return {"activity": self_._stat(seen, self_._window(dateRange), grouping),
                    "frequencies": [], "monthlyActiveUsers": []}

        return {"search": search, "codeIntel": code_intel, "users": users}

    def _site_users(self, info: Any, lastActiveAt: dict[str, Any] | None = None, **_filters: Any) -> dict[str, Any]:  # noqa: N803
        self._admin()
        chosen = [u for u in self.inst.users if _in_range(u.last_active_at, lastActiveAt)]

        def nodes(info: Any, limit: int | None = None, offset: int | None = None, orderBy: str | None = None,  # noqa: N803
                  descending: bool | None = None) -> list[dict[str, Any]]:
            ordered = sorted(chosen, key=lambda u: (u.last_active_at or datetime.min.replace(tzinfo=timezone.utc))) \
                if orderBy == "LAST_ACTIVE_AT" else list(chosen)
            if descending:
                ordered.reverse()
            start = offset or 0
            return [_site_user(u) for u in ordered[start:start + (limit or 100)]]

        return {"totalCount": float(len(chosen)), "nodes": nodes}

    def _usage_statistics(self, days: int, weeks: int, months: int) -> dict[str, Any]:
        today = self.fake.now().replace(hour=0, minute=0, second=0, microsecond=0)

        def period(start: datetime, end: datetime) -> dict[str, Any]:
            count = sum(1 for u in self.inst.users if any(start <= a < end for a in u.activity))
            return {"startTime": _iso(start), "userCount": count, "registeredUserCount": count,
                    "anonymousUserCount": 0, "integrationUserCount": 0}

        monday = today - timedelta(days=today.weekday())
        first = today.replace(day=1)
        return {"daus": [period(today - timedelta(days=i), today - timedelta(days=i - 1)) for i in range(days)],
                "waus": [period(monday - timedelta(weeks=i), monday - timedelta(weeks=i - 1)) for i in range(weeks)],
                "maus": [period(first, today + timedelta(days=1)) for _ in range(months)][:1]}


def _in_range(value: datetime | None, bounds: dict[str, Any] | None) -> bool:
    if not bounds:
        return True
    if bounds.get("empty") is not None:
        hit = (value is None) == bool(bounds["empty"])
        return hit != bool(bounds.get("not"))
    if value is None:
        return False
    ok = True
    if bounds.get("gte"):
        ok = ok and value >= datetime.fromisoformat(str(bounds["gte"]).replace("Z", "+00:00"))
    if bounds.get("lte"):
        ok = ok and value <= datetime.fromisoformat(str(bounds["lte"]).replace("Z", "+00:00"))
    return ok != bool(bounds.get("not"))


def _email(u: FakeUser) -> dict[str, Any] | None:
    return {"email": u.email, "verified": u.verified, "isPrimary": True, "verificationPending": not u.verified} \
        if u.email else None


def _user(u: FakeUser) -> dict[str, Any]:
    searches = sum(n for _, k, n in u.events if k == "search")
    code_intel = sum(n for _, k, n in u.events if k in ("references", "definitions"))
    return {"id": u.id, "databaseID": u.database_id, "username": u.username, "displayName": None,
            "createdAt": _iso(u.created_at), "siteAdmin": u.site_admin, "builtinAuth": True,
            "emails": [e for e in [_email(u)] if e], "primaryEmail": _email(u),
            "usageStatistics": {"searchQueries": searches, "pageViews": len(u.activity),
                                "codeIntelligenceActions": code_intel, "findReferencesActions": code_intel // 2,
                                "lastActiveTime": _iso(u.last_active_at), "lastActiveCodeHostIntegrationTime": None}}


def _site_user(u: FakeUser) -> dict[str, Any]:
    return {"id": u.id, "username": u.username, "email": u.email, "displayName": None, "createdAt": _iso(u.created_at),
            "lastActiveAt": _iso(u.last_active_at), "deletedAt": None, "siteAdmin": u.site_admin,
            "scimControlled": False, "eventsCount": float(len(u.activity) + len(u.events)), "locked": False}


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
