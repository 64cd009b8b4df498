"""The one writer: persists what a step decided (``domain.decisions.Decisions``) in the caller's
transaction, for the signup path, the Slack and GitHub handlers and the sweep alike.

A new trial is written by ``write_new_trial``: portable SQLAlchemy Core, or on PostgreSQL one
statement generated from the same tables and the same rows (``db.statements``), which the
signup's fast paths also run on their own connections.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from trialflow.db import statements, tables
from trialflow.db.sql import insert_ignore, session_driver
from trialflow.domain.decisions import Decisions, Effect
from trialflow.domain.trial import PlainTrial
from trialflow.services import aggregates


def effect_row(effect: Effect) -> dict[str, Any]:
    return dict(key=effect.key, kind=effect.kind, payload=effect.payload, trial_id=effect.trial_id,
                status="pending", attempts=0, next_attempt_at=effect.at, created_at=effect.at)


def trial_row(trial: PlainTrial) -> dict[str, Any]:
    row = {name: getattr(trial, name) for name in statements.TRIAL_COLUMNS}
    row["kept"] = bool(trial.kept)
    row["mql_points"] = trial.mql_points or 0
    return row


def history_rows(trial: PlainTrial) -> list[dict[str, Any]]:
    return [{"trial_id": trial.id, "from_state": h.from_state, "to_state": h.to_state, "trigger": h.trigger,
             "actor": h.actor, "at": h.at, "detail": h.detail} for h in trial.history]


def timer_rows(decisions: Decisions) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "kind": kind, "due_at": due_at, "created_at": created_at}
            for trial_id, kind, due_at, created_at in decisions.scheduled]


def write(session: Session, decisions: Decisions) -> list[int]:
    """Persist ``decisions`` in the session's transaction; returns the new effects' ids (an effect
    whose idempotency key is already in the outbox is not new)."""
    t = tables.timers
    by_kind: dict[str, list[str]] = {}
    for trial_id, kind in decisions.cancelled:
        by_kind.setdefault(kind, []).append(trial_id)
    for kind, trial_ids in by_kind.items():
        session.execute(delete(t).where(t.c.kind == kind, among(session, t.c.trial_id, trial_ids), t.c.fired_at.is_(None)))
    schedules = timer_rows(decisions)
    if schedules:
        upsert = _dialect(session).insert(t)
        session.execute(upsert.on_conflict_do_update(index_elements=[t.c.trial_id, t.c.kind], set_={
            "due_at": upsert.excluded.due_at, "fired_at": None}), schedules)
    for ready in decisions.ready_instances:
        values = {"admin_email": ready.admin_email, "status": "live", "trial_id": ready.trial_id, "claimed_at": ready.at}
        if not insert_ignore(session, tables.instances, {"host": ready.host, **values}):
            session.execute(update(tables.instances).where(tables.instances.c.host == ready.host).values(**values))
        if ready.claim_domain:
            insert_ignore(session, tables.domain_claims, {"domain": ready.domain, "instance_host": ready.host,
                                                          "trial_id": ready.trial_id, "claimed_at": ready.at})
    if decisions.released_hosts:
        hosts = decisions.released_hosts
        # Out of routing and polling now; its capacity is held until the cloud team confirms (teardown_confirmed_at).
        session.execute(update(tables.instances).where(among(session, tables.instances.c.host, hosts))
                        .values(status="terminated"))
        session.execute(delete(tables.domain_claims).where(among(session, tables.domain_claims.c.instance_host, hosts)))
    _instances_reported_back(session, decisions)
    if not decisions.effects:
        return []
    track_cloud_requests(session, decisions.effects)
    pk = tables.pruned_keys
    # An effect delivered long ago and pruned from the outbox keeps its key here: decided again, it is not new.
    pruned = set(session.scalars(select(pk.c.key).where(among(session, pk.c.key, [e.key for e in decisions.effects]))))
    return _insert_effects(session, [effect_row(e) for e in decisions.effects if e.key not in pruned])


def _instances_reported_back(session: Session, decisions: Decisions) -> None:
    """What the cloud team confirmed: a teardown, a domain change (the instance, its claim and its
    trial's activity lookups move to the new host)."""
    i = tables.instances
    for host, at in decisions.confirmed_teardowns:
        session.execute(update(i).where(i.c.host == host, i.c.teardown_confirmed_at.is_(None))
                        .values(teardown_confirmed_at=at))
    for moved in decisions.moved_instances:
        old = session.execute(select(i).where(i.c.host == moved.old_host)).first()
        values = {"status": old.status, "admin_email": old.admin_email, "trial_id": moved.trial_id,
                  "claimed_at": old.claimed_at, "admin_seen_at": old.admin_seen_at} if old is not None else \
            {"status": "live", "admin_email": None, "trial_id": moved.trial_id, "claimed_at": moved.at}
        if not insert_ignore(session, i, {"host": moved.new_host, **values}):
            session.execute(update(i).where(i.c.host == moved.new_host).values(**values))
        session.execute(update(i).where(i.c.host == moved.old_host).values(status="moved"))
        session.execute(update(tables.domain_claims).where(tables.domain_claims.c.instance_host == moved.old_host)
                        .values(instance_host=moved.new_host))


# Issues that ask the cloud team to do something trialflow then waits for (``services.cloud_loop``).
CLOUD_REQUEST_KINDS = frozenset({"termination", "trial-extend", "license-change", "domain-change", "pool-replenish"})


def track_cloud_requests(session: Session, effects: list[Effect]) -> None:
    rows = [{"key": e.key, "trial_id": e.trial_id, "kind": e.payload["issue_kind"], "ref": e.payload.get("ref") or "",
             "detail": e.payload.get("detail") or {}, "requested_at": e.at}
            for e in effects if e.kind == "github.issue" and e.payload.get("issue_kind") in CLOUD_REQUEST_KINDS]
    for row in rows:
        insert_ignore(session, tables.cloud_requests, row)


def write_new_trial(session: Session, trial: PlainTrial, decisions: Decisions) -> list[int] | None:
    """Insert a routed trial, its history and what its steps decided. None, with nothing
    written, when its email already has a trial (the insert's conflict is the per-email lock: a
    concurrent signup of the same email waits here for the first to commit)."""
    if session.get_bind().dialect.name == "postgresql":
        sql, params = new_trial_statement(trial, decisions)
        with session_driver(session).cursor() as cursor:
            inserted, effect_ids = cursor.execute(sql, params).fetchone()
        if inserted:
            track_cloud_requests(session, decisions.effects)  # a claim's pool-replenish request
        return list(effect_ids) if inserted else None
    if not insert_ignore(session, tables.trials, trial_row(trial), index_elements=["email"]):
        return None
    session.execute(insert(tables.trial_history), history_rows(trial))
    session.execute(insert(tables.trial_facts), aggregates.new_trial_facts(trial))
    session.execute(insert(tables.trial_counts), aggregates.new_trial_count(trial))
    return write(session, decisions)


def new_trial_statement(trial: PlainTrial, decisions: Decisions) -> tuple[str, list[Any]]:
    """PostgreSQL: ``write_new_trial`` as one statement and its parameters."""
    if decisions.cancelled or decisions.released_hosts or decisions.ready_instances or decisions.confirmed_teardowns \
            or decisions.moved_instances:
        # A new trial has no timers to cancel nor an instance of its own to release or register.
        raise ValueError("a new trial's steps decided writes that only an existing trial can have")
    timers = [{"kind": kind, "due_at": due_at, "created_at": created_at}
              for _trial_id, kind, due_at, created_at in decisions.scheduled]
    effects = [effect_row(e) for e in decisions.effects]
    sql = statements.new_trial_sql(len(trial.history), len(timers), len(effects))
    return sql, statements.new_trial_params(trial_row(trial), history_rows(trial), timers, effects,
                                            aggregates.new_trial_facts(trial), aggregates.new_trial_count(trial))


def _dialect(session: Session) -> ModuleType:
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


def among(session: Session, column: ColumnElement[Any], values: list[Any]) -> ColumnElement[bool]:
    """``column IN values``. On PostgreSQL as ``= ANY(array)``: one parameter instead of hundreds,
    so the statement stays short enough for psycopg to cache (parsing a 500-placeholder statement
    costs more than running it)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _insert_effects(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert effects in order (a repeated idempotency key is a no-op); returns the new ids."""
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        return list(session.execute(sqlite.insert(tables.outbox).on_conflict_do_nothing(index_elements=["key"])
                                    .returning(tables.outbox.c.id), rows).scalars())
    # psycopg's pipelined executemany: one short prepared statement, instead of the multi-row
    # VALUES SQLAlchemy would build (thousands of placeholders, re-parsed on every batch).
    from psycopg.types.json import Jsonb
    columns = statements.EFFECT_COLUMNS
    sql = (f"INSERT INTO outbox ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
           "ON CONFLICT (key) DO NOTHING RETURNING id")
    params = [tuple(Jsonb(row[c]) if c == "payload" else row[c] for c in columns) for row in rows]
    ids: list[int] = []
    with session_driver(session).cursor() as cursor:
        if len(params) == 1:
            found = cursor.execute(sql, params[0]).fetchone()
            return [found[0]] if found else []
        cursor.executemany(sql, params, returning=True)
        for _ in cursor.results():
            found = cursor.fetchone()
            if found is not None:
                ids.append(found[0])
    return ids
