"""Who is who: staff from staff.csv, looked up by email, Slack user id or GitHub login."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain.normalize import domain_candidates
from trialflow.services.slack_blocks import escape


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    role: str
    slack_user_id: str | None
    github_login: str | None
    active: bool
    away_until: date | None = None     # away through this local date (inclusive)
    backup: str | None = None          # who acts for them while they are away
    weight: float = 1.0
    max_open_trials: int | None = None

    def is_away(self, today: date) -> bool:
        return self.away_until is not None and today <= self.away_until


class Directory:
    """Staff lookups, cached by email. Without a session it knows only what it was told
    (``remember``): the signup's event-loop path reads the people it needs beforehand."""

    def __init__(self, session: Session | None):
        self._session = session
        self._by_email: dict[str, Person | None] = {}
        self._emails_on: dict[str, bool] = {}

    def _one(self, where: ColumnElement[bool]) -> Person | None:
        if self._session is None:
            return None
        row = self._session.execute(select(tables.staff).where(where)).first()
        return Person(**row._mapping) if row else None

    def by_email(self, email: str | None) -> Person | None:
        if not email:
            return None
        if email not in self._by_email:
            self._by_email[email] = self._one(tables.staff.c.email == email)
        return self._by_email[email]

    def remember(self, email: str, person: Person | None) -> None:
        """What the caller already read about ``email`` (None: not in staff), so asking for it
        again costs no query."""
        self._by_email[email] = person

    def prospect_emails_on(self, domain: str) -> bool:
        """Whether trialflow may email a prospect at ``domain`` (accounts.csv ``prospect_emails``, the most
        specific account of the domain or a parent; a domain in no account: yes)."""
        if self._session is None:
            return True
        if domain not in self._emails_on:
            a = tables.accounts.c
            rows = dict(self._session.execute(select(a.domain, a.prospect_emails)
                                              .where(a.domain.in_(domain_candidates(domain)))).all())
            found = [rows[d] for d in domain_candidates(domain) if d in rows]
            self._emails_on[domain] = bool(found[0]) if found else True
        return self._emails_on[domain]

    def by_slack_id(self, user_id: str) -> Person | None:
        return self._one(tables.staff.c.slack_user_id == user_id)

    def by_github_login(self, login: str) -> Person | None:
        return self._one(tables.staff.c.github_login == login)

    def in_role(self, role: str) -> list[Person]:
        """Active staff of ``role``, by email (a reminder names them all)."""
        if self._session is None:
            return []
        rows = self._session.execute(select(tables.staff).where(tables.staff.c.role == role,
                                                                tables.staff.c.active.is_(True))
                                     .order_by(tables.staff.c.email))
        return [Person(**row._mapping) for row in rows]

    def acting_for(self, email: str | None, today: date, fallback: str | None = None) -> str | None:
        """Who acts for ``email`` today: themselves, or while they are away (or no longer active)
        their backup if that backup is active and here, else ``fallback`` (a CE's: the trial's AE,
        the seed's "CE (backup AE)")."""
        person = self.by_email(email)
        if person is None or (person.active and not person.is_away(today)):
            return email or fallback
        backup = self.by_email(person.backup)
        if backup is not None and backup.active and not backup.is_away(today):
            return backup.email
        return fallback or email

    def mention(self, email: str | None) -> str:
        """How a person appears in Slack text: <@U123> when we know their Slack id."""
        if not email:
            return "_unassigned_"
        person = self.by_email(email)
        if person and person.slack_user_id:
            return f"<@{person.slack_user_id}>"
        return escape(person.name if person else email)


def set_away(session: Session, email: str, until: date | None) -> None:
    """``/trial away`` and ``/trial back``: kept across ``config load`` unless staff.csv sets it."""
    session.execute(update(tables.staff).where(tables.staff.c.email == email).values(away_until=until))
