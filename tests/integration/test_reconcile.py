"""``trialflow reconcile``: trials, claims, the instance inventory and the cloud team's requests
against what the instances' APIs (the fake Sourcegraph) and GitHub (the fake GitHub) answer. It
lists, posts once a day, and changes nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.conftest import make_settings
from tests.support.processes import trialflow_env
from tests.support.steps import act, signup
from trialflow.db import tables
from trialflow.delivery.wiring import run_reconcile
from trialflow.services import reconcile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sourcegraph(fake_sourcegraph):
    return fake_sourcegraph


@pytest.fixture
def settings(db_url, config_dir, fake_sourcegraph, fake_github):
    return make_settings(db_url, config_dir, **fake_sourcegraph.settings(), **fake_github.settings())




def snapshot(rt) -> tuple:
    with rt.session_factory() as s:
        return tuple(tuple(s.execute(select(t).order_by(*t.primary_key.columns)).all())
                     for t in (tables.trials, tables.instances, tables.domain_claims, tables.cloud_requests))


def test_reconcile_lists_every_disagreement_and_changes_nothing(runtime, clock, sourcegraph, fake_github):
    answering = signup(runtime, "bob@acme-corp.com")                  # pool-a: answers
    silent = signup(runtime, "gina@globex.com")                       # pool-b: down for a day
    gone = signup(runtime, "hans@xn--bcher-kva.example")              # pool-c: terminated, still answers
    with runtime.session_factory() as s, s.begin():
        s.execute(update(tables.instances).where(tables.instances.c.host == "pool-a.sourcegraph.com")
                  .values(api_answered_at=clock.now()))
    sourcegraph.down("pool-b.sourcegraph.com")
    act(runtime, gone, "terminate", "U0ADMIN01", reason="no longer needed")
    with runtime.session_factory() as s:
        [key] = s.scalars(select(tables.cloud_requests.c.key).where(tables.cloud_requests.c.kind == "termination"))
    with runtime.session_factory() as s, s.begin():   # as if the termination issue was opened as #1, then closed there
        s.execute(update(tables.outbox).where(tables.outbox.c.key == key)
                  .values(status="delivered", result={"number": 1}))
    fake_github.issues.append({"number": 1, "state": "closed", "body": "", "title": "Terminate"})
    clock.advance(days=2)
    before = snapshot(runtime)

    report = run_reconcile(runtime)

    found = {(f.kind, f.host, f.trial_id) for f in report.findings}
    assert (reconcile.TERMINATED_ANSWERS, "pool-c.sourcegraph.com", gone) in found
    assert (reconcile.SILENT, "pool-b.sourcegraph.com", silent) in found
    assert not any(f.trial_id == answering and f.kind == reconcile.SILENT for f in report.findings), "it answers"
    assert (reconcile.LIVE_WITHOUT_TRIAL, "initech.sourcegraph.com", None) in found
    assert (reconcile.CLOSED_NOT_DONE, None, gone) in found
    assert report.instances_asked == 4
    assert snapshot(runtime) == before, "it lists and does not act"


def test_a_request_open_past_its_sla_and_a_claim_on_a_moved_instance_are_listed(runtime, clock):
    bob = signup(runtime, "bob@acme-corp.com")
    act(runtime, bob, "terminate", "U0CE00001", reason="done")
    with runtime.session_factory() as s, s.begin():
        s.execute(tables.domain_claims.insert().values(domain="acme-corp.com", instance_host="pool-a.sourcegraph.com",
                                                       trial_id=bob, claimed_at=clock.now()))
    clock.advance(hours=30)
    report = reconcile.reconcile(runtime)              # no API, no GitHub: from what trialflow recorded
    kinds = {f.kind for f in report.findings}
    assert {reconcile.OVERDUE, reconcile.STALE_CLAIM} <= kinds
    assert report.instances_asked == 0


def test_the_daily_report_goes_to_the_alerts_channel_once_a_day(runtime, clock):
    report = reconcile.reconcile(runtime)
    assert report.findings, "initech is live with no trial"
    assert reconcile.due_today(runtime, clock.now())
    assert reconcile.post_daily(runtime, report) and not reconcile.post_daily(runtime, report)
    assert not reconcile.due_today(runtime, clock.now())
    with runtime.session_factory() as s:
        [posted] = s.scalars(select(tables.outbox.c.payload).where(tables.outbox.c.kind == "slack.message"))
        assert s.scalar(select(func.count()).select_from(tables.outbox)) == 1
    assert posted["channel"] == "cloud-trial-alerts" and "Nothing was changed" in posted["text"]
    assert "initech.sourcegraph.com" in json.dumps(posted["blocks"])
    clock.advance(days=1)
    assert reconcile.due_today(runtime, clock.now())


def test_the_cli_prints_the_report_as_json(db_url, config_dir, runtime, sourcegraph):
    signup(runtime, "bob@acme-corp.com")
    env = trialflow_env(database_url=db_url, config_dir=str(config_dir), **sourcegraph.settings())
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "reconcile", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["instances_asked"] == 2 and {f["kind"] for f in answer["findings"]} == {reconcile.LIVE_WITHOUT_TRIAL}
    assert sourcegraph.token not in done.stdout + done.stderr
    text = subprocess.run([sys.executable, "-m", "trialflow.cli", "reconcile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "nothing was changed" in text.stdout and "initech.sourcegraph.com" in text.stdout
