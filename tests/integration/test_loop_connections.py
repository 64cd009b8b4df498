"""The API's event-loop connections to PostgreSQL: reused while young, recycled when old."""
from __future__ import annotations

import asyncio

import pytest

from trialflow.db.engine import LoopConnections, make_engine

pytestmark = pytest.mark.postgres


def backends_of_two_signups(pg_url: str, **kwargs) -> tuple[int, int]:
    engine = make_engine(pg_url)
    connections = LoopConnections(engine, **kwargs)

    async def two_in_a_row():
        pids = []
        for _ in range(2):
            conn = await connections.acquire()
            pids.append(conn.info.backend_pid)
            connections.release(conn)
        await connections.close()
        return tuple(pids)

    try:
        return asyncio.run(two_in_a_row())
    finally:
        engine.dispose()


def test_a_connection_is_reused_while_it_is_young(pg_url):
    first, second = backends_of_two_signups(pg_url)
    assert first == second


def test_a_connection_older_than_the_recycle_age_is_closed_not_reused(pg_url):
    first, second = backends_of_two_signups(pg_url, recycle_seconds=0)
    assert first != second
