"""The instance-admin port: what trialflow asks of a trial instance's admin API, as values.

The adapter is ``trialflow.delivery.sourcegraph`` (Sourcegraph's GraphQL API, with the token of the
site-admin automation account the cloud team creates on every trial instance). Unit tests use a
fake of this port; integration tests run the adapter against ``tests/support/fake_sourcegraph.py``.

Pure: no clients, no clock.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# Sourcegraph's username rule: letters and digits, single dashes or dots between them.
_NOT_ALLOWED = re.compile(r"[^a-z0-9.-]+")
_RUNS = re.compile(r"[.-]{2,}")
USERNAME_MAX = 32
USERNAME_TRIES = 10


@dataclass(frozen=True)
class InstanceUser:
    id: str                    # the GraphQL id (opaque)
    username: str
    email: str | None = None


@dataclass(frozen=True)
class CreatedUser:
    user: InstanceUser
    # None: the instance has password reset disabled (SSO only), or could not make the link.
    reset_url: str | None


@dataclass(frozen=True)
class SignIn:
    """Someone the instance saw active (``SiteUser.lastActiveAt``)."""
    username: str
    email: str | None
    last_active_at: datetime
    site_admin: bool


@dataclass(frozen=True)
class InstanceUsage:
    """The last 7 days of an instance, as its API answered at ``at``."""
    at: datetime
    active_users: int
    searches: int
    code_intel_actions: int
    signed_in: list[SignIn] = field(default_factory=list)   # oldest activity first; never the automation account


@dataclass(frozen=True)
class SiteHealth:
    version: str
    username: str | None
    site_admin: bool


class AccountExists(Exception):
    """``createUser`` refused: the username (``what="username"``) or email is taken."""

    def __init__(self, what: str):
        super().__init__(f"{what} already exists")
        self.what = what


class InstanceAdmin(Protocol):
    """Calls raise ``trialflow.errors.RetryLater`` (unreachable, 5xx, 429 with its Retry-After) or
    ``PermanentFailure`` (401: the token is refused; the token is not a site admin's)."""

    def site(self, host: str) -> SiteHealth: ...

    def create_user(self, host: str, username: str, email: str) -> CreatedUser: ...

    def user_by_email(self, host: str, email: str) -> InstanceUser | None: ...

    def randomize_password(self, host: str, user_id: str) -> str | None: ...

    def make_site_admin(self, host: str, user_id: str) -> None: ...

    def usage(self, host: str, since: datetime, now: datetime) -> InstanceUsage: ...


def usernames_for(email: str) -> Iterator[str]:
    """Usernames to try for ``email``, most natural first: ``bob`` for bob@acme-corp.com, then
    ``bob-acme-corp``, then ``bob-2`` … (the first may be someone else's on a shared instance)."""
    local, _, domain = email.lower().partition("@")
    base = _clean(local.split("+", 1)[0]) or "user"
    label = _clean(domain.split(".", 1)[0])
    yield base
    if label:
        yield _clean(f"{base}-{label}")
    for n in range(2, USERNAME_TRIES):
        yield f"{base[:USERNAME_MAX - 3]}-{n}"


def _clean(text: str) -> str:
    name = _RUNS.sub("-", _NOT_ALLOWED.sub("-", text))
    return name[:USERNAME_MAX].strip(".-")
