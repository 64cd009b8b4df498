"""PostgreSQL restarted (``pg_ctl restart -m fast``) and stopped during a burst of signups to a
real ``trialflow serve``: every signup ends up in ``trials`` exactly once. Before the spool, a
restart lost the signups it caught (two in a burst): the failsafe needed the database too.

The server is a PostgreSQL cluster of the test's own (``PostgresServer``), never the shared one.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import func, select

from tests.support.config import write_config
from tests.support.processes import PostgresServer, TrialflowProcess, free_port, trialflow_env, wait_for
from trialflow.db import tables
from trialflow.db.engine import make_engine
from trialflow.spool import Spool

pytestmark = [pytest.mark.postgres]

CLIENTS = 4


@pytest.fixture
def postgres():
    server = PostgresServer().start()
    yield server
    server.destroy()


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_postgresql_restarted_and_stopped_during_a_signup_burst_loses_no_signup_and_doubles_none(
        postgres, tmp_path, own_spool):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = trialflow_env(database_url=postgres.url, config_dir=write_config(tmp_path / "config"),
                        spool_replay_seconds=0.2,
                        # (rate limits, where a branch adds them, must not refuse the burst)
                        signup_rate_per_ip="1000000/second", signup_rate_per_domain="1000000/second")
    server = TrialflowProcess(["serve", "--port", str(port)], env, tmp_path / "serve.log").start()
    try:
        wait_for(lambda: healthy(url), 60, "trialflow serve to answer /healthz", interval=0.2)
        answers: list[tuple[str, int]] = []
        done = threading.Event()

        def send(client: int) -> None:
            with requests.Session() as http:
                n = 0
                while not done.is_set():
                    n += 1
                    # Fresh domains go to triage (one statement); acme-corp.com claims its pool
                    # instance once and then joins it (transactions); every 7th repeats an email.
                    k = n - 1 if n % 7 == 0 else n
                    email = f"user{client}-{k}@" + ("acme-corp.com" if k % 5 == 0 else f"company{client}-{k}.example")
                    try:
                        status = http.post(f"{url}/api/signups", json={"email": email}, timeout=15).status_code
                    except requests.RequestException as exc:
                        status = type(exc).__name__
                    answers.append((email, status))

        clients = [threading.Thread(target=send, args=(i,)) for i in range(CLIENTS)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        postgres.restart("fast")   # what lost two signups before
        time.sleep(0.5)
        postgres.stop("fast")      # a longer outage: a second or so with no database at all
        time.sleep(1.0)
        postgres.start()
        time.sleep(0.5)
        done.set()
        for thread in clients:
            thread.join(30)

        statuses = Counter(status for _email, status in answers)
        assert set(statuses) <= {200, 201, 202}, f"answers other than 200/201/202: {statuses}\n{server.log()[-3000:]}"
        assert statuses[202] > 0, f"no signup met the outage: {statuses}"  # the spool was really used
        sent = {email for email, _status in answers}

        engine = make_engine(postgres.url)
        try:
            def all_routed() -> bool:
                with engine.connect() as conn:
                    stored = conn.scalar(select(func.count()).select_from(tables.trials))
                return stored >= len(sent) and Spool(own_spool).count() == 0

            wait_for(all_routed, 60, "every spooled signup to be routed", interval=0.2)
            with engine.connect() as conn:
                per_email = Counter(dict(conn.execute(select(tables.trials.c.email, func.count())
                                                      .group_by(tables.trials.c.email)).all()))
                failed = conn.scalar(select(func.count()).select_from(tables.failed_signups))
        finally:
            engine.dispose()
        lost = sent - set(per_email)
        doubled = {email: n for email, n in per_email.items() if n > 1}
        assert (lost, doubled, set(per_email) - sent) == (set(), {}, set())
        assert failed == 0  # an outage is not a fault for support
        print(f"\n{len(answers)} signups ({len(sent)} emails): {dict(statuses)}; 0 lost, 0 doubled")
    finally:
        server.stop()
