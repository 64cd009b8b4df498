"""Routing a signup inside the request (the seed's "First step"), answered in the same call.

  public mailbox domain ......................... triage (case 3)
  a domain (or parent) with a live instance ...... case 1: redirect there
  pre-qualified account, fresh domain ............ case 2.1 / 2.2: claim a pool instance
      pool empty or instance cap reached ......... waiting_for_capacity
  anything else .................................. triage (case 3)
"""
from __future__ import annotations

import json
import re
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import String, bindparam, delete, func, insert, select, text, update

from trialflow.db import tables
from trialflow.db.sql import insert_ignore, take_lock
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import Email, normalize_email
from trialflow.domain.trial import (CASE_EXISTING, CASE_MANUAL, CASE_NAMED, CASE_UNNAMED, SYSTEM, PlainTrial,
                                    Trial, new_trial_id)
from trialflow.errors import InvalidSignup
from trialflow.scoring import attach_marketing_events
from trialflow.services import outbox, policies
from trialflow.services.directory import Person, next_in_rotation
from trialflow.services.uow import UnitOfWork, wake_safely

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
    def of(cls, trial: Trial, created: bool) -> "SignupResult":
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
    return value or None


_RESULT_COLUMNS = (tables.trials.c.id, tables.trials.c.case, tables.trials.c.state, tables.trials.c.domain,
                   tables.trials.c.email, tables.trials.c.instance_host)


def _result(trial_id, case, state, domain, email, instance_host) -> SignupResult:
    return SignupResult(trial_id, case, state, domain, email,
                        f"https://{instance_host}" if instance_host else None, created=False)


def find_by_email(uow: UnitOfWork, address: str) -> SignupResult | None:
    row = uow.session.execute(select(*_RESULT_COLUMNS).where(tables.trials.c.email == address)).first()
    return _result(*row) if row is not None else None


@dataclass(frozen=True)
class _Claim:
    domain: str
    instance_host: str | None
    trial_id: str | None
    owner: tuple[str | None, str | None, str | None] | None  # (account_name, ae, ce) of the trial that claimed it


@dataclass(frozen=True)
class _Account:
    domain: str
    account_name: str
    prequalified: bool
    named_account: bool
    named_sdr: str | None
    owner_ae: str | None
    owner_ce: str | None


@dataclass
class _Known:
    """What the database knows about a signup's email and domain, read in one round trip."""
    existing: SignupResult | None = None
    claims: dict[str, _Claim] = field(default_factory=dict)
    accounts: dict[str, _Account] = field(default_factory=dict)
    has_marketing_events: bool = False

    def first(self, found: dict, candidates: list[str]):
        for domain in candidates:  # most specific first
            if domain in found:
                return found[domain]
        return None


# The signup's reads in one statement: its trial (a repeat), the claims and accounts of its domain
# and parents, and whether marketing actions wait for it. Plain SQL (valid on PostgreSQL and
# SQLite): one round trip instead of four, and no statement to build and key on each request.
_LOOKUP = text("""
SELECT 'trial' AS kind, t.id AS k, t."case" AS a, t.state AS b, t.domain AS c, t.instance_host AS d,
       NULL AS e, NULL AS f, NULL AS g
  FROM trials t WHERE t.email = :email
UNION ALL
SELECT 'claim', c.domain, c.instance_host, c.trial_id, o.account_name, o.ae, o.ce, NULL, NULL
  FROM domain_claims c LEFT JOIN trials o ON o.id = c.trial_id WHERE c.domain IN :candidates
UNION ALL
SELECT 'account', a.domain, a.account_name, CASE WHEN a.prequalified THEN 'y' ELSE 'n' END,
       CASE WHEN a.named_account THEN 'y' ELSE 'n' END, a.named_sdr, a.owner_ae, a.owner_ce, NULL
  FROM accounts a WHERE a.domain IN :candidates
UNION ALL
SELECT 'events', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
 WHERE EXISTS (SELECT 1 FROM marketing_events m WHERE m.email = :email AND m.trial_id IS NULL)
""").bindparams(bindparam("candidates", expanding=True, type_=String()))


# The same on PostgreSQL, for the driver (no SQLAlchemy work per statement), with the candidates
# in a fixed number of slots, the unused ones repeating a candidate: the text never changes, so
# psycopg prepares it once per connection, and PostgreSQL's generic plan then costs what a custom
# one does, so it is kept instead of planning the four selects on every signup (~0.1 ms of the
# server's CPU; with ``= ANY(array)``, or NULLs in the spare slots, the custom plans look cheaper
# and PostgreSQL keeps re-planning).
#
# The claim's owner is read through a LATERAL subquery with LIMIT 1, which PostgreSQL runs per
# claim as a probe of the trials' primary key whatever the statistics say. As a plain join, the
# plan kept for the connection could be a hash join over a sequential scan of trials, chosen
# while the table was small (a fresh database, not analyzed yet) and kept as it grew: every
# colleague's signup then read all of trials.
_CANDIDATE_SLOTS = 4
_lookup_statements: dict[int, str] = {}
_PLAIN_OWNER_JOIN = "FROM domain_claims c LEFT JOIN trials o ON o.id = c.trial_id"
_PROBED_OWNER_JOIN = ("FROM domain_claims c LEFT JOIN LATERAL "
                      "(SELECT o.account_name, o.ae, o.ce FROM trials o WHERE o.id = c.trial_id LIMIT 1) o ON true")


def _lookup_statement(slots: int) -> str:
    sql = _lookup_statements.get(slots)
    if sql is None:
        placeholders = "(" + ", ".join(f"%(c{i})s" for i in range(slots)) + ")"
        sql = _lookup_statements[slots] = (str(_LOOKUP.text).replace(_PLAIN_OWNER_JOIN, _PROBED_OWNER_JOIN)
                                           .replace(":candidates", placeholders).replace(":email", "%(email)s"))
    return sql


def _lookup_params(address: str, candidates: list[str]) -> tuple[str, dict[str, Any]]:
    slots = max(1, -(-len(candidates) // _CANDIDATE_SLOTS)) * _CANDIDATE_SLOTS
    spare = candidates[0] if candidates else ""  # no claim or account has an empty domain
    params: dict[str, Any] = {f"c{i}": candidates[i] if i < len(candidates) else spare for i in range(slots)}
    params["email"] = address
    return _lookup_statement(slots), params


def _look_up(uow: UnitOfWork, email: Email, driver=None) -> _Known:
    """``driver``: the psycopg connection under the unit of work's, on PostgreSQL."""
    # A public mailbox domain matches nothing, so its claims and accounts are not even read.
    candidates = [] if email.is_public else email.domain_candidates()
    if driver is not None:
        with driver.cursor() as cursor:
            rows = cursor.execute(*_lookup_params(email.address, candidates)).fetchall()
    else:
        rows = uow.session.connection().execute(_LOOKUP, {"email": email.address, "candidates": candidates}).all()
    return _known(email, rows)


def _known(email: Email, rows) -> _Known:
    known = _Known()
    for kind, k, a, b, c, d, e, f, g in rows:
        if kind == "trial":
            known.existing = _result(k, a, b, c, email.address, d)
        elif kind == "claim":
            known.claims[k] = _Claim(k, a, b, (c, d, e) if b else None)
        elif kind == "account":
            known.accounts[k] = _Account(k, a, b == "y", c == "y", d, e, f)
        else:
            known.has_marketing_events = True
    return known


def _is_postgresql(uow: UnitOfWork) -> bool:
    return uow.session.get_bind().dialect.name == "postgresql"


def _driver(uow: UnitOfWork):
    """The psycopg connection under the unit of work's (begun) connection."""
    return uow.session.connection().connection.driver_connection


def submit_signup(uow_factory, settings, clock, data: SignupInput) -> SignupResult:
    """Route one signup and commit it with its effects, in one transaction.

    This is the hottest path of the service, so it counts round trips: one read (``_LOOKUP``),
    one write of the trial with its history, the effects, the commit. The trial is routed as a
    plain object and written at the end. Inserting it with ON CONFLICT (email) DO NOTHING is the
    per-email lock: a second request for the same email waits for the first to commit, inserts
    nothing, rolls back whatever it routed and answers with the first one's trial.

    On PostgreSQL most signups (triage, and joining a domain's live instance) write nothing but
    their own rows, so they take two round trips and no transaction of several statements: the
    read, then one statement that writes the trial, its history, effects and timers, committed
    by itself (autocommit; synchronous_commit unchanged, so a 201 is as durable as before).
    Only a signup that claims an instance, or takes marketing events waiting for it, runs the
    transaction below.
    """
    signup = _cleaned(data)
    email = signup.email
    with uow_factory() as uow:
        if not _is_postgresql(uow):
            known = _look_up(uow, email)
            if known.existing is not None:
                return known.existing
            return _submit_in_transaction(uow, settings, clock, signup, known)
        # A pooled connection of its own in autocommit, not the session's: checking one out through
        # the session (with its isolation level set, then reset) cost ~0.1 ms of CPU per signup.
        raw = uow.session.get_bind().raw_connection()
        try:
            driver = raw.driver_connection
            driver.autocommit = True
            try:
                known = _look_up(uow, email, driver)
                if known.existing is not None:
                    return known.existing
                if not _writes_more_than_its_rows(email, known):
                    return _submit_in_one_statement(uow, driver, settings, clock, signup, known)
            finally:
                driver.autocommit = False  # idle (autocommit), so this is allowed and sends nothing
        finally:
            raw.close()
    with uow_factory() as uow:  # PostgreSQL, a claim: read again, inside the transaction
        known = _look_up(uow, email, _driver(uow))
        if known.existing is not None:
            return known.existing
        return _submit_in_transaction(uow, settings, clock, signup, known)


@dataclass(frozen=True)
class _Cleaned:
    """The signup's fields, normalised and checked."""
    email: Email
    name: str | None
    company: str | None
    source: str | None

    def new_trial(self, cls: type[PlainTrial], at: datetime) -> PlainTrial:
        return cls(new_trial_id(), self.email.address, self.email.domain, at, name=self.name, company=self.company,
                   source=self.source)


def _cleaned(data: SignupInput) -> _Cleaned:
    """InvalidSignup names the field that is not acceptable."""
    return _Cleaned(normalize_email(data.email), _clean(data.name, "name"), _clean(data.company, "company"),
                    _clean(data.source, "source", 100))


class WriteInDoubt(Exception):
    """The connection failed while the signup's one statement was on its way: it may have
    committed. Routing the signup again finds ``trial_id`` if it did."""

    def __init__(self, trial_id: str):
        super().__init__(f"the write of trial {trial_id} may or may not have committed")
        self.trial_id = trial_id


class _NeedsTheThread(Exception):
    """Routing on the event loop reached for the database through the session: the signup is
    routed again by ``submit_signup`` (nothing was written)."""


class _NoSession:
    def __getattr__(self, name):
        raise _NeedsTheThread(name)


class _LoopWork:
    """What routing and policies use of a unit of work, for a signup routed on the event loop:
    their writes are batched into the one statement, and there is no session to block on."""

    def __init__(self) -> None:
        self.session = _NoSession()
        self.batched_writes = None
        self.new_effect_ids: list[int] = []


_PEOPLE = ("SELECT email, name, role, slack_user_id, github_login, active FROM staff "
           "WHERE email IN (%s, %s, %s)")
_BY_EMAIL = ("SELECT " + ", ".join(f'"{c.name}"' for c in _RESULT_COLUMNS) + " FROM trials WHERE email = %s")


async def submit_signup_on_loop(connections, settings, clock, data: SignupInput,
                                wake: Callable[[list[int]], None] | None = None) -> SignupResult | None:
    """``submit_signup``'s PostgreSQL fast path, on the event loop: the same read, routing and
    one autocommitted statement, through ``connections`` (``db.engine.LoopConnections``), so
    no thread is involved. The people the trial's alert names are read before the policies run
    (a second read, only for a trial that has any: joining a live instance).

    Returns None, having written nothing, for a signup that must go through ``submit_signup``:
    one that claims an instance or takes marketing events waiting for it, or whose policies
    read anything else from the database. ``wake``: called with the new effects' ids once they
    are committed, as a unit of work's commit does.
    """
    signup = _cleaned(data)
    email = signup.email
    candidates = [] if email.is_public else email.domain_candidates()
    conn = await connections.acquire()
    try:
        cursor = conn.cursor()
        await cursor.execute(*_lookup_params(email.address, candidates))
        known = _known(email, await cursor.fetchall())
        if known.existing is not None:
            return known.existing
        if _writes_more_than_its_rows(email, known):
            return None
        work = _LoopWork()
        trial = signup.new_trial(PlainTrial, clock.now())
        try:
            _route(work, settings, trial, email, known)
            ctx = policies.Context(work, settings)
            people = [p for p in (trial.sdr, trial.ae, trial.ce) if p]
            if people:
                await cursor.execute(_PEOPLE, (people + people[:1] * 3)[:3])
                found = {row[0]: Person(*row) for row in await cursor.fetchall()}
                for person in people:
                    ctx.people.remember(person, found.get(person))
            sql, params = _one_statement(work, settings, trial, ctx)
        except _NeedsTheThread:
            return None
        try:
            await cursor.execute(sql, params)
            inserted, effect_ids = await cursor.fetchone()
        except Exception as exc:
            raise WriteInDoubt(trial.id) from exc
        if not inserted:  # the same email's other signup committed first: answer with its trial
            await cursor.execute(_BY_EMAIL, (email.address,))
            row = await cursor.fetchone()
            if row is None:
                raise _vanished(email)
            return _result(*row)
    finally:
        connections.release(conn)
    if effect_ids and wake is not None:
        wake_safely(wake, list(effect_ids))
    return SignupResult.of(trial, created=True)


def _writes_more_than_its_rows(email: Email, known: _Known) -> bool:
    """Whether routing this signup writes rows other than the trial's own (``_route``'s claim of a
    pool instance, or marketing events attached to the trial)."""
    if known.has_marketing_events:
        return True
    if email.is_public:
        return False
    candidates = email.domain_candidates()
    claim = known.first(known.claims, candidates)
    if claim is not None and claim.instance_host:
        return False
    account = known.first(known.accounts, candidates)
    return account is not None and account.prequalified


def _submit_in_transaction(uow: UnitOfWork, settings, clock, signup: _Cleaned, known: _Known) -> SignupResult:
    email = signup.email
    now = clock.now()
    trial = signup.new_trial(Trial, now)
    _route(uow, settings, trial, email, known)
    if known.has_marketing_events:
        # Marketing actions seen before the signup count now, so the triage alert shows the score.
        attach_marketing_events(uow.session, trial)
    if not _insert_trial(uow, trial):
        uow.rollback()
        return _the_other_signup(uow, email)
    _apply_policies(uow, trial, settings)
    uow.commit()
    return SignupResult.of(trial, created=True)


def _the_other_signup(uow: UnitOfWork, email: Email) -> SignupResult:
    existing = find_by_email(uow, email.address)
    if existing is None:
        raise _vanished(email)
    return existing


def _vanished(email: Email) -> RuntimeError:
    # The other request's trial vanished again: not a race we can answer.
    return RuntimeError(f"signup of {email.address} conflicted with a trial that no longer exists")


def _submit_in_one_statement(uow: UnitOfWork, driver, settings, clock, signup: _Cleaned,
                             known: _Known) -> SignupResult:
    """PostgreSQL, ``driver`` in autocommit: route (no writes), build the effects and timers, write
    it all at once. What the policies read (staff, for a trial joining an instance) comes through
    the unit of work's session, which commits nothing else."""
    email = signup.email
    trial = signup.new_trial(PlainTrial, clock.now())  # written with plain SQL: no ORM instrumentation needed
    _route(uow, settings, trial, email, known)
    sql, params = _one_statement(uow, settings, trial)
    with driver.cursor() as cursor:
        inserted, effect_ids = cursor.execute(sql, params).fetchone()
    if not inserted:
        return _the_other_signup(uow, email)
    uow.new_effect_ids.extend(effect_ids)
    uow.commit()  # nothing left to commit: wakes the delivery for the new effects
    return SignupResult.of(trial, created=True)


def _one_statement(uow, settings, trial: PlainTrial, ctx=None) -> tuple[str, list[Any]]:
    """The routed trial's policies, run with their writes batched, and the one statement (with
    its parameters) that writes the trial, its history, effects and timers (autocommit: it
    commits). The statement answers (trial inserted: 0 or 1, the new effects' ids)."""
    from trialflow.services.sweep import BatchedWrites  # sweep imports this module
    uow.batched_writes = batch = BatchedWrites()
    try:
        policies.apply(uow, trial, settings, ctx)
    finally:
        uow.batched_writes = None
    if batch.released_hosts or any(op is None for op in batch.timers.values()):
        # A new trial has no timers to cancel nor an instance of its own to release; if policies
        # ever ask for that here, this path no longer fits them.
        raise RuntimeError("signup policies asked for writes the one-statement signup does not make")
    schedules = [(kind, op[0], op[1]) for (_trial_id, kind), op in batch.timers.items()]
    return _signup_statement(len(batch.effects), len(schedules)), _signup_params(trial, batch.effects, schedules)


_EFFECT_COLUMNS = ("key", "kind", "payload", "trial_id", "status", "attempts", "next_attempt_at", "created_at")
_signup_statements: dict[tuple[int, int], str] = {}


def _signup_statement(effects: int, timers: int) -> str:
    """The trial, its history entry, ``effects`` outbox rows and ``timers`` timers in one
    statement; nothing but the trial's conflict when its email already has one (every other
    insert selects from the trial's). Built once per shape."""
    sql = _signup_statements.get((effects, timers))
    if sql is not None:
        return sql
    parts = [
        "WITH new_trial AS (INSERT INTO trials ({columns}) VALUES ({values}) ON CONFLICT (email) DO NOTHING RETURNING id)".format(
            columns=", ".join(f'"{name}"' for name in _TRIAL_COLUMNS), values=", ".join(["%s"] * len(_TRIAL_COLUMNS))),
        ', history AS (INSERT INTO trial_history (trial_id, from_state, to_state, "trigger", actor, at, detail) '
        "SELECT new_trial.id, %s, %s, %s, %s, %s::timestamptz, %s::jsonb FROM new_trial)",
    ]
    if timers:
        rows = ", ".join(["(%s, %s::timestamptz, %s::timestamptz)"] * timers)
        parts.append(f", new_timers AS (INSERT INTO timers (trial_id, kind, due_at, created_at) "
                     f"SELECT new_trial.id, v.kind, v.due_at, v.created_at FROM new_trial, (VALUES {rows}) AS v(kind, due_at, created_at) "
                     "ON CONFLICT (trial_id, kind) DO UPDATE SET due_at = excluded.due_at, fired_at = NULL)")
    if effects:
        rows = ", ".join(["(%s::int, %s, %s, %s::jsonb, %s, %s, %s::int, %s::timestamptz, %s::timestamptz)"] * effects)
        parts.append(f", new_effects AS (INSERT INTO outbox ({', '.join(_EFFECT_COLUMNS)}) "
                     f"SELECT {', '.join('v.' + c for c in _EFFECT_COLUMNS)} FROM new_trial, "
                     f"(VALUES {rows}) AS v(n, {', '.join(_EFFECT_COLUMNS)}) ORDER BY v.n "
                     "ON CONFLICT (key) DO NOTHING RETURNING id)")
        parts.append(" SELECT (SELECT count(*) FROM new_trial), ARRAY(SELECT id FROM new_effects ORDER BY id)")
    else:
        parts.append(" SELECT (SELECT count(*) FROM new_trial), ARRAY[]::bigint[]")
    sql = _signup_statements[(effects, timers)] = "".join(parts)
    return sql


def _signup_params(trial: Trial, effects: list[dict], schedules: list[tuple]) -> list[Any]:
    from psycopg.types.json import Jsonb
    (entry,) = trial.history
    values = _trial_values(trial)
    params: list[Any] = [values[name] for name in _TRIAL_COLUMNS]
    params += [entry.from_state, entry.to_state, entry.trigger, entry.actor, entry.at, Jsonb(entry.detail)]
    for kind, due_at, created_at in schedules:
        params += [kind, due_at, created_at]
    for n, effect in enumerate(effects):
        params.append(n)
        params += [Jsonb(effect[c]) if c == "payload" else effect[c] for c in _EFFECT_COLUMNS]
    return params


def _apply_policies(uow: UnitOfWork, trial: Trial, settings) -> None:
    """The signup's effects and timers, written together at the end (as the sweep does): one
    statement for its effects instead of one per effect. Nothing in the signup reads them back."""
    from trialflow.services.sweep import BatchedWrites  # sweep imports this module
    uow.batched_writes = BatchedWrites()
    try:
        policies.apply(uow, trial, settings)
        uow.batched_writes.write(uow)
    finally:
        uow.batched_writes = None


_TRIAL_COLUMNS = [column.name for column in tables.trials.columns]
# PostgreSQL: the trial and its one history entry in one statement; nothing is written to the
# history when the email already has a trial (the CTE returns no row).
_INSERT_TRIAL_AND_HISTORY_PG = text(
    "WITH new_trial AS (INSERT INTO trials ({columns}) VALUES ({values}) ON CONFLICT (email) DO NOTHING RETURNING id) "
    'INSERT INTO trial_history (trial_id, from_state, to_state, "trigger", actor, at, detail) '
    "SELECT new_trial.id, :h_from_state, :h_to_state, :h_trigger, :h_actor, :h_at, CAST(:h_detail AS JSONB) "
    "FROM new_trial RETURNING trial_id".format(
        columns=", ".join(f'"{name}"' for name in _TRIAL_COLUMNS),
        values=", ".join(f":t_{name}" for name in _TRIAL_COLUMNS)))


def _trial_values(trial: Trial) -> dict[str, Any]:
    values = {name: getattr(trial, name) for name in _TRIAL_COLUMNS}
    values["kept"] = bool(trial.kept)
    values["mql_points"] = trial.mql_points or 0
    return values


def _insert_trial(uow: UnitOfWork, trial: Trial) -> bool:
    """Write the routed trial and its history; False when the email already has a trial."""
    values = _trial_values(trial)
    if uow.session.get_bind().dialect.name == "postgresql" and len(trial.history) == 1:
        (entry,) = trial.history
        params = {f"t_{name}": value for name, value in values.items()}
        params.update(h_from_state=entry.from_state, h_to_state=entry.to_state, h_trigger=entry.trigger,
                      h_actor=entry.actor, h_at=entry.at, h_detail=json.dumps(entry.detail))
        return uow.session.connection().execute(_INSERT_TRIAL_AND_HISTORY_PG, params).first() is not None
    if not insert_ignore(uow.session, tables.trials, values, index_elements=["email"]):
        return False
    uow.session.execute(insert(tables.trial_history), [
        {"trial_id": trial.id, "from_state": h.from_state, "to_state": h.to_state, "trigger": h.trigger,
         "actor": h.actor, "at": h.at, "detail": h.detail}
        for h in trial.history
    ])
    return True


def _route(uow: UnitOfWork, settings, trial: Trial, email: Email, known: _Known) -> None:
    now = trial.created_at
    if email.is_public:
        trial.case = CASE_MANUAL
        trial.fire("send_to_triage", actor=SYSTEM, at=now, reason="public email domain")
        return
    candidates = email.domain_candidates()
    claim = known.first(known.claims, candidates)
    if claim is not None and claim.instance_host:
        _join_existing(trial, claim.domain, claim.instance_host, claim.owner, known.accounts.get(claim.domain))
        return
    account = known.first(known.accounts, candidates)
    if account is None or not account.prequalified:
        trial.case = CASE_MANUAL
        if account is not None:
            trial.account_name = account.account_name
            trial.domain = account.domain
        trial.fire("send_to_triage", actor=SYSTEM, at=now)
        return
    trial.domain = account.domain
    trial.account_name = account.account_name
    trial.case = CASE_NAMED if account.named_account else CASE_UNNAMED
    if account.named_account:
        trial.sdr = account.named_sdr
        trial.ae = account.owner_ae
        trial.ce = account.owner_ce
    claim_for_domain(uow, settings, trial, now, assign=_assign_by_rotation)


def _join_existing(trial: Trial, domain: str, host: str, owner, account) -> None:
    """Case 1: the domain's people are the ones who own its instance (its first trial's, or the account's)."""
    owner_name, owner_ae, owner_ce = owner or (None, None, None)
    trial.case = CASE_EXISTING
    trial.domain = domain
    trial.instance_host = host
    trial.account_name = owner_name or (account.account_name if account else None)
    trial.ae = owner_ae or (account.owner_ae if account else None)
    trial.ce = owner_ce or (account.owner_ce if account else None)
    trial.fire("route_to_existing", actor=SYSTEM, at=trial.created_at, instance=host)


def _join_claimed(uow, trial: Trial, domain: str, host: str, owner_trial_id: str | None) -> None:
    """Case 1 found only at claim time (another signup won the domain a moment ago): read its people."""
    t, a = tables.trials.c, tables.accounts.c
    owner = uow.session.execute(select(t.account_name, t.ae, t.ce).where(t.id == owner_trial_id)).first() \
        if owner_trial_id else None
    account = uow.session.execute(select(a.account_name, a.owner_ae, a.owner_ce).where(a.domain == domain)).first()
    _join_existing(trial, domain, host, tuple(owner) if owner else None, account)


def _assign_by_rotation(uow, trial: Trial) -> None:
    """AE and CE from the round robin, for whoever the account does not name."""
    if not trial.ae:
        trial.ae = next_in_rotation(uow.session, "ae")
    if not trial.ce:
        trial.ce = next_in_rotation(uow.session, "ce")


def has_capacity(uow: UnitOfWork, settings) -> bool:
    holding = uow.session.scalar(
        select(func.count()).select_from(tables.trials).where(tables.trials.c.state.in_(lc.HOLDING_INSTANCE)))
    return holding < settings.instance_cap


def claim_for_domain(uow: UnitOfWork, settings, trial: Trial, now,
                     assign: Callable[[UnitOfWork, Trial], None] | None = None) -> None:
    """Give ``trial`` its domain's instance: the one already claimed, or a fresh pool instance.

    Inserting the domain's claim row is the per-domain lock: on PostgreSQL a concurrent insert of
    the same domain waits until this transaction ends, then finds the row and joins (case 1).
    ``assign`` runs only once this trial has won the domain, so the signups that lose a race for
    it (and join the winner's instance) never use up a turn of the round robin.
    Locks, always in this order: the domain's claim, the round robin, the capacity lock.
    """
    if not insert_ignore(uow.session, tables.domain_claims,
                         {"domain": trial.domain, "instance_host": None, "trial_id": trial.id, "claimed_at": now}):
        claim = uow.session.execute(select(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain)).first()
        if claim is not None and claim.instance_host:
            _join_claimed(uow, trial, claim.domain, claim.instance_host, claim.trial_id)
            return
        _wait(trial, now, "another signup of this domain is waiting for capacity")
        return
    if assign is not None:
        assign(uow, trial)
    take_lock(uow.session, CAPACITY_LOCK)
    host = None
    if has_capacity(uow, settings):
        host = uow.session.scalar(
            select(tables.instances.c.host).where(tables.instances.c.status == "pool")
            .order_by(tables.instances.c.host).limit(1).with_for_update(skip_locked=True))
    if host is None:
        uow.session.execute(delete(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain))
        _wait(trial, now, "instance cap reached" if not has_capacity(uow, settings) else "pool empty")
        return
    uow.session.execute(update(tables.instances).where(tables.instances.c.host == host).values(
        status="live", admin_email=trial.email, trial_id=trial.id, claimed_at=now))
    uow.session.execute(update(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain)
                        .values(instance_host=host))
    trial.instance_host = host
    trial.fire("claim_pool_instance", actor=SYSTEM, at=now, instance=host)
    _check_pool_low_water(uow, settings, now)


def _wait(trial: Trial, now, reason: str) -> None:
    if trial.state == lc.WAITING_FOR_CAPACITY:
        return  # already in the queue: stays there, nothing new to record
    trial.fire("wait_for_capacity", actor=SYSTEM, at=now, reason=reason)


def _check_pool_low_water(uow: UnitOfWork, settings, now) -> None:
    free = uow.session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool"))
    if free >= settings.pool_low_water:
        return
    # One request per low-water episode, not one per claim: the flag is cleared when config
    # load brings new pool instances.
    if not insert_ignore(uow.session, tables.kv, {"key": "pool_replenish_open", "value": now.isoformat()}):
        return
    episode = now.strftime("%Y%m%dT%H%M%S")
    outbox.enqueue(uow, key=f"pool-replenish:{episode}", kind="github.issue", now=now, payload={
        "issue_kind": "pool-replenish", "ref": f"pool-replenish:{episode}",
        "title": f"Pre-provision more cloud trial instances ({free} left in the pool)",
        "body": f"The pool of pre-provisioned trial instances is at {free}, below its low-water mark of "
                f"{settings.pool_low_water}. Please pre-provision more and add them to instances.csv with status `pool`.\n\n"
                f"<!-- trialflow:pool-replenish:{episode} -->",
        "labels": ["cloud-trial", "pool-replenish"],
    })


def keep_failed_signup(uow_factory, settings, clock, body: bytes, error: BaseException) -> None:
    """The failsafe: routing failed, so keep the raw signup and queue an email to support.

    ``uow_factory`` is the same one the signup used (``Runtime.uow``), so the support email is
    woken for delivery as soon as it is committed, like any other effect.
    """
    now = clock.now()
    text = body.decode("utf-8", "replace")
    with uow_factory() as uow:
        row_id = uow.session.execute(tables.failed_signups.insert().values(
            received_at=now, body=text, error=f"{type(error).__name__}: {error}").returning(tables.failed_signups.c.id)).scalar_one()
        try:
            submitted = json.loads(text)
        except ValueError:
            submitted = {"raw": text[:2000]}
        outbox.enqueue(uow, key=f"failed-signup:{row_id}", kind="email", now=now, payload={
            "template": "support_failsafe", "to": settings.support_email, "cc": [], "from": None,
            "context": {"signup": json.dumps(submitted, indent=2, default=str)[:4000], "error": type(error).__name__,
                        "failed_signup_id": row_id},
        })
        uow.commit()
    log.error("signup failed and was kept for support (failed_signups.id=%s): %s", row_id, type(error).__name__)
