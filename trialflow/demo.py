"""``trialflow demo``: the seed's story on a throw-away SQLite database, effects dry-run.

The demo brings everything it needs: its own reference data (``trialflow/demo_data``, the people
and accounts the story names) and its own settings, read from neither the environment nor
``.env``. A team's ``TRIALFLOW_CONFIG_DIR`` (or ``./config``) with its own staff, or a half-set
``.env``, cannot break it, and the demo never touches the team's database.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from trialflow.api.serialize import trial_detail
from trialflow.clock import ManualClock
from trialflow.db.migrate import upgrade
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.wiring import build_deliverer
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import Trial
from trialflow.runtime import Runtime
from trialflow.services.activity import ActivityReport, record_activity
from trialflow.services.directory import Directory
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run
from trialflow.settings import Settings
from trialflow.timeline import print_timeline

STORY = [
    ("bob@acme-corp.com", "Bob", "Acme Corp", "2.1: Acme Corp is a pre-qualified named account"),
    ("alice@acme-corp.com", "Alice", "Acme Corp", "1: acme-corp.com now has an instance"),
    ("gina@globex.com", "Gina", "Globex", "2.2: Globex is pre-qualified, not a named account"),
    ("mallory@gmail.com", "Mallory", None, "3: a public email domain always goes to triage"),
    ("sam@stark-industries.com", "Sam", "Stark Industries", "3.2: not pre-qualified, then qualified"),
    ("tom@tinytown.dev", "Tom", None, "3.1: not pre-qualified, then disqualified"),
]


DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


class DemoSettings(Settings):
    """Settings from the demo's own arguments only: no environment, no ``.env``."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def run_demo(keep: bool = False) -> int:
    logging.getLogger("trialflow").setLevel(logging.WARNING)  # the story is the output; dry-run lines would drown it
    tmp = Path(tempfile.mkdtemp(prefix="trialflow-demo-"))
    settings = DemoSettings(database_url=f"sqlite:///{tmp / 'demo.db'}", config_dir=DEMO_DATA,
                            spool_dir=tmp / "spool")
    clock = ManualClock()
    rt = Runtime(settings, clock=clock)
    upgrade(settings.database_url)
    load_reference_data(rt.session_factory, settings.config_dir, clock.now())
    transports = {k: DryRunTransport(k) for k in ("slack", "github", "email")}
    deliverer = build_deliverer(rt, transports)

    def act(trial_id, trigger, actor, github=False, **detail):
        with rt.session_factory() as s:
            people = Directory(s)
            person = people.by_github_login(actor) if github else people.by_slack_id(actor)
        return run(rt, Command(trial_id, trigger, actor, person, detail))

    print(f"trialflow demo: {clock.now():%Y-%m-%d} · database {tmp / 'demo.db'} · Slack/GitHub/email dry-run\n")
    ids = {}
    for email, name, company, why in STORY:
        result = submit_signup(rt.uow, settings, clock, SignupInput(email=email, name=name, company=company, source="demo"))
        ids[email] = result.trial_id
        print(f"signup {email:<28} → {result.case:<22} {result.state:<20} {result.redirect_url or ''}")
        print(f"       case {why}")
        clock.advance(minutes=7)

    print("\npeople act in Slack and GitHub:")
    act(ids["alice@acme-corp.com"], lc.CONFIRM_USER_ADDED, "U0AE00001")
    print("  Alice AE clicks 'User added' for alice@acme-corp.com")
    act(ids["tom@tinytown.dev"], lc.DISQUALIFY, "U0SDR0001", reason="student project, no team")
    print("  Ivy (inbound SDR) disqualifies tom@tinytown.dev → self-hosting email")
    act(ids["sam@stark-industries.com"], lc.QUALIFY, "U0SDR0001", opportunity_id="006DEMO0001")
    print("  Ivy qualifies sam@stark-industries.com → channel, instance-request issue with the CE's email, welcome email")
    act(ids["gina@globex.com"], lc.CONVERT_TO_OPPORTUNITY, "U0SDR0001", opportunity_id="006DEMO0002")
    act(ids["bob@acme-corp.com"], lc.CONVERT_TO_OPPORTUNITY, "U0SDR0002", opportunity_id="006DEMO0003")
    clock.advance(hours=20)
    act(ids["sam@stark-industries.com"], lc.MARK_INSTANCE_READY, "cody-cloud", github=True, host="https://stark-industries.sourcegraph.com")
    print("  the cloud team labels the issue instance-ready")
    with rt.session_factory() as s:
        sam_ce = Directory(s).by_email(s.get_one(Trial, ids["sam@stark-industries.com"]).ce)
        if sam_ce is None:
            raise RuntimeError("the demo's qualified trial has no CE from staff.csv")
        ce_slack = sam_ce.slack_user_id
    clock.advance(hours=2)
    act(ids["sam@stark-industries.com"], lc.HAND_OFF, ce_slack)
    print("  the CE clicks 'Handed off': Sam's trial starts")

    # Activity: Bob and Sam use their instances; Gina's answers that nobody uses it.
    with rt.uow() as uow:
        for email in ("bob@acme-corp.com", "sam@stark-industries.com"):
            uow.session.get_one(Trial, ids[email]).last_activity_at = clock.now()
        gina_host = uow.session.get_one(Trial, ids["gina@globex.com"]).instance_host
        uow.commit()
    if gina_host is None:
        raise RuntimeError("the demo's idle trial has no instance")
    record_activity(rt, gina_host, ActivityReport(clock.now(), 0, 0, 0, 0))

    for day in (13, 16, 31, 34):
        clock.set(clock.now().replace(hour=9) + timedelta(days=day - _day(clock, rt, ids)))
        report = sweep(rt)
        print(f"\nday {day}: sweep ({len(report.actions)} action(s))")
        for a in report.actions:
            print(f"  {a}")
    act(ids["bob@acme-corp.com"], lc.CONVERT, "U0CE00001")
    print("\n  Carol CE converts Acme Corp")
    act(ids["sam@stark-industries.com"], lc.TERMINATE, ce_slack, reason="chose self-hosted")
    act(ids["sam@stark-industries.com"], lc.REQUEST_FEEDBACK, ce_slack)
    print("  Sam's CE terminates (went self-hosted) and asks for the feedback email")
    outcome = deliverer.drain_all()
    print(f"\neffects delivered (dry-run): {outcome.get('delivered', 0)} — "
          + ", ".join(f"{k}: {len(t.delivered)}" for k, t in transports.items()))

    print("\ntimelines:")
    with rt.session_factory() as s:
        for email in ids:
            print()
            print_timeline(trial_detail(s, s.get_one(Trial, ids[email])))
    rt.close()
    if keep:
        print(f"\ndemo database kept at {tmp / 'demo.db'}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _day(clock, rt, ids) -> int:
    """Days since the story's first trial started (Bob's)."""
    with rt.session_factory() as s:
        start = s.get(Trial, ids["bob@acme-corp.com"]).started_at
    return (clock.now() - start).days
