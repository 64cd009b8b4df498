"""The signup's read on PostgreSQL keeps one generic plan per connection, made at its sixth
execution and kept until the tables are analyzed. Made on a fresh database, that plan must still
probe trials by key: a plan that scans trials costs more with every signup until an ANALYZE."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql as pgsql

from trialflow.services import signups

pytestmark = pytest.mark.postgres


def generic_plan(url: str, email: str, candidates: list[str]) -> str:
    sql, params = signups._lookup_params(email, candidates)
    names = list(params)
    for n, name in enumerate(names, 1):
        sql = sql.replace(f"%({name})s", f"${n}")
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE lookup({', '.join(['text'] * len(names))}) AS {sql}")
        values = pgsql.SQL(", ").join(pgsql.Literal(params[name]) for name in names)
        rows = conn.execute(pgsql.SQL("EXPLAIN EXECUTE lookup({})").format(values)).fetchall()
        return "\n".join(row[0] for row in rows)


def test_the_signups_read_never_scans_trials_even_on_a_database_never_analyzed(pg_url):
    plan = generic_plan(pg_url, "dana@acme-corp.com", ["acme-corp.com"])
    assert "Seq Scan on trials" not in plan, plan
    assert "Hash" not in plan, plan
