"""A signup, answered in the same request: its fields checked, what the database knows about its
email and domain read in one round trip, routed (``services.routing``, ``services.capacity``),
its steps' effects decided (``services.policies``) and written with the trial in one
transaction (``services.writer``).

On PostgreSQL a signup that claims nothing (triage, or joining a domain's live instance: most of
them) is written by one autocommitted statement generated from the tables (``db.statements``),
from a thread or straight from the event loop; one that claims a pool instance or takes
marketing events waiting for it runs in a transaction. The rows are the same either way.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, select, text
from sqlalchemy.orm import Session

from trialflow.clock import Clock
from trialflow.db import tables
from trialflow.db.engine import LoopConnections
from trialflow.db.sql import driver_of, session_driver, session_engine
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.normalize import Email, normalize_email
from trialflow.domain.trial import PlainTrial, new_trial_id
from trialflow.errors import InvalidSignup
from trialflow.scoring import attach_marketing_events
from trialflow.services import capacity, outbox, policies, rotation, writer
from trialflow.services.directory import Directory, Person
from trialflow.services.routing import Account, Claim, Instance, Known, needs_claim, route
from trialflow.services.uow import UnitOfWork, wake_safely
from trialflow.settings import Settings

log = logging.getLogger("trialflow.signups")

MESSAGES = {
    lc.JOINING_EXISTING: "{domain} already has a Sourcegraph instance: we are taking you there. "
                         "Its admin may need to add you; we have let your account team know.",
    lc.JOINED: "Welcome back: taking you to {domain}'s Sourcegraph instance.",
    lc.ACTIVE: "Your Sourcegraph instance is ready. Check {email} for a link to set your password.",
    lc.EXTENDED: "Welcome back: taking you to your Sourcegraph instance.",
    lc.CONVERTED: "Welcome back: taking you to your Sourcegraph instance.",
    lc.WAITING_FOR_CAPACITY: "Thanks! We are reviewing your request; we will email you as soon as your instance is ready.",
    lc.TRIAGE: "Thanks! We are reviewing your request and will get back to you by email shortly.",
}
CAPACITY_LOCK = "capacity"
# States in which the person has an instance to go to (a repeat signup is sent there too).
REDIRECTED = frozenset({lc.JOINING_EXISTING, lc.JOINED, lc.ACTIVE, lc.EXTENDED, lc.CONVERTED})
# Name, company and source end up in Slack messages and GitHub issues: one line of plain text,
# nothing Slack or Markdown could read as a mention, a link or a hidden comment.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x1f\x7f<>]")
# Characters that change how the text around them reads without being seen: bidirectional
# embeddings, overrides and isolates (a name that displays reversed), and Unicode's own line and
# paragraph separators (a second line that no control-character check sees).
_INVISIBLE_LAYOUT = re.compile("[\u202a-\u202e\u2066-\u2069\u2028\u2029\x85]")


@dataclass
class SignupInput:
    email: Any
    name: str | None = None
    company: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class SignupResult:
    """What the signup page is told; a snapshot, so it outlives the transaction."""
    trial_id: str
    case: str | None
    state: str
    domain: str
    email: str
    instance_url: str | None
    created: bool

    @classmethod
    def of(cls, trial: PlainTrial, created: bool) -> SignupResult:
        return cls(trial.id, trial.case, trial.state, trial.domain, trial.email, trial.instance_url, created)

    @property
    def message(self) -> str:
        template = MESSAGES.get(self.state, "Thanks! We have your request.")
        return template.format(domain=self.domain, email=self.email)

    @property
    def redirect_url(self) -> str | None:
        if self.state in REDIRECTED and self.instance_url:
            return f"{self.instance_url}/sign-in"
        return None


def _clean(value: Any, field: str, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidSignup(f"{field} must be text.", field)
    value = value.strip()
    if len(value) > limit:
        raise InvalidSignup(f"{field} is too long ({limit} characters at most).", field)
    if _FORBIDDEN_IN_TEXT.search(value):
        raise InvalidSignup(f"{field} must be one line of plain text, without < or >.", field)
    if _INVISIBLE_LAYOUT.search(value):
        raise InvalidSignup(f"{field} must be one line of plain text, without direction-changing "
                            "or line-separator characters.", field)
    return value or None


@dataclass(frozen=True)
class _Cleaned:
    """The signup's fields, normalised and checked."""
    email: Email
    name: str | None
    company: str | None
    source: str | None

    def new_trial(self, at: datetime) -> PlainTrial:
        return PlainTrial(new_trial_id(), self.email.address, self.email.domain, at, name=self.name,
                          company=self.company, source=self.source)


def _cleaned(data: SignupInput) -> _Cleaned:
    """InvalidSignup names the field that is not acceptable."""
    return _Cleaned(normalize_email(data.email), _clean(data.name, "name"), _clean(data.company, "company"),
                    _clean(data.source, "source", 100))


def _result(trial_id: str, case: str | None, state: str, domain: str, email: str,
            instance_host: str | None) -> SignupResult:
    return SignupResult(trial_id, case, state, domain, email,
                        f"https://{instance_host}" if instance_host else None, created=False)


# --- the read ------------------------------------------------------------------------------

# The signup's reads in one statement: its trial (a repeat), the claims and accounts of its domain
# and parents, and whether marketing actions wait for it: one round trip instead of four. Written
# once; ``_lookup_sql`` makes the SQLite and the PostgreSQL text from it.
#
# On PostgreSQL the claim's owner (and its instance) is read through a LATERAL subquery with LIMIT 1, which runs
# per claim as a probe of the trials' primary key whatever the statistics say. As a plain join,
# the plan kept for the connection could be a hash join over a sequential scan of trials, chosen
# while the table was small (a fresh database, not analyzed yet) and kept as it grew.
_LOOKUP_TEMPLATE = """
SELECT 'trial' AS kind, t.id AS k, t."case" AS a, t.state AS b, t.domain AS c, t.instance_host AS d,
       NULL AS e, NULL AS f, NULL AS g
  FROM trials t WHERE t.email = {email}
UNION ALL
SELECT 'claim', c.domain, c.instance_host, c.trial_id, o.account_name, o.ae, o.ce, o.state,
       CASE WHEN c.trial_id IS NOT NULL AND i.admin_seen_at IS NULL THEN 'p:' ELSE 'c:' END
         || COALESCE(i.admin_email, '')
  FROM domain_claims c {owner_join} WHERE c.domain IN {candidates}
UNION ALL
SELECT 'account', a.domain, a.account_name, CASE WHEN a.prequalified THEN 'y' ELSE 'n' END,
       CASE WHEN a.named_account THEN 'y' ELSE 'n' END, a.named_sdr, a.owner_ae, a.owner_ce,
       CASE WHEN a.auto_add_colleagues THEN 'y' ELSE 'n' END
  FROM accounts a WHERE a.domain IN {candidates}
UNION ALL
SELECT 'events', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
 WHERE EXISTS (SELECT 1 FROM marketing_events m WHERE m.email = {email} AND m.trial_id IS NULL)
"""
_JOIN = "LEFT JOIN trials o ON o.id = c.trial_id LEFT JOIN instances i ON i.host = c.instance_host"
_PROBE = ("LEFT JOIN LATERAL (SELECT o.account_name, o.ae, o.ce, o.state FROM trials o WHERE o.id = c.trial_id "
          "LIMIT 1) o ON true LEFT JOIN LATERAL (SELECT i.admin_email, i.admin_seen_at FROM instances i "
          "WHERE i.host = c.instance_host LIMIT 1) i ON true")


def _lookup_sql(dialect: str, slots: int = 0) -> str:
    if dialect == "postgresql":
        candidates = "(" + ", ".join(f"%(c{i})s" for i in range(slots)) + ")"
        return _LOOKUP_TEMPLATE.format(email="%(email)s", owner_join=_PROBE, candidates=candidates)
    return _LOOKUP_TEMPLATE.format(email=":email", owner_join=_JOIN, candidates=":candidates")


_LOOKUP = text(_lookup_sql("sqlite")).bindparams(bindparam("candidates", expanding=True, type_=String()))
# PostgreSQL: the candidates in a fixed number of slots, the unused ones repeating a candidate:
# the text never changes, so psycopg prepares it once per connection and PostgreSQL's generic
# plan costs what a custom one does (with ``= ANY(array)``, or NULLs in the spare slots, the
# custom plans look cheaper and PostgreSQL keeps re-planning).
_CANDIDATE_SLOTS = 4
_lookup_statements: dict[int, str] = {}


def _lookup_params(address: str, candidates: list[str]) -> tuple[str, dict[str, Any]]:
    slots = max(1, -(-len(candidates) // _CANDIDATE_SLOTS)) * _CANDIDATE_SLOTS
    sql = _lookup_statements.get(slots)
    if sql is None:
        sql = _lookup_statements[slots] = _lookup_sql("postgresql", slots)
    spare = candidates[0] if candidates else ""  # no claim or account has an empty domain
    params: dict[str, Any] = {f"c{i}": candidates[i] if i < len(candidates) else spare for i in range(slots)}
    params["email"] = address
    return sql, params


def _candidates(email: Email) -> list[str]:
    # A public mailbox domain matches nothing, so its claims and accounts are not even read.
    return [] if email.is_public else email.domain_candidates()


def _look_up(session: Session, email: Email) -> Known:
    if session.get_bind().dialect.name == "postgresql":
        with session_driver(session).cursor() as cursor:
            return _known(email, cursor.execute(*_lookup_params(email.address, _candidates(email))).fetchall())
    rows = session.connection().execute(_LOOKUP, {"email": email.address, "candidates": _candidates(email)}).all()
    return _known(email, rows)


def _known(email: Email, rows: Iterable[Sequence[Any]]) -> Known:
    known = Known()
    for kind, k, a, b, c, d, e, f, g in rows:
        if kind == "trial":
            known.existing = _result(k, a, b, c, email.address, d)
        elif kind == "claim":
            provisional, _, admin = (g or "c:").partition(":")
            known.claims[k] = Claim(k, a, b, (c, d, e) if b else None, Instance(f, admin or None, provisional == "p"))
        elif kind == "account":
            known.accounts[k] = Account(k, a, b == "y", c == "y", d, e, f, g != "n")
        else:
            known.has_marketing_events = True
    return known


def _claims_nothing(email: Email, known: Known) -> bool:
    """Routing writes nothing but the trial's own rows: no pool claim, no marketing events."""
    return not known.has_marketing_events and not needs_claim(email, known)


def find_by_email(session: Session, address: str) -> SignupResult | None:
    t = tables.trials.c
    row = session.execute(select(t.id, t.case, t.state, t.domain, t.email, t.instance_host)
                          .where(t.email == address)).first()
    return _result(*row) if row is not None else None


# --- the write -----------------------------------------------------------------------------

def submit_signup(uow_factory: Callable[[], UnitOfWork], settings: Settings, clock: Clock, data: SignupInput) -> SignupResult:
    """Route one signup and commit it with its effects, in one transaction.

    Inserting the trial with ON CONFLICT (email) DO NOTHING is the per-email lock: a second
    request for the same email waits for the first to commit, inserts nothing, rolls back
    whatever it routed and answers with the first one's trial.
    """
    signup = _cleaned(data)
    email = signup.email
    with uow_factory() as uow:
        if uow.session.get_bind().dialect.name == "postgresql":
            answered = _submit_in_autocommit(uow, settings, clock, signup)
            if answered is not None:
                return answered
        known = _look_up(uow.session, email)  # again, inside the transaction
        if known.existing is not None:
            return known.existing  # type: ignore[return-value]
        return _submit_in_transaction(uow, settings, clock, signup, known)


def _submit_in_autocommit(uow: UnitOfWork, settings: Settings, clock: Clock, signup: _Cleaned) -> SignupResult | None:
    """PostgreSQL: the read and, for a signup that claims nothing, its one statement, on a pooled
    connection of its own in autocommit (checking one out through the session, with its isolation
    level set and reset, cost ~0.1 ms of CPU per signup). None: the signup needs the transaction."""
    raw = session_engine(uow.session).raw_connection()
    try:
        driver = driver_of(raw)
        driver.autocommit = True
        try:
            with driver.cursor() as cursor:
                known = _known(signup.email, cursor.execute(*_lookup_params(signup.email.address,
                                                                             _candidates(signup.email))).fetchall())
                if known.existing is not None:
                    return known.existing  # type: ignore[return-value]
                if not _claims_nothing(signup.email, known):
                    return None
                trial = signup.new_trial(clock.now())
                route(trial, signup.email, known)
                decisions = policies.decide(trial, policies.Context(Directory(uow.session), settings))
                inserted, effect_ids = cursor.execute(*writer.new_trial_statement(trial, decisions)).fetchone()
        finally:
            driver.autocommit = False  # idle (autocommit), so this is allowed and sends nothing
    finally:
        raw.close()
    if not inserted:
        return _the_other_signup(uow.session, signup.email)
    uow.new_effect_ids.extend(effect_ids)
    uow.commit()  # nothing left to commit: wakes the delivery for the new effects
    return SignupResult.of(trial, created=True)


def _submit_in_transaction(uow: UnitOfWork, settings: Settings, clock: Clock, signup: _Cleaned, known: Known) -> SignupResult:
    session = uow.session
    trial = signup.new_trial(clock.now())
    decisions = Decisions()
    account = route(trial, signup.email, known)
    if account is not None:
        decisions.extend(capacity.claim_for_domain(session, settings, trial, trial.created_at,
                                                   assign=lambda t: _assign_by_rotation(session, settings, t)))
    if known.has_marketing_events:
        # Marketing actions seen before the signup count now, so the triage alert shows the score.
        attach_marketing_events(session, trial)
    decisions.extend(policies.decide(trial, policies.Context(Directory(session), settings)))
    effect_ids = writer.write_new_trial(session, trial, decisions)
    if effect_ids is None:
        uow.rollback()
        return _the_other_signup(session, signup.email)
    uow.new_effect_ids.extend(effect_ids)
    uow.commit()
    return SignupResult.of(trial, created=True)


def _assign_by_rotation(session: Session, settings: Settings, trial: PlainTrial) -> None:
    """AE and CE from the round robin, for whoever the account does not name."""
    rotation.assign(session, settings, trial, trial.created_at, tuple(r for r in ("ae", "ce") if not getattr(trial, r)))


def _the_other_signup(session: Session, email: Email) -> SignupResult:
    existing = find_by_email(session, email.address)
    if existing is None:
        # The other request's trial vanished again: not a race we can answer.
        raise RuntimeError(f"signup of {email.address} conflicted with a trial that no longer exists")
    return existing


# --- on the event loop ---------------------------------------------------------------------

class WriteInDoubt(Exception):
    """The connection failed while the signup's one statement was on its way: it may have
    committed. Routing the signup again finds ``trial_id`` if it did."""

    def __init__(self, trial_id: str):
        super().__init__(f"the write of trial {trial_id} may or may not have committed")
        self.trial_id = trial_id


_PEOPLE = "SELECT email, name, role, slack_user_id, github_login, active FROM staff WHERE email IN (%s, %s, %s)"
_BY_EMAIL = 'SELECT id, "case", state, domain, email, instance_host FROM trials WHERE email = %s'


async def submit_signup_on_loop(connections: LoopConnections, settings: Settings, clock: Clock, data: SignupInput,
                                wake: Callable[[list[int]], None] | None = None) -> SignupResult | None:
    """``submit_signup``'s PostgreSQL fast path, on the event loop: the same read, routing,
    decisions and one statement, through ``connections`` (``db.engine.LoopConnections``), so no
    thread is involved. The people the trial's alert names are read before the policies decide.

    Returns None, having written nothing, for a signup that needs the transaction (one that
    claims an instance or takes marketing events waiting for it). ``wake``: called with the new
    effects' ids once they are committed, as a unit of work's commit does.
    """
    signup = _cleaned(data)
    email = signup.email
    conn = await connections.acquire()
    try:
        cursor = conn.cursor()
        await cursor.execute(*_lookup_params(email.address, _candidates(email)))
        known = _known(email, await cursor.fetchall())
        if known.existing is not None:
            return known.existing  # type: ignore[return-value]
        if not _claims_nothing(email, known):
            return None
        trial = signup.new_trial(clock.now())
        route(trial, email, known)
        people = Directory(None)
        named = [p for p in (trial.sdr, trial.ae, trial.ce) if p]
        if named:
            await cursor.execute(_PEOPLE, (named + named[:1] * 3)[:3])
            found = {row[0]: Person(*row) for row in await cursor.fetchall()}
            for person in named:
                people.remember(person, found.get(person))
        decisions = policies.decide(trial, policies.Context(people, settings))
        try:
            await cursor.execute(*writer.new_trial_statement(trial, decisions))
            written = await cursor.fetchone()
            if written is None:  # the statement always answers one row; without it, nothing is known
                raise RuntimeError("the signup statement answered no row")
            inserted, effect_ids = written
        except Exception as exc:
            raise WriteInDoubt(trial.id) from exc
        if not inserted:  # the same email's other signup committed first: answer with its trial
            await cursor.execute(_BY_EMAIL, (email.address,))
            row = await cursor.fetchone()
            if row is None:
                raise RuntimeError(f"signup of {email.address} conflicted with a trial that no longer exists")
            return _result(*row)
    finally:
        connections.release(conn)
    if effect_ids and wake is not None:
        wake_safely(wake, list(effect_ids))
    return SignupResult.of(trial, created=True)


# --- the failsafe --------------------------------------------------------------------------

def keep_failed_signup(uow_factory: Callable[[], UnitOfWork], settings: Settings, clock: Clock, body: bytes,
                       error: BaseException, key: str | None = None) -> None:
    """The failsafe: routing failed, so keep the raw signup and queue an email to support.

    ``uow_factory`` is the same one the signup used (``Runtime.uow``), so the support email is
    woken for delivery as soon as it is committed, like any other effect. ``key`` names a signup
    that may be handed over more than once (a spooled one, whose replay may be interrupted after
    this commits): it is then kept, and support emailed, only the first time.
    """
    now = clock.now()
    raw = body.decode("utf-8", "replace")
    with uow_factory() as uow:
        if key is not None and uow.session.execute(
                select(tables.outbox.c.id).where(tables.outbox.c.key == f"failed-signup:{key}")).first():
            return
        row_id = uow.session.execute(tables.failed_signups.insert().values(
            received_at=now, body=raw, error=f"{type(error).__name__}: {error}").returning(tables.failed_signups.c.id)).scalar_one()
        try:
            submitted = json.loads(raw)
        except ValueError:
            submitted = {"raw": raw[:2000]}
        outbox.enqueue(uow, key=f"failed-signup:{key or row_id}", kind="email", now=now, payload={
            "template": "support_failsafe", "to": settings.support_email, "cc": [], "from": None,
            "context": {"signup": json.dumps(submitted, indent=2, default=str)[:4000], "error": type(error).__name__,
                        "failed_signup_id": row_id},
        })
        uow.commit()
    log.error("signup failed and was kept for support (failed_signups.id=%s): %s", row_id, type(error).__name__)
