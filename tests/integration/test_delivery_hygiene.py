"""What the outbox keeps after delivery, and which message a later update edits."""
from __future__ import annotations

from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.config import ACCOUNTS, STAFF, write_config
from trialflow.db import tables
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.instance import InstanceTransport
from trialflow.delivery.sourcegraph import SourcegraphAdmin
from trialflow.delivery.wiring import build_deliverer
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.instance_sync import InstanceRecorder
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run

NO_POOL = "host,admin_email,status\ninitech.sourcegraph.com,peter@initech.com,live\n"


def test_a_delivered_password_reset_link_is_not_kept_in_the_outbox(db_url, config_dir, clock, fake_sourcegraph):
    runtime = Runtime(make_settings(db_url, config_dir, **fake_sourcegraph.settings()), clock=clock)
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    bob = submit_signup(runtime.uow, runtime.settings, clock, SignupInput(email="bob@acme-corp.com"))
    transports = {k: DryRunTransport(k) for k in ("slack", "github", "email")}
    transports["instance"] = InstanceTransport(SourcegraphAdmin(runtime.settings), transports["email"],
                                               InstanceRecorder(runtime), clock.now)
    build_deliverer(runtime, transports).drain_all()
    sent = [e for e in transports["email"].delivered if e.payload["template"] == "password_reset"]
    assert sent and sent[0].payload["context"]["reset_link"].startswith("https://")  # the recipient got it
    [link] = fake_sourcegraph.reset_links
    assert sent[0].payload["context"]["reset_link"] == link
    with runtime.session_factory() as s:
        o = tables.outbox.c
        kept = s.execute(select(o.payload, o.result, o.status)
                         .where(o.trial_id == bob.trial_id, o.kind == "instance.account")).one()
    runtime.close()
    assert kept.status == "delivered"
    assert "reset_link" not in kept.payload["mail"]["context"], "never even written: asked, emailed, forgotten"
    assert link not in str(kept.payload) + str(kept.result) and kept.result["link"] == "emailed"
    assert kept.payload["mail"]["to"] == "bob@acme-corp.com"


def test_after_waiting_then_getting_an_instance_updates_edit_the_latest_alert(db_url, tmp_path, clock, fake_slack):
    config = write_config(tmp_path / "config", ACCOUNTS, STAFF, NO_POOL)
    rt = Runtime(make_settings(db_url, config, **fake_slack.settings()), clock=clock)
    load_reference_data(rt.session_factory, config, clock.now())
    deliver = build_deliverer(rt).drain_all
    gina = submit_signup(rt.uow, rt.settings, clock, SignupInput(email="gina@globex.com"))
    assert gina.state == "waiting_for_capacity"
    deliver()

    more = write_config(tmp_path / "more", ACCOUNTS, STAFF, NO_POOL + "pool-z.sourcegraph.com,,pool\n")
    load_reference_data(rt.session_factory, more, clock.now())
    assert sweep(rt).promoted == 1
    deliver()
    alerts = fake_slack.messages_in("cloud-trial-alerts")
    assert len(alerts) == 2 and "waiting for capacity" in alerts[0]["text"] and "claimed" in alerts[1]["text"]

    with rt.session_factory() as s:
        ce = Directory(s).by_email(s.scalar(select(tables.trials.c.ce).where(tables.trials.c.id == gina.trial_id)))
    run(rt, Command(gina.trial_id, "terminate", ce.slack_user_id, ce, {"reason": "done"}))
    deliver()
    assert [u["ts"] for u in fake_slack.updates] == [alerts[1]["ts"]]
    rt.close()
