"""The seed's journeys end to end, over HTTP, with no instance API token (the CE hands off by hand): signups, signed Slack clicks and modals, signed GitHub
webhooks and instance activity reports; the 15/30-day clock moved by a ManualClock and swept.
Effects are delivered by the real clients (slack_sdk, PyGithub, smtplib) to local Slack, GitHub and
SMTP servers, and the tests look there: what people would actually see."""
from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.support.journey import SLACK, Journey, buttons_in
from tests.support.signed import (
    comment_as,
    issue_comment,
    issue_labeled,
    post_webhook,
    signing_settings,
)
from trialflow.services.policies import PROSPECT_STEPS


@pytest.fixture
def settings(db_url, config_dir, slack, github, smtp):
    return make_settings(db_url, config_dir, **signing_settings(), **slack.settings(), **github.settings(), **smtp.settings())


@pytest.fixture
def journey(client, runtime, clock, slack, github, smtp):
    """No instance API token here: the hand-offs are the CE's (the automated ones: test_instance_journeys)."""
    return Journey(client, runtime, clock, slack, github, smtp)


# --- case 2: pre-qualified ------------------------------------------------------------------------

def test_2_2_a_prequalified_account_gets_an_ae_and_ce_by_round_robin_and_is_converted(journey, slack):
    journey.sign_up("gina@globex.com", name="Gina")
    owners = journey.trial()["assignees"]
    assert owners["ae"] and owners["ce"] and owners["sdr"] is None
    journey.press("convert_to_opportunity", "ivy.inbound@example.com")
    assert journey.trial()["assignees"]["sdr"] == "ivy.inbound@example.com"
    assert slack.channel_named("cloud-trial-globex").members >= {SLACK[owners["ae"]], SLACK[owners["ce"]]}
    journey.press("convert", owners["ce"])
    assert journey.state == "converted"
    assert [h["trigger"] for h in journey.trial()["history"]] == ["claim_pool_instance", "convert_to_opportunity", "convert"]


# --- case 3: manual qualification -----------------------------------------------------------------

def test_3_1_a_disqualified_lead_is_emailed_the_self_hosting_recommendation(journey, slack):
    journey.sign_up("mallory@gmail.com", name="Mallory")
    assert journey.state == "triage"
    assert buttons_in(slack, "cloud-trial-alerts", journey.trial_id) == ["trial:qualify", "trial:disqualify"]
    journey.press("disqualify", "ivy.inbound@example.com")
    assert slack.views[-1]["callback_id"] == "trial:disqualify"
    journey.submit("ivy.inbound@example.com", {"reason": ("select", "not_a_company")})
    assert journey.state == "disqualified"
    [email] = journey.emails_to("mallory@gmail.com")
    assert "self-hosting" in email["Subject"]
    assert any(":no_entry:" in u["text"] and "Self-hosting email sent" in u["text"] for u in slack.updates)


def qualify_and_deliver_instance(journey, slack, github, ready_by_comment: bool = False) -> dict:
    journey.sign_up("sam@stark-industries.com", name="Sam", company="Stark Industries")
    assert journey.state == "triage"
    journey.press("qualify", "ivy.inbound@example.com")
    journey.submit("ivy.inbound@example.com", {"opportunity_id": "0065g00000XyZ12"})
    assert journey.state == "instance_requested"
    owners = journey.trial()["assignees"]
    issue = journey.request_issue()
    assert f"Assigned CE (needs operator access to create the password-reset link): {owners['ce']}" in issue["body"]
    assert "TODO" not in issue["body"]
    [welcome] = journey.emails_to("sam@stark-industries.com")
    assert owners["ae"] in welcome["Cc"] and "meet" in welcome["Subject"]
    assert slack.channel_named("cloud-trial-stark-industries-com") is not None

    if ready_by_comment:
        payload = issue_comment(issue["number"], issue["body"], "/ready https://stark.sourcegraph.com", "cody-cloud")
        assert post_webhook(journey.client, "issue_comment", payload).json()["status"] == "instance_ready"
    else:
        comment_as(github, issue["number"], "cody-cloud", "Provisioned.\n\nInstance: https://stark-industries.sourcegraph.com")
        payload = issue_labeled(issue["number"], issue["body"], "instance-ready", "cody-cloud")
        assert post_webhook(journey.client, "issues", payload).json()["status"] == "instance_ready"
    journey.deliver()
    assert journey.state == "instance_ready"
    ready = [m for m in slack.messages_in("cloud-trial-alerts") if "is ready" in m["text"]]
    assert ready and f"<@{SLACK[owners['ce']]}>" in ready[-1]["text"], "the CE is told in Slack"
    assert any("is ready" in c["body"] for c in github.comments_on(issue["number"])), "the issue gets a comment"

    assert "Handed off" in journey.press("hand_off", owners["ce"])
    assert journey.state == "active"
    return owners


def test_3_2_a_qualified_lead_gets_an_instance_from_the_cloud_team_and_is_converted(journey, slack, github):
    owners = qualify_and_deliver_instance(journey, slack, github)
    journey.start = journey.clock.now()           # trial start: the hand-off
    journey.day(5)
    journey.report_use()
    journey.day(12)
    assert "warn_termination" not in [h["trigger"] for h in journey.trial()["history"]]
    journey.day(15)
    assert journey.state == "extended"
    assert any(i["title"].startswith("Trial extend: stark-industries.sourcegraph.com") for i in github.issues)
    journey.day(30)
    reminder = [t for t in journey.channel("cloud-trial-stark-industries-com") if "end of its trial" in t]
    assert reminder and f"<@{SLACK[owners['ce']]}>" in reminder[0]
    journey.press("convert", owners["ce"])
    assert journey.state == "converted"
    triggers = [h["trigger"] for h in journey.trial()["history"] if h["trigger"] not in PROSPECT_STEPS]
    assert triggers == ["send_to_triage", "qualify", "mark_instance_ready", "hand_off", "extend", "remind_decision", "convert"]


def test_3_2_a_qualified_lead_that_never_uses_its_instance_is_terminated(journey, slack, github, smtp):
    owners = qualify_and_deliver_instance(journey, slack, github, ready_by_comment=True)
    journey.start = journey.clock.now()
    journey.report_no_use()                       # the instance answers: nobody uses it
    journey.day(12)
    heads_up = [m for m in slack.messages_in("cloud-trial-stark-industries-com") if "day-15 review" in m["text"]]
    assert heads_up and buttons_in(slack, "cloud-trial-stark-industries-com", journey.trial_id)[-2:] == ["trial:keep", "trial:terminate"]
    journey.day(15)
    assert journey.state == "terminated"
    assert any(i["title"] == "Terminate cloud trial instance stark.sourcegraph.com" for i in github.issues)
    assert "Request feedback email" in journey.press("request_feedback", owners["ce"])
    [feedback] = [m for m in journey.emails_to("sam@stark-industries.com") if "How was" in m["Subject"]]
    assert owners["ce"] in feedback["Cc"]


def test_an_unauthorised_click_is_refused_and_nothing_changes(journey, slack, github):
    journey.sign_up("sam@stark-industries.com", name="Sam")
    before = journey.trial()
    messages = len(slack.messages)
    shown = journey.press("qualify", "alice.ae@example.com")
    assert shown.startswith(":no_entry:") and "only an SDR" in shown
    assert slack.views == [] and github.issues == []
    assert journey.trial() == before and len(slack.messages) == messages
    shown = journey.press("hand_off", "U0NOTSTAFF")
    assert "not in staff.csv" in shown
    assert journey.trial() == before
