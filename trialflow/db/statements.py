"""SQL generated from the table definitions, for the writes that are too hot for SQLAlchemy's
per-statement work: the new trial's one PostgreSQL statement.

The statement is derived, not hand-written: its column lists and casts come from
``trialflow.db.tables`` and its rows from the same row builders the portable writer uses
(``services.writer``), so a column added to a table reaches both. A test writes every routing
case through both and compares the rows.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import JSON

from trialflow.db import tables

_PG = postgresql.psycopg.dialect()


def pg_cast(column: Column) -> str:
    """The column's PostgreSQL type for a cast, without a length: ``'x'::varchar(3)`` would
    silently truncate where the INSERT itself refuses a value that is too long."""
    return re.sub(r"\(\d+\)", "", column.type.compile(dialect=_PG)).lower()


def _is_json(column: Column) -> bool:
    return isinstance(column.type.dialect_impl(_PG), JSON) or pg_cast(column) == "jsonb"


# Worked out once: compiling a column's type for every value cost ~0.25 ms of CPU per signup.
_JSON_COLUMNS: dict[str, frozenset[str]] = {
    table.name: frozenset(c.name for c in table.columns if _is_json(c))
    for table in (tables.trials, tables.trial_history, tables.timers, tables.outbox)
}


def _quoted(name: str) -> str:
    return f'"{name}"'


def _value_columns(table: Table, skip: tuple[str, ...] = ()) -> list[Column]:
    """The columns a new row carries: all but the generated id and ``skip``."""
    return [c for c in table.columns if c.name != "id" and c.name not in skip]


TRIAL_COLUMNS = [c.name for c in tables.trials.columns]
# The history and timers rows take the trial's id from the inserted trial, so nothing is written
# for an email that already has a trial.
HISTORY_COLUMNS = [c.name for c in _value_columns(tables.trial_history, skip=("trial_id",))]
TIMER_COLUMNS = ["kind", "due_at", "created_at"]
EFFECT_COLUMNS = ["key", "kind", "payload", "trial_id", "status", "attempts", "next_attempt_at", "created_at"]
# The trial's aggregates (``services.aggregates``), written by the same statement.
FACT_COLUMNS = [c.name for c in tables.trial_facts.columns]
COUNT_COLUMNS = ["state", "pql_grade", "n"]


def _row(table: Table, names: list[str]) -> str:
    return "(" + ", ".join(f"%s::{pg_cast(table.c[n])}" for n in names) + ")"


@lru_cache(maxsize=64)
def new_trial_sql(histories: int, timers: int, effects: int) -> str:
    """The trial, its history, ``timers`` timers and ``effects`` outbox rows in one statement,
    which answers (trials inserted: 0 or 1, the new effects' ids). Nothing but the trial's
    conflict when its email already has one: every other insert selects from the trial's."""
    t = tables
    parts = [
        f"WITH new_trial AS (INSERT INTO trials ({', '.join(map(_quoted, TRIAL_COLUMNS))}) "
        f"VALUES {_row(t.trials, TRIAL_COLUMNS)} ON CONFLICT (email) DO NOTHING RETURNING id)",
        f", new_history AS (INSERT INTO trial_history (trial_id, {', '.join(map(_quoted, HISTORY_COLUMNS))}) "
        f"SELECT new_trial.id, {', '.join('v.' + _quoted(n) for n in HISTORY_COLUMNS)} FROM new_trial, "
        f"(VALUES {', '.join([_row(t.trial_history, HISTORY_COLUMNS)] * histories)}) "
        f"AS v({', '.join(map(_quoted, HISTORY_COLUMNS))}))",
        f", new_facts AS (INSERT INTO trial_facts ({', '.join(map(_quoted, FACT_COLUMNS))}) "
        f"SELECT {', '.join('v.' + _quoted(n) for n in FACT_COLUMNS)} FROM new_trial, "
        f"(VALUES {_row(t.trial_facts, FACT_COLUMNS)}) AS v({', '.join(map(_quoted, FACT_COLUMNS))}))",
        f", new_count AS (INSERT INTO trial_counts ({', '.join(COUNT_COLUMNS)}) "
        f"SELECT {', '.join('v.' + n for n in COUNT_COLUMNS)} FROM new_trial, "
        f"(VALUES {_row(t.trial_counts, COUNT_COLUMNS)}) AS v({', '.join(COUNT_COLUMNS)}))",
    ]
    if timers:
        parts.append(
            f", new_timers AS (INSERT INTO timers (trial_id, {', '.join(TIMER_COLUMNS)}) "
            f"SELECT new_trial.id, {', '.join('v.' + n for n in TIMER_COLUMNS)} FROM new_trial, "
            f"(VALUES {', '.join([_row(t.timers, TIMER_COLUMNS)] * timers)}) AS v({', '.join(TIMER_COLUMNS)}) "
            "ON CONFLICT (trial_id, kind) DO UPDATE SET due_at = excluded.due_at, fired_at = NULL)")
    if effects:
        numbered = "(%s::int, " + _row(t.outbox, EFFECT_COLUMNS)[1:]
        parts.append(
            f", new_effects AS (INSERT INTO outbox ({', '.join(map(_quoted, EFFECT_COLUMNS))}) "
            f"SELECT {', '.join('v.' + _quoted(n) for n in EFFECT_COLUMNS)} FROM new_trial, "
            f"(VALUES {', '.join([numbered] * effects)}) AS v(n, {', '.join(map(_quoted, EFFECT_COLUMNS))}) "
            "ORDER BY v.n ON CONFLICT (key) DO NOTHING RETURNING id)")
        parts.append(" SELECT (SELECT count(*) FROM new_trial), ARRAY(SELECT id FROM new_effects ORDER BY id)")
    else:
        parts.append(" SELECT (SELECT count(*) FROM new_trial), ARRAY[]::bigint[]")
    return "".join(parts)


def new_trial_params(trial: dict[str, Any], histories: list[dict[str, Any]], timers: list[dict[str, Any]],
                     effects: list[dict[str, Any]], facts: dict[str, Any], count: dict[str, Any]) -> list[Any]:
    """The parameters of ``new_trial_sql``, from the rows of the portable writer."""
    from psycopg.types.json import Jsonb  # only on PostgreSQL: SQLite installs need no psycopg

    def values(table: Table, names: list[str], row: dict[str, Any]) -> list[Any]:
        json_columns = _JSON_COLUMNS[table.name]
        return [Jsonb(row[n]) if n in json_columns else row[n] for n in names]

    params = values(tables.trials, TRIAL_COLUMNS, trial)
    for entry in histories:
        params += values(tables.trial_history, HISTORY_COLUMNS, entry)
    params += [facts[n] for n in FACT_COLUMNS] + [count[n] for n in COUNT_COLUMNS]
    for timer in timers:
        params += values(tables.timers, TIMER_COLUMNS, timer)
    for n, effect in enumerate(effects):
        params.append(n)
        params += values(tables.outbox, EFFECT_COLUMNS, effect)
    return params
