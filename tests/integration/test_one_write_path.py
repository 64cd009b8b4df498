"""One way to create a trial: every routing case written on SQLite (SQLAlchemy Core), on
PostgreSQL from a thread (the generated one-statement write, or the transaction for a claim) and
on PostgreSQL from the event loop leaves exactly the same rows."""
from __future__ import annotations

import asyncio
import json
import re
import shutil

import pytest
from sqlalchemy import select

from tests.conftest import make_settings, truncate_all
from trialflow.clock import ManualClock
from trialflow.db import tables
from trialflow.db.engine import LoopConnections
from trialflow.runtime import Runtime
from trialflow.scoring import record_marketing_event
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup, submit_signup_on_loop

pytestmark = pytest.mark.postgres

# (email, instance cap): every case of the seed's first step, and the queue.
SIGNUPS = [
    ("dana@gmail.com", 10),          # public mailbox: triage
    ("hank@hooli.com", 10),          # unknown domain: triage
    ("ida@initech.com", 10),         # case 1: a live instance
    ("bob@acme-corp.com", 10),       # 2.1: named account, claims a pool instance
    ("amy@acme-corp.com", 10),       # case 1 again: the instance bob claimed
    ("gus@globex.com", 10),          # 2.2: pre-qualified, round robin
    ("eve@hooli.io", 10),            # triage, with marketing actions waiting for it
    ("zed@xn--bcher-kva.example", 2),  # pre-qualified, but the cap is reached: waits
]


def rows_written(url: str) -> dict:
    """Every row a signup writes, with the random trial ids and reset codes replaced by stable names."""
    runtime = Runtime(make_settings(url, CONFIG))
    with runtime.engine.connect() as conn:
        ids = {row.id: f"<{row.email}>" for row in conn.execute(select(tables.trials.c.id, tables.trials.c.email))}

        def stable(value):
            out = json.dumps(value, default=str, sort_keys=True)
            for trial_id, name in ids.items():
                out = out.replace(trial_id, name)
            return re.sub(r"code=[A-Za-z0-9_-]+", "code=<random>", out)

        def dump(table, *order, skip=("id",)):
            cols = [c for c in table.columns if c.name not in skip]
            return sorted(stable([row[c.name] for c in cols]) for row in
                          conn.execute(select(*cols)).mappings())

        found = {
            "trials": dump(tables.trials, skip=()),
            "history": dump(tables.trial_history),
            "timers": dump(tables.timers),
            "outbox": dump(tables.outbox),
            "claims": dump(tables.domain_claims, skip=()),
            "instances": dump(tables.instances, skip=()),
            "round_robin": dump(tables.round_robin, skip=()),
            "marketing": dump(tables.marketing_events),
        }
        # The effects of each trial in the order they were written (delivery follows it).
        found["outbox order"] = stable([r.key for r in conn.execute(select(tables.outbox.c.key).order_by(tables.outbox.c.id))])
    runtime.close()
    return found


def sign_up_everyone(url: str, on_loop: bool) -> None:
    clock = ManualClock()
    runtime = Runtime(make_settings(url, CONFIG), clock=clock)
    load_reference_data(runtime.session_factory, CONFIG, clock.now())
    with runtime.uow() as uow:
        record_marketing_event(uow.session, "eve@hooli.io", "pricing_inquiry", clock.now())
        uow.commit()
    connections = LoopConnections(runtime.engine) if on_loop else None
    taken_on_loop = 0
    for email, cap in SIGNUPS:
        clock.advance(minutes=1)
        runtime.settings.instance_cap = cap
        data = SignupInput(email=email, name="Pat Doe", company="Pat Co", source="test")
        result = None
        if connections is not None:
            result = asyncio.run(submit_signup_on_loop(connections, runtime.settings, clock, data))
            taken_on_loop += result is not None
        if result is None:
            result = submit_signup(runtime.uow, runtime.settings, clock, data)
        assert result.created
    if connections is not None:
        asyncio.run(connections.close())
        # triage (x2, not eve: marketing events) and case 1 (x2) stay on the loop
        assert taken_on_loop == 4
    runtime.close()


CONFIG = None


@pytest.fixture(autouse=True)
def _config(config_dir):
    global CONFIG
    CONFIG = config_dir
    yield
    CONFIG = None


def test_every_routing_case_writes_the_same_rows_on_sqlite_and_on_postgresql_by_every_path(
        sqlite_template, postgres_migrated, tmp_path):
    sqlite_path = tmp_path / "trialflow.db"
    shutil.copy(sqlite_template, sqlite_path)
    sqlite_url = f"sqlite:///{sqlite_path}"
    sign_up_everyone(sqlite_url, on_loop=False)
    on_sqlite = rows_written(sqlite_url)

    truncate_all(postgres_migrated)
    sign_up_everyone(postgres_migrated, on_loop=False)
    from_a_thread = rows_written(postgres_migrated)

    truncate_all(postgres_migrated)
    sign_up_everyone(postgres_migrated, on_loop=True)
    from_the_loop = rows_written(postgres_migrated)

    assert len(on_sqlite["trials"]) == len(SIGNUPS)
    assert any('"waiting_for_capacity"' in row for row in on_sqlite["trials"])
    assert any('"joining_existing"' in row for row in on_sqlite["trials"])
    assert any('"active"' in row for row in on_sqlite["trials"])
    for table in on_sqlite:
        assert from_a_thread[table] == on_sqlite[table], table
        assert from_the_loop[table] == on_sqlite[table], table
