"""Small portable SQL helpers (SQLite and PostgreSQL)."""
from __future__ import annotations

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from trialflow.db import tables


def insert_ignore(session: Session, table: Table, values: dict, index_elements: list[str] | None = None) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING. True when this call inserted the row.

    On PostgreSQL a conflicting insert waits for the other transaction holding the same key to
    finish: that wait is the lock that serialises concurrent claims of one key.
    """
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(**values)
    stmt = ins.on_conflict_do_nothing(index_elements=index_elements)
    # RETURNING, not rowcount: psycopg 3 under SQLAlchemy 2.1 reports rowcount -1 here.
    first_key = list(table.primary_key.columns)[0]
    return session.execute(stmt.returning(first_key)).first() is not None


def take_lock(session: Session, name: str) -> None:
    """Serialise a critical section across processes until this transaction ends.

    PostgreSQL: row lock on ``locks.name``. SQLite: every write transaction is BEGIN IMMEDIATE,
    so the database lock already serialises writers; the SELECT is harmless there.
    """
    insert_ignore(session, tables.locks, {"name": name})
    session.execute(select(tables.locks.c.name).where(tables.locks.c.name == name).with_for_update())
