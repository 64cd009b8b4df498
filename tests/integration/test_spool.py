"""No signup is lost while the database is down: answered 202 and kept on local disk, visible to
`trialflow outbox` / `trials list`, routed exactly once when the database is back, and handed to
support only when routing it then fails."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.conftest import make_settings
from tests.support.config import write_config
from tests.support.processes import ROOT, free_port, trialflow_env
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data
from trialflow.services.spooled_signups import replay, spool_of
from trialflow.spool import Spool

SIGNUPS = [{"email": "bob@acme-corp.com", "name": "Bob"}, {"email": "lee@tiny-startup.io", "company": "Tiny & Co"}]


def count(rt, table, *where) -> int:
    with rt.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(*where))


def cli(*args: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trialflow.cli", *args], env=trialflow_env(**settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def unreachable_url() -> str:
    """PostgreSQL on a port nobody listens on: a database that is down."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/trialflow"


@pytest.mark.postgres
def test_while_the_database_is_down_signups_are_kept_on_disk_then_routed_once_when_it_is_back(
        pg_url, unreachable_url, tmp_path, clock, own_spool, caplog):
    config = write_config(tmp_path / "config")
    down = Runtime(make_settings(unreachable_url, config), clock=clock)
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        answers = [c.post("/api/signups", json=body) for body in SIGNUPS]
    down.close()
    received_at = clock.now()

    assert [a.status_code for a in answers] == [202, 202]
    assert all(a.json()["state"] == "received" and a.json()["trial_id"] is None for a in answers)
    assert spool_of(down.settings).count() == 2
    assert "Traceback" not in caplog.text  # an outage is not a bug: no stack trace per signup

    # Visible while the database is still down: the spool is read from disk first.
    listed = cli("outbox", database_url=unreachable_url)
    assert "spooled signups: 2" in listed.stdout and "bob@acme-corp.com" in listed.stdout
    assert listed.returncode == 1 and "error: database" in listed.stderr
    assert "lee@tiny-startup.io" in cli("trials", "list", database_url=unreachable_url).stdout
    assert cli("spool", "replay", database_url=unreachable_url).returncode == 1  # still down: nothing lost
    assert spool_of(down.settings).count() == 2

    # The database is back: `trialflow spool replay` routes them, as serve's loop and the sweep would.
    up = Runtime(make_settings(pg_url, config), clock=clock)
    load_reference_data(up.session_factory, config, clock.now())
    kept = tmp_path / "kept"
    shutil.copytree(own_spool, kept)  # what a replay interrupted before forgetting its records would leave
    replayed = cli("spool", "replay", database_url=pg_url, config_dir=str(config))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "routed 2 spooled signup(s), 0 kept for support, 0 left" in replayed.stdout
    with up.session_factory() as s:
        trials = {r.email: r for r in s.execute(select(tables.trials))}
    assert set(trials) == {"bob@acme-corp.com", "lee@tiny-startup.io"}
    assert (trials["bob@acme-corp.com"].state, trials["lee@tiny-startup.io"].state) == ("active", "triage")
    assert trials["lee@tiny-startup.io"].company == "Tiny & Co"
    assert all(t.created_at == received_at for t in trials.values())  # they signed up when they were received
    effects = count(up, tables.outbox)

    # Replayed again (the interrupted replay's files): the same trials, nothing written twice.
    shutil.rmtree(own_spool)
    shutil.copytree(kept, own_spool)
    report = replay(up)
    assert [created for _record, _trial, created in report.routed] == [False, False]
    assert {trial for _record, trial, _created in report.routed} == {t.id for t in trials.values()}
    assert count(up, tables.trials) == 2 and count(up, tables.outbox) == effects
    assert count(up, tables.failed_signups) == 0  # support heard nothing: nothing failed
    assert report.left == 0 and spool_of(up.settings).count() == 0
    assert "no spooled signups" in cli("spool", database_url=pg_url).stdout
    up.close()


@pytest.fixture
def accounts_gone(runtime):
    """Routing fails with the database up (a botched migration renamed a table it reads)."""
    with runtime.engine.begin() as conn:
        conn.execute(text("ALTER TABLE accounts RENAME TO accounts_gone"))
    yield
    runtime.engine.dispose()
    with runtime.engine.begin() as conn:
        conn.execute(text("ALTER TABLE accounts_gone RENAME TO accounts"))


def support_emails(rt) -> list[dict]:
    with rt.engine.connect() as conn:
        return [p for p in conn.execute(select(tables.outbox.c.payload)).scalars() if p["template"] == "support_failsafe"]


def test_a_spooled_signup_whose_routing_fails_goes_to_support_once(runtime, accounts_gone, tmp_path, clock):
    spool = spool_of(runtime.settings)
    spool.append(SIGNUPS[0], json.dumps(SIGNUPS[0]).encode(), "OperationalError: connection refused", clock.now())
    kept = tmp_path / "kept"
    shutil.copytree(spool.directory, kept)

    report = replay(runtime)
    shutil.rmtree(spool.directory)
    shutil.copytree(kept, spool.directory)  # as if the replay had died after handing it over
    again = replay(runtime)

    assert len(report.to_support) == 1 and again.to_support == report.to_support and again.left == 0
    assert count(runtime, tables.trials) == 0
    with runtime.engine.connect() as conn:
        [row] = conn.execute(select(tables.failed_signups)).all()
    assert json.loads(row.body) == SIGNUPS[0] and "accounts" in row.error
    [email] = support_emails(runtime)
    assert email["context"]["failed_signup_id"] == row.id and "bob@acme-corp.com" in email["context"]["signup"]


def test_a_damaged_spool_file_goes_to_support_as_it_is(runtime, clock):
    spool = spool_of(runtime.settings)
    spool.append(SIGNUPS[1], b"{}", "e", clock.now())
    [path] = spool.directory.glob("*.json")
    path.write_text(path.read_text().replace("lee@", "kim@"))

    report = replay(runtime)

    assert report.routed == [] and len(report.to_support) == 1 and report.left == 0
    [email] = support_emails(runtime)
    assert "kim@tiny-startup.io" in email["context"]["signup"] and email["context"]["error"] == "SpoolRecordDamaged"


def test_two_replayers_never_route_the_same_spool_at_once(runtime, clock):
    spool = spool_of(runtime.settings)
    spool.append(SIGNUPS[1], b"{}", "e", clock.now())
    with Spool(spool.directory).replaying() as held:
        assert held
        busy = replay(runtime)
    assert busy.stopped == "another process is replaying the spool" and busy.left == 1
    assert count(runtime, tables.trials) == 0
    assert len(replay(runtime).routed) == 1 and count(runtime, tables.trials) == 1
