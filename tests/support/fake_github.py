"""A local HTTP server that answers like GitHub's REST API, for the real PyGithub client.

Issues, comments and search results are GitHub's documented examples in
``../shared/fixtures/github/rest`` with ids, numbers, text and URLs filled in; the rate-limit
answers are the captured secondary-limit 403 and PyGithub's recorded primary-limit 403. Every
request is recorded; state is kept behind one lock, so it may be hit from many threads and from
other processes (a Celery worker reaches it at ``.url``; the test then reads ``.issues``).

Use it from any test module::

    from tests.support.fake_github import fake_github  # noqa: F401  (the pytest fixture)

    def test_...(fake_github):
        settings = make_settings(db_url, config_dir, **fake_github.settings())
        # or, for a subprocess: trialflow_env(**fake_github.settings())
        ...
        assert fake_github.deliveries()[effect_key] == 1

Routes: ``GET /repos/{o}/{r}``, ``GET /repos/{o}/{r}/hooks``, ``GET|POST /repos/{o}/{r}/issues``, ``GET /repos/{o}/{r}/issues/{n}``,
``GET|POST /repos/{o}/{r}/issues/{n}/comments``, ``GET /search/issues``, ``GET /_fake/state``.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import shlex
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "github" / "rest"
DEFAULT_TOKEN = "ghp_trialflowTestToken0000000000000000"
DEFAULT_REPO = "acme-cloud/cloud-trials"
BOT_LOGIN = "trialflow-bot"
DOCS = "https://docs.github.com/rest"
# GitHub's limits on an issue (and a comment): longer is a 422 Validation Failed.
TITLE_MAX = 256
BODY_MAX = 65536
_EFFECT_MARKER = re.compile(r"<!-- trialflow-effect:(.+?) -->")


@dataclass
class GitHubRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0


class FakeGitHub:
    def __init__(self, repo: str = DEFAULT_REPO, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1", port: int = 0):
        self.repo = repo
        self.token = token
        self.lock = threading.RLock()
        self.requests: list[GitHubRequest] = []
        self.issues: list[dict[str, Any]] = []       # every issue created, as GitHub returned it
        self.comments: list[dict[str, Any]] = []     # every comment created (with "issue_number")
        self.search_available = True                 # False: /search/issues answers 503
        self.search_indexed = True                   # False: the search index has not caught up (no hits)
        # The token's access to the repository (GitHub's "permissions" on GET /repos/{o}/{r}).
        self.permissions = {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True}
        self.hooks: list[dict[str, Any]] = []        # add_hook(); listed only to a token with admin access
        self._limits: deque[tuple[int, dict[str, str], dict]] = deque()
        self._failures: deque[tuple[str, re.Pattern, int, dict]] = deque()
        self._ids = itertools.count(1001)
        self._numbers = itertools.count(1)
        self._examples = {
            "issue": json.loads((FIXTURES / "issues.create.201.json").read_text()),
            "comment": json.loads((FIXTURES / "issues.create-comment.201.json").read_text()),
            "search": json.loads((FIXTURES / "search.issues.200.json").read_text()),
            "secondary": json.loads((FIXTURES / "secondary_rate_limit.403.json").read_text()),
            "primary": json.loads((FIXTURES / "recorded" / "primary_rate_limit.403.pygithub-2013.json").read_text()),
        }
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True

    # --- running -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def settings(self) -> dict[str, str]:
        """Settings overrides pointing trialflow here: ``make_settings(..., **s)`` or ``trialflow_env(**s)``."""
        return {"github_token": self.token, "github_api_url": self.url, "github_repo": self.repo}

    def start(self) -> FakeGitHub:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-github",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- arranging -----------------------------------------------------------------------------

    def secondary_limit(self, retry_after: int = 60, times: int = 1) -> None:
        """The next ``times`` requests get the captured secondary-rate-limit 403 (with retry-after)."""
        example = self._examples["secondary"]
        headers = {k: v for k, v in example["headers"].items() if k not in ("content-length", "date")}
        headers["retry-after"] = str(retry_after)
        with self.lock:
            self._limits.extend([(example["status"], headers, example["body"])] * times)

    def primary_limit(self, reset_in: int = 120, times: int = 1) -> None:
        """The next ``times`` requests get a primary-limit 403: x-ratelimit-remaining 0, reset in ``reset_in`` s."""
        example = self._examples["primary"]
        keep = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-github-media-type", "access-control-expose-headers")
        headers = {k: v for k, v in example["headers"].items() if k in keep}
        headers.update({"x-ratelimit-remaining": "0", "x-ratelimit-used": headers.get("x-ratelimit-limit", "60"),
                        "x-ratelimit-reset": str(int(time.time()) + reset_in), "x-ratelimit-resource": "core"})
        body = {"message": "API rate limit exceeded for user ID 1.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}
        with self.lock:
            self._limits.extend([(example["status"], headers, body)] * times)

    def fail(self, method: str, path_pattern: str, status: int, message: str, times: int = 1, **extra: Any) -> None:
        """The next ``times`` matching requests answer ``status`` with GitHub's error body."""
        body = {"message": message, "documentation_url": DOCS, "status": str(status), **extra}
        with self.lock:
            self._failures.extend([(method.upper(), re.compile(path_pattern), status, body)] * times)

    # --- inspecting ----------------------------------------------------------------------------

    def issue(self, number: int) -> dict[str, Any] | None:
        with self.lock:
            return next((i for i in self.issues if i["number"] == number), None)

    def comments_on(self, number: int) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.comments if c["issue_number"] == number]

    def deliveries(self) -> Counter:
        """How many issues and comments were created per trialflow effect key (from the hidden marker)."""
        with self.lock:
            keys = [m.group(1) for item in self.issues + self.comments
                    for m in [_EFFECT_MARKER.search(item.get("body") or "")] if m]
        return Counter(keys)

    def calls(self, method: str, path_prefix: str) -> list[GitHubRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"issues": copy.deepcopy(self.issues), "comments": copy.deepcopy(self.comments),
                    "requests": [{"method": r.method, "path": r.path, "status": r.status} for r in self.requests]}

    # --- answering -----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if path == "/_fake/state":
            return 200, {}, self.state()
        with self.lock:
            record = GitHubRequest(method, path, query, body, headers)
            self.requests.append(record)
            status, extra, answer = self._answer(method, path, query, body, headers)
            record.status = status
            return status, extra, answer

    def _answer(self, method, path, query, body, headers):
        if self._limits:
            status, hdrs, payload = self._limits.popleft()
            return status, dict(hdrs), copy.deepcopy(payload)
        if headers.get("authorization") not in (f"token {self.token}", f"Bearer {self.token}"):
            return 401, {}, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        for i, (f_method, pattern, status, payload) in enumerate(self._failures):
            if f_method == method and pattern.search(path):
                del self._failures[i]
                return status, {}, copy.deepcopy(payload)
        owner_repo = f"/repos/{self.repo}"
        if path == "/search/issues" and method == "GET":
            return self._search(query)
        if not (path == owner_repo or path.startswith(owner_repo + "/")):
            return self._not_found()
        rest = path[len(owner_repo):]
        if rest == "" and method == "GET":
            return 200, {}, self._repository()
        if rest == "/hooks" and method == "GET":
            # GitHub answers 404 to a token without admin access to the repository.
            return (200, {}, copy.deepcopy(self.hooks)) if self.permissions.get("admin") else self._not_found()
        if rest == "/issues":
            if method == "POST":
                return self._create_issue(body)
            if method == "GET":
                return self._list_issues(query, path)
        m = re.fullmatch(r"/issues/(\d+)(/comments)?", rest)
        if m:
            issue = self.issue(int(m.group(1)))
            if issue is None:
                return self._not_found()
            if not m.group(2) and method == "GET":
                return 200, {}, copy.deepcopy(issue)
            if m.group(2) and method == "POST":
                return self._create_comment(issue, body)
            if m.group(2) and method == "GET":
                return self._paged([c for c in self.comments if c["issue_number"] == issue["number"]], query, path,
                                   strip=("issue_number",))
        return self._not_found()

    def _not_found(self):
        return 404, {}, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}

    def _user(self) -> dict:
        user = copy.deepcopy(self._examples["issue"]["user"])
        for key, value in list(user.items()):
            if isinstance(value, str):
                user[key] = value.replace("octocat", BOT_LOGIN).replace("https://api.github.com", self.url)
        user.update(login=BOT_LOGIN, type="Bot")
        return user

    def _repository(self) -> dict:
        owner, name = self.repo.split("/")
        owner_obj = self._user()
        owner_obj.update(login=owner, type="Organization", url=f"{self.url}/users/{owner}")
        return {"id": 4242, "node_id": "R_kgDOtrial", "name": name, "full_name": self.repo, "private": True,
                "owner": owner_obj, "html_url": f"https://github.com/{self.repo}", "description": "Cloud trial requests",
                "fork": False, "url": f"{self.url}/repos/{self.repo}", "has_issues": True, "archived": False,
                "disabled": False, "visibility": "private", "default_branch": "main",
                "open_issues_count": sum(1 for i in self.issues if i["state"] == "open"),
                "issues_url": f"{self.url}/repos/{self.repo}/issues{{/number}}",
                "permissions": dict(self.permissions)}

    def add_hook(self, url: str, content_type: str = "json", active: bool = True,
                 events: tuple[str, ...] = ("issues", "issue_comment")) -> dict:
        """A repository webhook, shaped as GitHub lists it (GET /repos/{o}/{r}/hooks)."""
        with self.lock:
            hook_id = 9000 + len(self.hooks)
            base = f"{self.url}/repos/{self.repo}/hooks/{hook_id}"
            hook = {"type": "Repository", "id": hook_id, "name": "web", "active": active, "events": list(events),
                    "config": {"content_type": content_type, "insecure_ssl": "0", "url": url, "secret": "********"},
                    "updated_at": self._now(), "created_at": self._now(), "url": base, "test_url": base + "/test",
                    "ping_url": base + "/pings", "deliveries_url": base + "/deliveries",
                    "last_response": {"code": None, "status": "unused", "message": None}}
            self.hooks.append(hook)
            return hook

    def _now(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _create_issue(self, body):
        if not isinstance(body, dict) or not body.get("title"):
            return 422, {}, {"message": "Invalid request.\n\n\"title\" wasn't supplied.", "documentation_url": DOCS,
                             "status": "422"}
        too_long = _too_long("Issue", title=body["title"], body=body.get("body") or "")
        if too_long:
            return too_long
        number = next(self._numbers)
        api = f"{self.url}/repos/{self.repo}/issues/{number}"
        issue = copy.deepcopy(self._examples["issue"])
        label_example = issue["labels"][0]
        issue.pop("pull_request", None)  # a new issue is not a pull request
        issue.update(
            id=next(self._ids), node_id=f"I_kwDOtrial{number}", number=number, title=body["title"],
            body=body.get("body"), state="open", state_reason=None, locked=False, active_lock_reason=None,
            comments=0, closed_at=None, closed_by=None, milestone=None, assignee=None, assignees=[],
            created_at=self._now(), updated_at=self._now(), user=self._user(), author_association="NONE",
            url=api, repository_url=f"{self.url}/repos/{self.repo}", labels_url=api + "/labels{/name}",
            comments_url=api + "/comments", events_url=api + "/events",
            html_url=f"https://github.com/{self.repo}/issues/{number}",
            labels=[{**label_example, "id": 208045946 + i, "name": name, "default": False, "description": None,
                     "url": f"{self.url}/repos/{self.repo}/labels/{name}", "node_id": f"LA_trial{i}"}
                    for i, name in enumerate(body.get("labels") or [])],
        )
        self.issues.append(issue)
        return 201, {"location": api}, copy.deepcopy(issue)

    def _create_comment(self, issue, body):
        if not isinstance(body, dict) or not body.get("body"):
            return 422, {}, {"message": "Invalid request.\n\n\"body\" wasn't supplied.", "documentation_url": DOCS,
                             "status": "422"}
        too_long = _too_long("IssueComment", body=body["body"])
        if too_long:
            return too_long
        comment = copy.deepcopy(self._examples["comment"])
        comment_id = next(self._ids)
        comment.update(id=comment_id, node_id=f"IC_kwDOtrial{comment_id}", body=body["body"], user=self._user(),
                       url=f"{self.url}/repos/{self.repo}/issues/comments/{comment_id}",
                       html_url=f"{issue['html_url']}#issuecomment-{comment_id}", issue_url=issue["url"],
                       created_at=self._now(), updated_at=self._now(), author_association="NONE")
        issue["comments"] += 1
        self.comments.append({**comment, "issue_number": issue["number"]})
        return 201, {"location": comment["url"]}, comment

    def _list_issues(self, query, path):
        state = query.get("state", "open")
        issues = [i for i in self.issues if state == "all" or i["state"] == state]
        reverse = query.get("direction", "desc") == "desc"
        issues.sort(key=lambda i: (i["created_at"], i["number"]), reverse=reverse)
        return self._paged(issues, query, path)

    def _paged(self, items, query, path, strip=()):
        per_page = min(int(query.get("per_page") or 30), 100)
        page = max(int(query.get("page") or 1), 1)
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            next_query = urlencode({**query, "page": page + 1})
            headers["link"] = f'<{self.url}{path}?{next_query}>; rel="next"'
        return 200, headers, [{k: v for k, v in copy.deepcopy(i).items() if k not in strip} for i in chunk]

    def _search(self, query):
        if not self.search_available:
            return 503, {}, {"message": "Service Unavailable", "documentation_url": DOCS, "status": "503"}
        q = query.get("q", "")
        try:
            terms = shlex.split(q)
        except ValueError:
            return 422, {}, {"message": "Validation Failed", "errors": [{"message": "unbalanced quotes in q",
                             "resource": "Search", "field": "q", "code": "invalid"}], "documentation_url": DOCS,
                             "status": "422"}
        qualifiers = dict(t.split(":", 1) for t in terms if re.match(r"^(repo|in|type|is|state|label):", t))
        phrases = [t for t in terms if not re.match(r"^(repo|in|type|is|state|label):", t)]
        if qualifiers.get("repo", self.repo) != self.repo or not self.search_indexed:
            items = []
        else:
            items = [i for i in self.issues if all(p in (i.get("body") or "") or p in i["title"] for p in phrases)]
        result = copy.deepcopy(self._examples["search"])
        result.update(total_count=len(items), incomplete_results=False,
                      items=[{**copy.deepcopy(i), "score": 1.0} for i in items[:100]])
        return 200, {}, result


def _too_long(resource: str, **fields: str):
    """GitHub's 422 for a title over 256 or a body over 65,536 characters (its own wording)."""
    limits = {"title": TITLE_MAX, "body": BODY_MAX}
    errors = [{"resource": resource, "code": "custom", "field": name,
               "message": f"{name} is too long (maximum is {limits[name]} characters)"}
              for name, value in fields.items() if len(value) > limits[name]]
    if not errors:
        return None
    return 422, {}, {"message": "Validation Failed", "errors": errors, "documentation_url": DOCS, "status": "422"}


def _handler_for(fake: FakeGitHub):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-github/1"

        def log_message(self, *args) -> None:
            pass

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = fake.handle(method, parts.path, query, body, headers)
            data = json.dumps(answer).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=utf-8")
            self.send_header("x-github-media-type", "github.v3; format=json")
            for k, v in extra.items():
                if k.lower() not in ("content-type", "x-github-media-type"):
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

    return Handler


@pytest.fixture
def fake_github():
    """A running FakeGitHub for one test (repo ``acme-cloud/cloud-trials``)."""
    with FakeGitHub() as github:
        yield github


@pytest.fixture
def github():
    """A running FakeGitHub on the repository the fixtures' webhook payloads name (FIXTURE_REPO),
    so signed webhooks from ``tests/support/signed.py`` reach the issues trialflow opened."""
    from tests.support.signed import FIXTURE_REPO

    with FakeGitHub(repo=FIXTURE_REPO) as fake:
        yield fake


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve a fake GitHub REST API (state at /_fake/state).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repo", default=DEFAULT_REPO)
    cli = parser.parse_args()
    server = FakeGitHub(repo=cli.repo, port=cli.port)
    print(f"TRIALFLOW_GITHUB_API_URL={server.url} TRIALFLOW_GITHUB_REPO={server.repo} "
          f"TRIALFLOW_GITHUB_TOKEN={server.token}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._server.serve_forever()
