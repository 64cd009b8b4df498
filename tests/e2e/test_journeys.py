"""The seed's journeys end to end, over HTTP: signups, signed Slack clicks and modals, signed GitHub
webhooks and instance activity reports; the 15/30-day clock moved by a ManualClock and swept.
Effects are delivered by the real clients (slack_sdk, PyGithub, smtplib) to local Slack, GitHub and
SMTP servers, and the tests look there: what people would actually see."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.conftest import make_settings
from tests.support.fake_github import FakeGitHub
from tests.support.signed import (
    FIXTURE_REPO,
    block_action,
    comment_as,
    interactive_fake_slack,
    issue_comment,
    issue_labeled,
    post_activity,
    post_interaction,
    post_webhook,
    signing_settings,
    view_submission,
)
from tests.support.smtp import SmtpServer
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.services.sweep import sweep

SLACK = {"ivy.inbound@example.com": "U0SDR0001", "nina.named@example.com": "U0SDR0002",
         "alice.ae@example.com": "U0AE00001", "andy.ae@example.com": "U0AE00002",
         "carol.ce@example.com": "U0CE00001", "chris.ce@example.com": "U0CE00002"}


@pytest.fixture
def slack():
    with interactive_fake_slack() as fake:
        yield fake


@pytest.fixture
def github():
    with FakeGitHub(repo=FIXTURE_REPO) as fake:
        yield fake


@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


@pytest.fixture
def settings(db_url, config_dir, slack, github, smtp):
    return make_settings(db_url, config_dir, **signing_settings(), **slack.settings(), **github.settings(), **smtp.settings())


class Journey:
    """One person's trial as the people around it see it."""

    def __init__(self, client, runtime, clock, slack, github, smtp):
        self.client, self.rt, self.clock = client, runtime, clock
        self.slack, self.github, self.smtp = slack, github, smtp
        self.deliverer = Deliverer(runtime, {"slack": SlackTransport(runtime.settings),
                                             "github": GitHubTransport(runtime.settings, seconds_between_writes=None),
                                             "email": EmailTransport(runtime.settings)})
        self.start = clock.now()
        self.trial_id = ""
        self._responses = 0

    def deliver(self) -> None:
        outcome = self.deliverer.drain_all()
        assert set(outcome) <= {"delivered"}, f"every effect is delivered at once: {outcome}"

    def sign_up(self, email: str, **extra) -> dict:
        response = self.client.post("/api/signups", json={"email": email, **extra})
        assert response.status_code == 201, response.text
        self.trial_id = response.json()["trial_id"]
        self.deliver()
        return response.json()

    def trial(self) -> dict:
        return self.client.get(f"/api/trials/{self.trial_id}").json()

    @property
    def state(self) -> str:
        return self.trial()["state"]

    def press(self, action: str, person: str) -> str:
        """``person`` presses the trial's button; returns what Slack showed them (ephemeral)."""
        self._responses += 1
        before = len(self.slack.responses())
        response = post_interaction(self.client, block_action(action, self.trial_id, SLACK.get(person, person),
                                                              response_url=self.slack.response_url(self._responses)),
                                    self.clock.now())
        assert response.status_code == 200, response.text
        self.deliver()
        shown = self.slack.responses()[before:]
        return shown[-1]["text"] if shown else ""

    def submit(self, person: str, values: dict) -> None:
        view = self.slack.views[-1]
        assert json.loads(view["private_metadata"])["trial_id"] == self.trial_id
        response = post_interaction(self.client, view_submission(view, SLACK[person], values), self.clock.now())
        assert response.status_code == 200 and response.content == b"", response.text
        self.deliver()

    def request_issue(self) -> dict:
        [issue] = [i for i in self.github.issues if f"trialflow:{self.trial_id}:instance-request" in (i["body"] or "")]
        return issue

    def report_use(self) -> None:
        host = self.trial()["instance_url"].split("//", 1)[1]
        response = post_activity(self.client, host, {"active_users": 4, "searches": 30, "code_intel_actions": 9,
                                                     "repositories": 25}, self.clock.now())
        assert response.status_code == 201, response.text

    def day(self, n: int) -> None:
        """Trial day ``n`` (from when this journey began): the clock moves and the sweep runs."""
        self.clock.set(self.start + timedelta(days=n, minutes=5))
        sweep(self.rt)
        self.deliver()

    def channel(self, name: str) -> list[str]:
        return [m["text"] for m in self.slack.messages_in(name)]

    def emails_to(self, address: str) -> list:
        return self.smtp.to(address)


@pytest.fixture
def journey(client, runtime, clock, slack, github, smtp):
    return Journey(client, runtime, clock, slack, github, smtp)


def buttons_in(slack, channel: str, trial_id: str) -> list[str]:
    return [e["action_id"] for m in slack.messages_in(channel) for b in m["blocks"] if b["type"] == "actions"
            for e in b["elements"] if e["value"] == trial_id]


# --- case 2: pre-qualified ------------------------------------------------------------------------

def test_2_1_a_named_account_gets_an_instance_at_once_and_is_converted(journey, slack, github):
    answer = journey.sign_up("bob@acme-corp.com", name="Bob", company="Acme Corp")
    assert answer["case"] == "prequalified_named" and answer["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    [reset] = journey.emails_to("bob@acme-corp.com")
    assert "ready" in reset["Subject"] and "https://pool-a.sourcegraph.com/password-reset?code=" in reset.get_content()
    assert any("named account *Acme Corp*" in t for t in journey.channel("cloud-trial-alerts"))
    assert slack.channel_named("cloud-trial-acme-corp").members >= {"U0CE00001", "U0AE00001"}

    assert "Converted to Opp" in journey.press("convert_to_opportunity", "nina.named@example.com")
    assert any("Opportunity" in t for t in journey.channel("cloud-trial-acme-corp"))
    journey.day(3)
    journey.report_use()
    journey.day(15)
    assert journey.state == "extended"
    assert any(i["title"].startswith("Trial extend: pool-a.sourcegraph.com") for i in github.issues)
    journey.day(30)
    assert "trial:convert" in buttons_in(slack, "cloud-trial-acme-corp", journey.trial_id)
    assert "Convert" in journey.press("convert", "carol.ce@example.com")
    assert journey.state == "converted"
    assert any("converted to paid" in t for t in journey.channel("cloud-trial-acme-corp"))
    assert any(":tada:" in u["text"] for u in slack.updates), "the alert shows the outcome"


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
    triggers = [h["trigger"] for h in journey.trial()["history"]]
    assert triggers == ["send_to_triage", "qualify", "mark_instance_ready", "hand_off", "extend", "remind_decision", "convert"]


def test_3_2_a_qualified_lead_that_never_uses_its_instance_is_terminated(journey, slack, github, smtp):
    owners = qualify_and_deliver_instance(journey, slack, github, ready_by_comment=True)
    journey.start = journey.clock.now()
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
