"""People see their own work: the App Home tab published through the outbox and the real
slack_sdk WebClient to a local Slack (views.publish), /trial mine by deadline, and the Home tab
opened (Slack's Events API, signed)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import make_settings
from tests.support.block_kit import assert_valid_view
from tests.support.config import ACCOUNTS, STAFF, write_config
from tests.support.signed import block_action, post_interaction, signing_settings, slack_headers
from tests.support.steps import act, signup
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.services.app_home import HomeViews
from trialflow.services.coverage import reassign_from_inactive
from trialflow.services.reference import load_reference_data
from trialflow.services.slack_commands import handle_slash_command

CAROL, IVY, NINA, ALICE = "U0CE00001", "U0SDR0001", "U0SDR0002", "U0AE00001"
CHRIS, ADA = "U0CE00002", "U0ADMIN01"


@pytest.fixture
def config_dir(tmp_path):
    return write_config(tmp_path / "config", accounts=ACCOUNTS + "hooli.com,Hooli,false,false,,,\n")


@pytest.fixture
def settings(db_url, config_dir, fake_slack):
    return make_settings(db_url, config_dir, **fake_slack.settings(), **signing_settings())


@pytest.fixture
def deliver(runtime, settings):
    return Deliverer(runtime, {"slack": SlackTransport(settings, homes=HomeViews(runtime)),
                               "email": DryRunTransport("email"), "github": DryRunTransport("github")}).drain_all




def home_of(fake_slack, user_id: str) -> dict:
    view = fake_slack.home_views[user_id][-1]
    assert_valid_view({k: v for k, v in view.items() if k not in ("id", "hash")})
    return view


def buttons(view: dict) -> list[tuple[str, list[str]]]:
    """(trial id, its buttons' actions) in the order the view lists them."""
    return [(b["elements"][0]["value"], [e["action_id"].split(":", 1)[1] for e in b["elements"]])
            for b in view["blocks"] if b["type"] == "actions"]


def texts(view: dict) -> str:
    return "\n".join(b["text"]["text"] if b["type"] in ("section", "header") else b["elements"][0]["text"]
                     for b in view["blocks"] if b["type"] in ("section", "header", "context"))


def test_a_ce_sees_their_trials_soonest_deadline_first_with_the_channels_buttons_republished_on_change(
        runtime, clock, fake_slack, deliver):
    bob = signup(runtime, "bob@acme-corp.com")         # Carol is Acme's CE
    clock.advance(days=1)
    gina = signup(runtime, "gina@globex.com")          # Carol again, first in the CE rotation
    deliver()
    assert len(fake_slack.home_views[CAROL]) == 1, "two changes before delivery: one publish"
    home = home_of(fake_slack, CAROL)
    assert "Your open trials (2), soonest deadline first" in texts(home)
    active = ["keep", "extend", "convert", "terminate"]
    assert buttons(home) == [(bob, active), (gina, active)]   # Bob's day-12 heads-up comes first
    assert "next: termination heads up on" in texts(home)
    mine = handle_slash_command(runtime, {"user_id": CAROL, "text": "mine"})["text"]
    assert mine.index(bob) < mine.index(gina) and "soonest deadline first" in mine

    act(runtime, bob, "extend", CAROL, days=15)         # Bob's next deadline moves to day 30
    deliver()
    deliver()
    assert len(fake_slack.home_views[CAROL]) == 2
    assert buttons(home_of(fake_slack, CAROL)) == [(gina, active), (bob, ["extend", "convert", "terminate"])]
    mine = handle_slash_command(runtime, {"user_id": CAROL, "text": "mine"})["text"]
    assert mine.index(gina) < mine.index(bob)


def listed(fake_slack, user_id: str) -> list[str]:
    """The trials the person's Home tab lists now (its last publish)."""
    return [trial_id for trial_id, _ in buttons(home_of(fake_slack, user_id))]


def test_a_reassignment_takes_the_trial_off_the_replaced_persons_tab_even_when_they_were_deactivated(
        runtime, clock, fake_slack, deliver, config_dir):
    bob = signup(runtime, "bob@acme-corp.com")         # Carol is Acme's CE
    deliver()
    assert listed(fake_slack, CAROL) == [bob] and CHRIS not in fake_slack.home_views

    act(runtime, bob, "reassign", ADA, ce="chris.ce@example.com")
    deliver()
    assert listed(fake_slack, CHRIS) == [bob]
    assert listed(fake_slack, CAROL) == [], "Carol's tab was republished without the trial"
    assert "No open trials where you (Carol CE)" in texts(home_of(fake_slack, CAROL))

    # Chris is deactivated (staff.csv): the coverage sweep gives the trial to the next CE, and Chris's
    # tab, though no longer active, stops listing it.
    (config_dir / "staff.csv").write_text(STAFF.replace("chris-ce,true", "chris-ce,false"))
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    [moved] = reassign_from_inactive(runtime)
    assert (moved.trial_id, moved.before, moved.after) == (bob, "chris.ce@example.com", "carol.ce@example.com")
    deliver()
    assert listed(fake_slack, CHRIS) == [] and listed(fake_slack, CAROL) == [bob]


def test_a_button_pressed_in_the_home_tab_takes_its_step_and_the_tab_follows(client, runtime, clock, fake_slack,
                                                                             deliver):
    bob = signup(runtime, "bob@acme-corp.com")
    deliver()
    pressed = block_action("terminate", bob, CAROL)
    pressed.pop("response_url", None)                       # a Home tab's button has none
    pressed["container"] = {"type": "view", "view_id": fake_slack.home_views[CAROL][-1]["id"]}
    assert post_interaction(client, pressed, clock.now()).status_code == 200
    deliver()
    assert client.get(f"/api/trials/{bob}").json()["state"] == "terminated"
    assert "Your open trials (0)" in texts(home_of(fake_slack, CAROL))


def test_sdrs_see_the_triage_queue_with_each_leads_score_and_why_it_is_there(runtime, fake_slack, deliver):
    for email in ("pat@gmail.com", "gavin@hooli.com", "sam@unheard-of.example"):
        signup(runtime, email)
    deliver()
    for sdr in (IVY, NINA):
        home = home_of(fake_slack, sdr)
        text = texts(home)
        assert "Triage queue (3)" in text
        assert "why triage: public mailbox (gmail.com)" in text
        assert "why triage: known account Hooli, not pre-qualified" in text
        assert "why triage: unknown domain: unheard-of.example is in no account" in text
        assert text.count("lead score: MQL") == 3
        assert {actions for _trial, actions in map(lambda b: (b[0], tuple(b[1])), buttons(home))} == {
            ("qualify", "disqualify")}
    assert len(fake_slack.home_views[IVY]) == 1, "three leads in a burst: one publish"


def test_opening_the_home_tab_publishes_it_once_per_slack_event(client, clock, fake_slack, deliver):
    challenge = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                            "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl"}).encode()
    answer = client.post("/slack/events", content=challenge, headers=slack_headers(challenge, clock.now()))
    assert answer.status_code == 200 and answer.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    event = json.dumps({"type": "event_callback", "event_id": "Ev0HOME0001", "team_id": "T0001",
                        "event": {"type": "app_home_opened", "user": ALICE, "channel": "D0HOME", "tab": "home",
                                  "event_ts": "1700000000.000100"}}).encode()
    for retry in ("", "1"):   # Slack retries an event it thinks was not taken
        headers = slack_headers(event, clock.now(), **({"x-slack-retry-num": retry} if retry else {}))
        assert client.post("/slack/events", content=event, headers=headers).status_code == 200
    deliver()
    assert len(fake_slack.home_views[ALICE]) == 1
    assert "No open trials where you (Alice AE)" in texts(home_of(fake_slack, ALICE))
    forged = client.post("/slack/events", content=event, headers=slack_headers(event, clock.now(), secret="wrong"))
    assert forged.status_code == 401
