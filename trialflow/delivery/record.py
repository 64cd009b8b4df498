"""Recording what each delivery call did, on the outbox row, while the batch's lease still holds it.

A result is committed before the batch's next call starts, so a worker killed mid-batch leaves at
most the call in flight unrecorded. That costs a round trip per effect: one connection is held
for the batch and, on PostgreSQL, each result is one autocommitted UPDATE whose commit does not
wait for the disk.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, func, insert, literal, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from trialflow.db import tables
from trialflow.metrics import LATENCY_BUCKETS, latency_bucket

log = logging.getLogger("trialflow.delivery")

WRITE_ATTEMPTS = 3


@dataclass
class Outcome:
    effect_id: int
    outcome: str                      # delivered | retry | failed | released (| superseded, once written)
    values: dict[str, Any]            # the columns to write
    undo_attempt: bool = False        # the attempt certainly did not reach the provider
    payload_refused: bool = False     # parked because the provider refused what we built


@functools.cache
def _result_statement(columns: tuple[str, ...], undo_attempt: bool, dialect: str = "") -> Any:
    """The UPDATE that records one outcome of this shape, on the row only while the lease holds it
    (built once per shape: a worker runs it for every effect it delivers). A delivery also counts
    in ``delivery_stats`` (for /metrics): on PostgreSQL in the same statement, which commits by
    itself; elsewhere the caller's transaction adds the row (``_count_delivered``)."""
    o = tables.outbox
    values: dict[str, Any] = {c: bindparam(f"b_{c}") for c in columns}
    if undo_attempt:
        values["attempts"] = o.c.attempts - 1
    stmt = (update(o).where(o.c.id == bindparam("b_id"), o.c.status == "delivering",
                            o.c.next_attempt_at == bindparam("b_lease_end", type_=o.c.next_attempt_at.type))
            .values(values))
    if "delivered_at" not in columns:
        return stmt.returning(o.c.id)
    if dialect != "postgresql":
        return stmt.returning(o.c.id, o.c.kind, o.c.created_at, o.c.delivered_at)
    done = stmt.returning(o.c.id, o.c.kind, o.c.created_at, o.c.delivered_at).cte("done")
    seconds = func.extract("epoch", done.c.delivered_at - done.c.created_at)
    bucket = case(*[(seconds <= bound, i) for i, bound in enumerate(LATENCY_BUCKETS)], else_=len(LATENCY_BUCKETS))
    counted = insert(tables.delivery_stats).from_select(
        ["kind", "bucket", "n", "seconds"], select(done.c.kind, bucket, literal(1), seconds)).cte("counted")
    return select(done.c.id).add_cte(counted)


def _count_delivered(conn: Connection, rows: Sequence[Any]) -> list[int]:
    """SQLite: the delivered rows' count in ``delivery_stats``, in the caller's transaction."""
    if rows and len(rows[0]) > 1:
        stats = [{"kind": kind, "bucket": latency_bucket((delivered_at - created_at).total_seconds()), "n": 1,
                  "seconds": (delivered_at - created_at).total_seconds()} for _id, kind, created_at, delivered_at in rows]
        conn.execute(insert(tables.delivery_stats), stats)
    return [row[0] for row in rows]


class ResultWriter:
    """Writes a batch's results on one connection held for the batch, each result one autocommitted
    statement: committed before the next call starts, at the cost of one round trip."""

    def __init__(self, engine: Engine, lease_end: datetime):
        self._engine = engine
        self._lease_end = lease_end
        self._conn: Connection | None = None

    def write(self, outcomes: list[Outcome]) -> set[int]:
        """Write the outcomes on the rows this lease still holds; returns the ids written (the
        others passed to another worker)."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                conn = self._connection()
                ours: set[int] = set()
                # PostgreSQL: each statement commits by itself. SQLite: a (BEGIN IMMEDIATE) transaction.
                with contextlib.nullcontext() if conn.dialect.name == "postgresql" else conn.begin():
                    for outcome in outcomes:
                        params = {f"b_{k}": v for k, v in outcome.values.items()}
                        statement = _result_statement(tuple(sorted(outcome.values)), outcome.undo_attempt,
                                                      conn.dialect.name)
                        rows = conn.execute(statement, {"b_id": outcome.effect_id,
                                                        "b_lease_end": self._lease_end, **params}).all()
                        ours.update(_count_delivered(conn, rows) if conn.dialect.name != "postgresql"
                                    else [row[0] for row in rows])
                return ours
            except OperationalError:
                # A database blip must not leave a delivered effect to be sent again (email cannot
                # be asked whether it already arrived): a fresh connection, and again.
                self.close()
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("writing delivery results failed (attempt %s); trying again", attempt, exc_info=True)
                time.sleep(0.5 * attempt)
        return set()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                # Not waiting for the flush to disk: a worker that dies loses nothing once the server
                # has the commit. A database crash may lose the last few results; those effects are
                # then retried (and the provider asked first, where it can be).
                conn.exec_driver_sql("SET synchronous_commit TO OFF")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("RESET synchronous_commit")  # the pool's next user commits durably
        except DBAPIError:
            conn.invalidate()   # not back into the pool with the setting still on
        finally:
            conn.close()
