"""A local HTTPS server that answers like Salesforce's token endpoint and REST API (v59.0).

Built from ``../shared/fixtures/salesforce/``: the token answers (JWT bearer, ``invalid_grant``),
query pages linked by ``nextRecordsUrl``, upsert by external id (201 ``created: true``, then 200
``created: false``), and the error bodies (a JSON array of ``{message, errorCode}``) are the
fixtures'. The JWT assertion is verified for real (RS256 against the connected app's certificate,
``iss``, ``sub``, ``aud`` and ``exp``). TLS comes from a test certificate authority (trustme): the
client trusts it through ``REQUESTS_CA_BUNDLE`` (``ca_bundle``), never by turning verification off.

One server is both the login URL and the instance URL (``settings()``). Arrange with
``add_account``, ``add_user``, ``expire_sessions`` (the next call gets 401), ``keep_refusing_sessions``,
``fail_next`` (the next REST calls answer a fixture error), ``lose_next_answer`` (the call is done,
its answer never arrives); look with ``opportunities``, ``changes`` (every body applied, per trial
id, in order), ``calls`` and ``logins``.
"""
from __future__ import annotations

import copy
import json
import re
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "salesforce"
VERSION = "v59.0"
CLIENT_ID = "3MVG9FakeConnectedAppConsumerKey.trialflow"
USERNAME = "integration@acme.example"
LIMIT_INFO = "api-usage=25/15000"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class FakeSalesforce:
    def __init__(self, key_pem: bytes, directory: Path, page_size: int = 2):
        self.public_key = serialization.load_pem_private_key(key_pem, None).public_key()
        self.page_size = page_size
        self.lock = threading.RLock()
        self.sessions: set[str] = set()
        self.refuse_sessions = False
        self.failures: list[tuple[str | None, int, Any]] = []   # (method or None for any, status, body)
        self.lose_answers = 0
        self.accounts: list[dict[str, Any]] = []
        self.users: dict[str, str] = {}
        self.opportunities: dict[str, dict[str, Any]] = {}   # by record id
        self.changes: dict[str, list[dict[str, Any]]] = {}   # trial id -> bodies applied, in order
        self.cursors: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[tuple[str, str]] = []
        self.logins: list[dict[str, Any]] = []
        ca = trustme.CA()
        self.ca_bundle = directory / "fake-salesforce-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    # --- running -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def settings(self, key_file: Path) -> dict[str, Any]:
        return {"salesforce_login_url": self.url, "salesforce_client_id": CLIENT_ID,
                "salesforce_username": USERNAME, "salesforce_private_key_file": key_file}

    def __enter__(self) -> FakeSalesforce:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-salesforce",
                         daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- arranging -----------------------------------------------------------------------------

    def add_account(self, name: str, website: str | None, *, prequalified: bool = True, named: bool = False,
                    owner: str | None = None, named_sdr: str | None = None, ce: str | None = None) -> str:
        record_id = f"001FAKE{len(self.accounts):08d}AAA"
        team = None
        if ce:
            team = {"totalSize": 1, "done": True, "records": [
                {"attributes": {"type": "AccountTeamMember"}, "User": {"attributes": {"type": "User"}, "Email": ce}}]}
        self.accounts.append({
            "attributes": {"type": "Account", "url": f"/services/data/{VERSION}/sobjects/Account/{record_id}"},
            "Id": record_id, "Name": name, "Website": website,
            "Trial_Prequalified__c": prequalified, "Named_Account__c": named,
            "Named_SDR__r": {"attributes": {"type": "User"}, "Email": named_sdr} if named_sdr else None,
            "Owner": {"attributes": {"type": "User"}, "Email": owner} if owner else None,
            "AccountTeamMembers": team,
        })
        return record_id

    def add_user(self, email: str) -> str:
        self.users[email] = f"005FAKE{len(self.users):08d}AAA"
        return self.users[email]

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def keep_refusing_sessions(self, refuse: bool = True) -> None:
        self.refuse_sessions = refuse

    def fail_next(self, fixture_name: str, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` REST calls (of ``method``, if given) answer the fixture's error."""
        answer = fixture(fixture_name)["response"]
        self.failures.extend([(method, answer["status"], answer["body"])] * times)

    def lose_next_answer(self) -> None:
        """The next upsert (PATCH) is carried out, then the connection drops before its answer."""
        self.lose_answers += 1

    def opportunity(self, trial_id: str) -> dict[str, Any] | None:
        found = [o for o in self.opportunities.values() if o.get("Trial_Id__c") == trial_id]
        assert len(found) <= 1, f"{len(found)} Opportunities for {trial_id}"
        return found[0] if found else None

    # --- answering -----------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        refused = fixture("oauth.token.invalid_grant.400.json")["response"]
        try:
            claims = jwt.decode(form.get("assertion", ""), self.public_key, algorithms=["RS256"], audience=self.url,
                                options={"require": ["iss", "sub", "aud", "exp"]})
        except jwt.InvalidTokenError as exc:
            return 400, {"error": "invalid_grant", "error_description": f"invalid assertion ({type(exc).__name__})"}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or claims["iss"] != CLIENT_ID:
            return 400, {"error": "invalid_client_id", "error_description": "client identifier invalid"}
        if claims["sub"] != USERNAME:
            return refused["status"], refused["body"]
        body = copy.deepcopy(fixture("oauth.token.jwt_bearer.200.json")["response"]["body"])
        body["access_token"] = "00DFAKE!" + secrets.token_urlsafe(24)
        body["instance_url"] = self.url
        with self.lock:
            self.sessions.add(body["access_token"])
            self.logins.append(claims)
        return 200, body

    def rest(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        base = f"/services/data/{VERSION}/"
        rest = path[len(base):]
        if method == "GET" and rest == "query/":
            return self.query(query["q"][0])
        if method == "GET" and rest.startswith("query/"):
            return self.page(rest.split("/", 1)[1])
        match = re.fullmatch(r"sobjects/Opportunity/([A-Za-z0-9_]+)/([^/]+)", rest)
        if match and method == "PATCH":
            return self.upsert(match.group(1), unquote(match.group(2)), body)
        if match and method == "GET":
            found = [o for o in self.opportunities.values() if o.get(match.group(1)) == unquote(match.group(2))]
            return (200, found[0]) if found else self.error("error.not_found.404.json")
        return self.error("error.not_found.404.json")

    def error(self, name: str) -> tuple[int, Any]:
        answer = fixture(name)["response"]
        return answer["status"], answer["body"]

    def query(self, soql: str) -> tuple[int, Any]:
        if " FROM User " in soql:
            email = re.search(r"Email = '([^']*)'", soql)
            user = self.users.get(email.group(1)) if email else None
            return 200, {"totalSize": int(bool(user)), "done": True,
                         "records": [{"attributes": {"type": "User"}, "Id": user}] if user else []}
        if "FROM Account" not in soql:
            return 400, [{"message": "unexpected query", "errorCode": "MALFORMED_QUERY"}]
        wanted = [a for a in self.accounts if a["Trial_Prequalified__c"] or a["Named_Account__c"]]
        if "LIMIT 1" in soql:
            wanted = wanted[:1]
        locator = "01gFAKE" + secrets.token_hex(4)
        self.cursors[locator] = wanted
        return 200, self._page(locator, 0)

    def page(self, cursor: str) -> tuple[int, Any]:
        locator, _, offset = cursor.rpartition("-")
        if locator not in self.cursors:
            return 400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]
        return 200, self._page(locator, int(offset))

    def _page(self, locator: str, offset: int) -> dict[str, Any]:
        records = self.cursors[locator]
        end = offset + self.page_size
        page: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records),
                                "records": copy.deepcopy(records[offset:end])}
        if end < len(records):
            page["nextRecordsUrl"] = f"/services/data/{VERSION}/query/{locator}-{end}"
        return page

    def upsert(self, field: str, value: str, body: dict[str, Any]) -> tuple[int, Any]:
        if field in body:
            return 400, [{"message": f"{field} is the external id of this upsert and must not be in the body",
                          "errorCode": "INVALID_FIELD"}]
        with self.lock:
            found = [o for o in self.opportunities.values() if o.get(field) == value]
            self.changes.setdefault(value, []).append(dict(body))
            if found:
                found[0].update(body)
                return 200, {"id": found[0]["Id"], "success": True, "errors": [], "created": False}
            record_id = f"006FAKE{len(self.opportunities):08d}AAA"
            self.opportunities[record_id] = {"Id": record_id, field: value, **body}
            return 201, {"id": record_id, "success": True, "errors": [], "created": True}


def _handler_for(fake: FakeSalesforce):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Sforce-Limit-Info", LIMIT_INFO)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake.lock:
                fake.calls.append((self.command, parts.path))
            if parts.path == "/services/oauth2/token" and self.command == "POST":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                self._answer(*fake.token(form))
                return
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            with fake.lock:
                if fake.refuse_sessions or token not in fake.sessions:
                    self._answer(*fake.error("error.invalid_session.401.json"))
                    return
                failure = next((f for f in fake.failures if f[0] in (None, self.command)), None)
                if failure:
                    fake.failures.remove(failure)
                lose = fake.lose_answers > 0 and self.command == "PATCH"
                fake.lose_answers -= lose
            if failure:
                self._answer(failure[1], failure[2])
                return
            answer = fake.rest(self.command, parts.path, parse_qs(parts.query), json.loads(raw) if raw else None)
            if lose:
                time.sleep(0.01)
                self.close_connection = True
                self.connection.close()
                return
            self._answer(*answer)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    return Handler


@pytest.fixture(scope="session")
def salesforce_key(tmp_path_factory) -> Path:
    """The connected app's private key (its certificate is what the fake verifies against)."""
    path = tmp_path_factory.mktemp("salesforce") / "server.key"
    path.write_bytes(private_key_pem())
    return path


@pytest.fixture
def fake_salesforce(salesforce_key, tmp_path, monkeypatch):
    with FakeSalesforce(salesforce_key.read_bytes(), tmp_path) as fake:
        # requests trusts the test CA through its own environment setting: verification stays on.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_bundle))
        yield fake
