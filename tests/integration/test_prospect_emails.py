"""The prospect is told: each email of the trial's life reaches a real SMTP server (aiosmtpd) at its
moment, exactly once, through the outbox and the real Deliverer, as the clock is moved."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.config import ACCOUNTS, STAFF, write_config
from tests.support.steps import act
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.email import EmailTransport
from trialflow.services.activity import ActivityReport, record_activity
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.sweep import sweep

FEEDBACK = "https://survey.example.com/cloud-trial"
CE, AE = "carol.ce@example.com", "alice.ae@example.com"
NAME = "Bob https://evil.example"   # typed by whoever signed up: never a link in an email
PENDING = "Your Sourcegraph cloud instance: your account is being prepared"


@pytest.fixture
def settings(db_url, config_dir, smtp_server):
    return make_settings(db_url, config_dir, email_from="trials@example.com", feedback_url=FEEDBACK,
                         **smtp_server.settings())


@pytest.fixture
def deliver(runtime, settings):
    deliverer = Deliverer(runtime, {"email": EmailTransport(settings), "slack": DryRunTransport("slack"),
                                    "github": DryRunTransport("github")})
    return deliverer.drain_all


def signup(rt, email: str) -> str:
    return submit_signup(rt.uow, rt.settings, rt.clock, SignupInput(email=email, name=NAME)).trial_id



def host_of(rt, trial_id: str) -> str:
    with rt.session_factory() as s:
        return s.scalar(select(tables.trials.c.instance_host).where(tables.trials.c.id == trial_id))


def use(rt, trial_id: str) -> None:
    """The instance reports use (as its usage poll or POST /api/instances/{host}/activity would)."""
    record_activity(rt, host_of(rt, trial_id), ActivityReport(rt.clock.now(), 2, 5, 1, 3))


def subjects(smtp_server, to: str) -> list[str]:
    return [m["Subject"] for m in smtp_server.to(to)]


def day(at: datetime) -> str:
    return f"{at.day} {at:%B %Y}"


def body(smtp_server, to: str, subject_part: str) -> str:
    [message] = [m for m in smtp_server.to(to) if subject_part in m["Subject"]]
    return message.get_content()


def tick(rt, deliver, clock, **delta) -> None:
    """Time passes: the sweep runs twice for the same moment and delivery runs twice (nothing twice)."""
    clock.advance(**delta)
    sweep(rt)
    sweep(rt, at=clock.now())
    deliver()
    deliver()


def test_a_used_trial_hears_of_its_start_tips_until_it_is_used_check_ins_after_and_every_date(
        runtime, clock, smtp_server, deliver):
    bob = signup(runtime, "bob@acme-corp.com")
    start = clock.now()
    smtp_server.refuse("DATA", "451 4.3.0 Try again later")     # the first attempt is refused for now
    deliver()
    assert subjects(smtp_server, "bob@acme-corp.com") == ["Your Sourcegraph cloud trial has started"]
    clock.advance(minutes=5)
    deliver()                                                    # the refused one, retried: once
    deliver()
    [started] = [m for m in smtp_server.to("bob@acme-corp.com") if m["Subject"] == "Your Sourcegraph cloud trial has started"]
    assert started["From"] == CE and started["Reply-To"] == CE and started["Cc"] == AE
    text = started.get_content()
    assert day(start + timedelta(days=15)) in text and "Reply to this email" in text and "Carol CE" in text
    assert "https://evil.example" not in text and "Hi Bob https[:]//evil[.]example," in text

    tick(runtime, deliver, clock, days=1, minutes=1)
    assert subjects(smtp_server, "bob@acme-corp.com")[-1].endswith("connect your code")
    tick(runtime, deliver, clock, days=2)          # day 3
    assert subjects(smtp_server, "bob@acme-corp.com")[-1].endswith("three searches worth trying")
    use(runtime, bob)                               # day 3: the first use; tips stop, check-ins start
    tick(runtime, deliver, clock, days=2)          # day 5: the first check-in
    assert subjects(smtp_server, "bob@acme-corp.com")[-1] == "How is your Sourcegraph trial going?"
    tick(runtime, deliver, clock, days=3)          # day 8: no third tip, the instance is in use
    tick(runtime, deliver, clock, days=4)          # day 12: 3 days before the review
    review = body(smtp_server, "bob@acme-corp.com", "is reviewed on")
    assert day(start + timedelta(days=15)) in review and "ask for an extension" in review
    tick(runtime, deliver, clock, days=3)          # day 15: used, so extended to day 30
    extended = body(smtp_server, "bob@acme-corp.com", "is extended until")
    assert day(start + timedelta(days=30)) in extended
    tick(runtime, deliver, clock, days=12)         # day 27: 3 days before the end
    ending = body(smtp_server, "bob@acme-corp.com", "ends on")
    assert day(start + timedelta(days=30)) in ending and "Reply to this email" in ending
    act(runtime, bob, "convert", "U0CE00001")
    deliver()
    tick(runtime, deliver, clock, days=10)         # nothing more once converted

    assert subjects(smtp_server, "bob@acme-corp.com") == [
        "Your Sourcegraph cloud trial has started",
        PENDING,
        "Getting started with your Sourcegraph trial: connect your code",
        "Your Sourcegraph trial: three searches worth trying",
        "How is your Sourcegraph trial going?",                       # day 5, 2 days after the first use
        f"Your Sourcegraph cloud trial is reviewed on {day(start + timedelta(days=15))}",
        "How is your Sourcegraph trial going?",                       # day 12, a week later
        f"Your Sourcegraph cloud trial is extended until {day(start + timedelta(days=30))}",
        "How is your Sourcegraph trial going?",                       # day 19, swept late (day 27): one, not two
        f"Your Sourcegraph cloud trial ends on {day(start + timedelta(days=30))}",
        "Welcome to Sourcegraph",
    ]
    for message in smtp_server.to("bob@acme-corp.com"):
        if message["Subject"] != PENDING:
            assert message["From"] == CE and message["Cc"] == AE, message["Subject"]


def test_an_unused_trial_gets_the_three_tips_no_check_in_and_a_feedback_link_when_it_ends(
        runtime, clock, smtp_server, deliver):
    gina = signup(runtime, "gina@globex.com")
    deliver()
    for _ in range(8):
        tick(runtime, deliver, clock, days=1)
    tips = [s for s in subjects(smtp_server, "gina@globex.com") if s.startswith("Getting started") or "trial:" in s]
    assert tips == ["Getting started with your Sourcegraph trial: connect your code",
                    "Your Sourcegraph trial: three searches worth trying",
                    "Your Sourcegraph trial: bring your team in"]
    act(runtime, gina, "terminate", "U0ADMIN01", reason="no use")
    tick(runtime, deliver, clock, days=10)
    ended = body(smtp_server, "gina@globex.com", "has ended")
    assert FEEDBACK in ended
    assert "How is your Sourcegraph trial going?" not in subjects(smtp_server, "gina@globex.com")
    assert not [s for s in subjects(smtp_server, "gina@globex.com") if "reviewed on" in s], "it ended before day 12"


def away(rt, config_dir, until: str, backup: str = "") -> None:
    """staff.csv says Carol (the acme-corp CE) is away through ``until``, covered by ``backup``."""
    lines = STAFF.strip().splitlines()
    rows = [lines[0] + ",away_until,backup"] + [
        line + (f",{until},{backup}" if line.startswith(CE) else ",,") for line in lines[1:]]
    (config_dir / "staff.csv").write_text("\n".join(rows) + "\n")
    load_reference_data(rt.session_factory, config_dir, rt.clock.now())


def test_while_the_ce_is_away_the_prospect_hears_from_their_backup_else_from_the_trials_ae(
        runtime, clock, smtp_server, deliver, config_dir):
    away(runtime, config_dir, "2026-01-06", backup="chris.ce@example.com")
    signup(runtime, "bob@acme-corp.com")
    deliver()
    [started] = [m for m in smtp_server.to("bob@acme-corp.com") if m["Subject"] != PENDING]
    assert (started["From"], started["Reply-To"], started["Cc"]) == ("chris.ce@example.com", "chris.ce@example.com", AE)
    assert started.get_content().rstrip().endswith("Chris CE") and "Carol CE" not in started.get_content()

    away(runtime, config_dir, "2026-01-06")                  # no backup: the trial's AE, not copied to themself
    tick(runtime, deliver, clock, days=1, minutes=1)         # day 1 (6 January): the first tip
    tip = smtp_server.to("bob@acme-corp.com")[-1]
    assert tip["Subject"].endswith("connect your code")
    assert (tip["From"], tip["Reply-To"], tip["Cc"]) == (AE, AE, None)
    assert tip.get_content().rstrip().endswith("Alice AE")

    tick(runtime, deliver, clock, days=2)                    # day 3 (8 January): Carol is back
    tip = smtp_server.to("bob@acme-corp.com")[-1]
    assert tip["Subject"].endswith("three searches worth trying")
    assert (tip["From"], tip["Cc"]) == (CE, AE) and tip.get_content().rstrip().endswith("Carol CE")


def test_an_account_can_turn_the_emails_off_and_the_config_directory_can_reword_them(
        db_url, tmp_path, clock, smtp_server):
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    accounts = ACCOUNTS.replace("named_sdr,owner_ae,owner_ce", "named_sdr,owner_ae,owner_ce,prospect_emails") \
        .replace("carol.ce@example.com\n", "carol.ce@example.com,true\n").replace("globex.com,Globex,true,false,,,",
                                                                                  "globex.com,Globex,true,false,,,,false")
    config = write_config(tmp_path / "config", accounts=accounts)
    (config / "templates").mkdir()
    (config / "templates" / "trial_started.txt").write_text("Subject: Welcome aboard, $name\n\nYour trial: $instance_url\n")
    settings = make_settings(db_url, config, **smtp_server.settings())
    rt = Runtime(settings, clock=clock)
    try:
        load_reference_data(rt.session_factory, config, clock.now())
        deliver = Deliverer(rt, {"email": EmailTransport(settings), "slack": DryRunTransport("slack"),
                                 "github": DryRunTransport("github")}).drain_all
        signup(rt, "bob@acme-corp.com")
        signup(rt, "gina@globex.com")
        deliver()
        tick(rt, deliver, clock, days=1, minutes=1)
        assert subjects(smtp_server, "bob@acme-corp.com")[1:] == [
            "Welcome aboard, Bob https[:]//evil[.]example",  # the operators' wording; typed text still inert
            "Getting started with your Sourcegraph trial: connect your code"]
        assert body(smtp_server, "bob@acme-corp.com", "Welcome aboard").startswith("Your trial: https://pool-")
        # Globex turned them off: only the email that carries their account's news, none of the prospect's.
        assert subjects(smtp_server, "gina@globex.com") == [PENDING]
    finally:
        rt.close()
