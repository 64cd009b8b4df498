"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from trialflow.db.mapping import start_mappers

if TYPE_CHECKING:
    import asyncio

    import psycopg

RECYCLE_SECONDS = 300.0          # a PostgreSQL connection older than this is closed, not reused
CONNECT_TIMEOUT_SECONDS = 10


def normalize_url(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs) -> Engine:
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a
            # read lock, they queue on busy_timeout instead. This is what makes a claim atomic.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if "poolclass" not in kwargs:
        # Kept open: the API's 8 signup threads may each hold two (a signup joining an instance
        # reads staff through its session beside its own autocommit connection), and an overflow
        # connection is closed on return: a new PostgreSQL backend (fork, cold caches) per burst.
        # At most 30 per process here, plus, on PostgreSQL, the API's up to 8 signup connections
        # on its event loop (``LoopConnections``).
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 10)
    # Recycle instead of pinging on every checkout: a ping is one more round trip per transaction,
    # and the delivery path runs two transactions per effect.
    kwargs.setdefault("pool_recycle", RECYCLE_SECONDS)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    from trialflow.services import aggregates  # the aggregates are kept in every session's transaction

    start_mappers()
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    aggregates.install(factory)
    return factory


class LoopConnections:
    """PostgreSQL connections for code that runs on the event loop itself: psycopg
    ``AsyncConnection``s in autocommit, at most ``size`` in use at once, made on first use and
    kept open.

    The signup's fast path runs on the loop with these instead of hopping to a thread with a
    pooled synchronous connection: the hop, and threads taking turns at the GIL, cost more CPU
    than the signup's own statements. They are made from the engine's URL and dialect, so they
    reach the same database with the same settings. One instance serves one event loop: on
    another loop (or in a forked child) it starts afresh. A connection that comes back closed or
    not idle is closed, never reused; one that comes back broken closes the idle ones too, as
    SQLAlchemy's pool invalidates itself on a disconnect.
    """

    def __init__(self, engine: Engine, size: int = 8, recycle_seconds: float = RECYCLE_SECONDS):
        _args, params = engine.dialect.create_connect_args(engine.url)
        # A database that does not answer must not hold a signup for psycopg's default 130 s:
        # the thread path and the failsafe still have to run after this fails.
        self._params = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **params, "autocommit": True}
        self.size = size
        self.recycle_seconds = recycle_seconds
        self._born: dict[int, float] = {}   # id(connection) -> when it was made
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None

    def _here(self) -> asyncio.Semaphore:
        import asyncio
        import os
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._pid == os.getpid() and self._slots is not None:
            return self._slots
        if self._pid == os.getpid():  # the old loop is gone: close its connections without it
            for conn in self._idle:
                conn.pgconn.finish()
        self._idle = []  # (in a forked child, the parent's connections are the parent's)
        self._slots = asyncio.Semaphore(self.size)
        self._loop, self._pid = loop, os.getpid()
        return self._slots

    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        slots = self._here()
        await slots.acquire()
        try:
            if self._idle:
                return self._idle.pop()
            import psycopg
            conn = await psycopg.AsyncConnection.connect(**self._params)
            self._born[id(conn)] = time.monotonic()
            return conn
        except BaseException:
            slots.release()
            raise

    def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        from psycopg.pq import TransactionStatus
        try:
            if conn.broken:
                # The server went away (a restart, a failover): the idle ones are as old as this one.
                for other in [conn, *self._idle]:
                    self._finish(other)
                self._idle = []
            elif conn.closed or conn.info.transaction_status != TransactionStatus.IDLE \
                    or time.monotonic() - self._born.get(id(conn), 0.0) > self.recycle_seconds:
                self._finish(conn)  # (recycled as the engine's pool recycles its connections)
            else:
                self._idle.append(conn)
        finally:
            assert self._slots is not None  # acquire() made it before handing out a connection
            self._slots.release()

    def _finish(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._born.pop(id(conn), None)
        conn.pgconn.finish()

    async def close(self) -> None:
        """Close the idle connections (at shutdown, on the loop that made them)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            self._born.pop(id(conn), None)
            await conn.close()
