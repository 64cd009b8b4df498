"""The state of the fake Sourcegraph instances (users, their activity) and the GraphQL resolvers
that answer from it, as Sourcegraph's would (``tests/support/fake_sourcegraph.py`` serves them)."""
from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from graphql import GraphQLError

VERSION = "5.3.0"
_USERNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|[-.](?=[A-Za-z0-9]))*-?$")
_WINDOWS = {"LAST_WEEK": 7, "LAST_MONTH": 30, "LAST_THREE_MONTHS": 90}


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


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


class Server(Protocol):
    """What the resolvers need of ``FakeSourcegraph``: its clock, its reset codes, its record of links."""
    now: Callable[[], datetime]
    codes: Callable[[], str]
    reset_links: list[str]


class Resolvers:
    """The resolvers: graphql-core calls a field's callable with (info, **arguments)."""

    def __init__(self, fake: Server, inst: FakeInstance, caller: FakeUser | None):
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
            ordered = sorted(chosen, key=lambda u: (u.last_active_at or datetime.min.replace(tzinfo=UTC))) \
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
