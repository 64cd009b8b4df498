"""The instance-admin port (``domain.instance_admin``) on Sourcegraph's GraphQL API.

One POST per operation to ``TRIALFLOW_INSTANCE_API_URL`` with ``{host}`` filled in, the operation
name as the query string (Sourcegraph's own clients do so; it labels the call in the instance's
logs), and ``Authorization: token <automation account's token>``. The contracts and the answers
this module reads are in ``shared/fixtures/sourcegraph/``.

How answers become errors (the Deliverer retries, parks and alerts from these):
    401 (a token unknown, revoked or expired) ..... PermanentFailure naming the setting to fix
    429 ........................................... RetryLater after its Retry-After
    5xx, timeouts, refused connections ............ RetryLater
    403, other 4xx, "must be site admin" .......... PermanentFailure
    err_username_exists / err_email_exists ........ AccountExists (the caller finds the user)

A reset link is a secret for one person: it is returned to the caller and nowhere else (never in
an exception text or a log line). Tokens are never logged either.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from trialflow.domain.instance_admin import AccountExists, CreatedUser, InstanceUsage, InstanceUser, SignIn, SiteHealth
from trialflow.errors import PermanentFailure, RetryLater
from trialflow.settings import Settings

log = logging.getLogger("trialflow.delivery.sourcegraph")

TIMEOUT = httpx.Timeout(15.0, connect=5.0)
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 3600.0
SIGN_IN_PAGE = 100

SITE_HEALTH = "query SiteHealth {\n  site { productVersion }\n  currentUser { username siteAdmin }\n}"
CREATE_USER = (
    "mutation CreateUser($username: String!, $email: String, $verifiedEmail: Boolean) {\n"
    "  createUser(username: $username, email: $email, verifiedEmail: $verifiedEmail) {\n"
    "    user { id databaseID username primaryEmail { email verified } }\n    resetPasswordURL\n  }\n}")
RANDOMIZE_PASSWORD = ("mutation RandomizeUserPassword($user: ID!) {\n"
                      "  randomizeUserPassword(user: $user) { resetPasswordURL emailSent }\n}")
USER_BY_EMAIL = "query UserByEmail($email: String!) {\n  user(email: $email) { id username }\n}"
SET_SITE_ADMIN = ("mutation SetUserIsSiteAdmin($user: ID!) {\n"
                  "  setUserIsSiteAdmin(userID: $user, siteAdmin: true) { alwaysNil }\n}")
# The last 7 days. Users are counted from site.users (who was active), leaving out the automation
# account itself, whose API calls would otherwise make every instance look used.
INSTANCE_ACTIVITY = (
    "query InstanceActivity($since: DateTime) {\n"
    "  currentUser { username }\n"
    "  site {\n"
    "    analytics {\n"
    "      search(dateRange: LAST_WEEK, grouping: DAILY) { searches { summary { totalCount } } }\n"
    "      codeIntel(dateRange: LAST_WEEK, grouping: DAILY) {\n"
    "        referenceClicks { summary { totalCount } }\n"
    "        definitionClicks { summary { totalCount } }\n"
    "      }\n"
    "    }\n"
    "    users(lastActiveAt: {gte: $since}) {\n"
    "      totalCount\n"
    f"      nodes(limit: {SIGN_IN_PAGE}, orderBy: LAST_ACTIVE_AT, descending: false) "
    "{ username email lastActiveAt siteAdmin }\n"
    "    }\n"
    "  }\n"
    "}")


class GraphQLErrors(Exception):
    """HTTP 200 with ``errors``: ``data`` is what the instance still answered (may be None)."""

    def __init__(self, messages: list[str], paths: list[list[Any]], data: dict[str, Any] | None):
        super().__init__("; ".join(messages))
        self.messages = messages
        self.paths = paths
        self.data = data

    def mentions(self, text: str) -> bool:
        return any(text in m for m in self.messages)


class SourcegraphAdmin:
    """``InstanceAdmin`` over HTTP. ``client``: an ``httpx.Client`` (tests may pass one with a transport)."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None):
        self.settings = settings
        self.client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    # --- the port ------------------------------------------------------------------------------

    def site(self, host: str) -> SiteHealth:
        data = self._data(host, "SiteHealth", SITE_HEALTH, {})
        me = data.get("currentUser") or {}
        return SiteHealth(str((data.get("site") or {}).get("productVersion") or ""), me.get("username"),
                          bool(me.get("siteAdmin")))

    def create_user(self, host: str, username: str, email: str) -> CreatedUser:
        variables = {"username": username, "email": email, "verifiedEmail": True}
        try:
            data = self._call(host, "CreateUser", CREATE_USER, variables)
        except GraphQLErrors as exc:
            if exc.mentions("err_username_exists"):
                raise AccountExists("username") from None
            if exc.mentions("err_email_exists"):
                raise AccountExists("email") from None
            created = (exc.data or {}).get("createUser")
            if created and created.get("user"):
                # The user exists but the link failed (the instance could not send its own email):
                # the caller asks for a fresh one.
                return CreatedUser(_user(created["user"]), None)
            raise self._refused(host, "create a user", exc) from None
        created = data["createUser"]
        return CreatedUser(_user(created["user"]), created.get("resetPasswordURL") or None)

    def user_by_email(self, host: str, email: str) -> InstanceUser | None:
        found = self._data(host, "UserByEmail", USER_BY_EMAIL, {"email": email}).get("user")
        return InstanceUser(str(found["id"]), str(found["username"]), email) if found else None

    def randomize_password(self, host: str, user_id: str) -> str | None:
        try:
            data = self._call(host, "RandomizeUserPassword", RANDOMIZE_PASSWORD, {"user": user_id})
        except GraphQLErrors as exc:
            if exc.mentions("resetting passwords is not enabled"):
                return None
            raise self._refused(host, "renew a password-reset link", exc) from None
        return (data.get("randomizeUserPassword") or {}).get("resetPasswordURL") or None

    def make_site_admin(self, host: str, user_id: str) -> None:
        self._data(host, "SetUserIsSiteAdmin", SET_SITE_ADMIN, {"user": user_id})

    def usage(self, host: str, since: datetime, now: datetime) -> InstanceUsage:
        data = self._data(host, "InstanceActivity", INSTANCE_ACTIVITY,
                          {"since": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        automation = (data.get("currentUser") or {}).get("username")
        site = data.get("site") or {}
        analytics = site.get("analytics") or {}
        searches = _total(analytics, "search", "searches")
        code_intel = sum(_total(analytics, "codeIntel", metric) for metric in ("referenceClicks", "definitionClicks"))
        users = site.get("users") or {}
        nodes = [n for n in users.get("nodes") or [] if isinstance(n, dict)]
        automation_listed = any(n.get("username") == automation for n in nodes)
        signed_in = [SignIn(str(n["username"]), n.get("email") or None, _when(n["lastActiveAt"]),
                            bool(n.get("siteAdmin")))
                     for n in nodes if n.get("lastActiveAt") and n.get("username") != automation]
        active = max(int(users.get("totalCount") or 0) - (1 if automation_listed else 0), len(signed_in))
        return InstanceUsage(now, active, searches, code_intel, sorted(signed_in, key=lambda s: s.last_active_at))

    # --- HTTP ----------------------------------------------------------------------------------

    def _data(self, host: str, operation: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call(host, operation, query, variables)
        except GraphQLErrors as exc:
            raise self._refused(host, operation, exc) from None

    def _call(self, host: str, operation: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        token = self.settings.instance_token_for(host)
        if token is None:
            raise PermanentFailure(f"trialflow has no access token for the instance {host}: set "
                                   "TRIALFLOW_INSTANCE_TOKEN, or add the host to TRIALFLOW_INSTANCE_TOKENS_FILE")
        url = self.settings.instance_api_for(host)
        try:
            response = self.client.post(f"{url}?{operation}", json={"query": query, "operationName": operation,
                                                                     "variables": variables},
                                        headers={"Authorization": f"token {token.get_secret_value()}"})
        except httpx.TimeoutException:
            raise RetryLater(f"the instance {host} did not answer {operation} in time") from None
        except httpx.HTTPError as exc:
            raise RetryLater(f"the instance {host} is unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if status == 401:
            said = response.text.strip()[:100] or "Unauthorized"
            raise PermanentFailure(
                f"the instance {host} refused trialflow's access token (401 {said}). The automation account's "
                "token is unknown, revoked or expired: fix TRIALFLOW_INSTANCE_TOKEN (or the host's line in "
                "TRIALFLOW_INSTANCE_TOKENS_FILE), then retry the effect with `trialflow outbox retry`")
        if status == 429:
            wait = _retry_after(response.headers.get("retry-after"))
            raise RetryLater(f"the instance {host} is rate limiting its API (429); retry after {wait:g}s", wait)
        if status >= 500:
            raise RetryLater(f"the instance {host} failed for now ({status})")
        if status != 200:
            raise PermanentFailure(f"the instance {host} refused {operation}: {status} {response.text.strip()[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise RetryLater(f"the instance {host} answered {operation} with something that is not JSON") from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            raise GraphQLErrors([str(e.get("message") or "") for e in errors if isinstance(e, dict)],
                                [list(e.get("path") or []) for e in errors if isinstance(e, dict)], body.get("data"))
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise RetryLater(f"the instance {host} answered {operation} without data")
        return data

    def _refused(self, host: str, what: str, exc: GraphQLErrors) -> PermanentFailure:
        if exc.mentions("must be site admin"):
            return PermanentFailure(f"the instance {host} refused to {what}: trialflow's automation account is not a "
                                    "site admin there (ask the cloud team to make it one)")
        return PermanentFailure(f"the instance {host} refused to {what}: {exc}")


def _user(node: dict[str, Any]) -> InstanceUser:
    email = (node.get("primaryEmail") or {}).get("email")
    return InstanceUser(str(node["id"]), str(node["username"]), email)


def _total(analytics: dict[str, Any], group: str, metric: str) -> int:
    summary = (((analytics.get(group) or {}).get(metric) or {}).get("summary") or {})
    return int(float(summary.get("totalCount") or 0))  # Float in the schema


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _retry_after(value: str | None) -> float:
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        return min(max(parsedate_to_datetime(value).timestamp() - datetime.now(UTC).timestamp(), 0.0),
                   MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
