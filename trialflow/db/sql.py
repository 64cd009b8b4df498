"""Small portable SQL helpers (SQLite and PostgreSQL)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

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


def driver_of(connection: PoolProxiedConnection) -> Any:
    """The driver's own connection (psycopg's) under a pooled one, for the statements SQLAlchemy
    would only slow down. Any: which driver it is depends on the database URL."""
    driver = connection.driver_connection
    if driver is None:  # the pool invalidated it: there is nothing to run a statement on
        raise RuntimeError("the pooled database connection was invalidated")
    return driver


def session_driver(session: Session) -> Any:
    """The driver's connection under the session's transaction."""
    return driver_of(session.connection().connection)


def session_engine(session: Session) -> Engine:
    """The engine the session is bound to (trialflow binds sessions to engines, never to connections)."""
    bind = session.get_bind()
    if not isinstance(bind, Engine):
        raise TypeError(f"the session is bound to {bind!r}, not to an engine")
    return bind
