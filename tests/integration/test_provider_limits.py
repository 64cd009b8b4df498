"""Provider limits end to end: the longest data a person can give us goes through the real
slack_sdk and PyGithub clients to local servers that refuse what Slack and GitHub refuse
(Block Kit's limits, checked with slack_sdk's models; GitHub's 256-character titles). And when a
provider does refuse a payload of ours, the effect is parked once, said clearly, and never sent again."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.block_kit import assert_valid_message, assert_valid_view
from tests.support.config import ACCOUNTS, INSTANCES, STAFF, write_config
from tests.support.outbox import enqueue_effect, outbox_row
from tests.support.signed import (
    block_action,
    interactive_fake_slack,
    post_interaction,
    signing_settings,
    view_submission,
)
from trialflow.db import tables
from trialflow.delivery.core import retry
from trialflow.delivery.wiring import build_deliverer
from trialflow.inert import code_span
from trialflow.services.directory import Directory
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run

LONG_DOMAIN = ".".join(["e" * 63, "f" * 63, "g" * 63, "h" * 56, "com"])   # 252: the longest an email can have
LONG_EMAIL = "b@" + LONG_DOMAIN                                            # 254 characters
DOMAIN_249 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 54, "io"])
NOTE = ("Too small & self-funded: <maybe later> " * 15)[:500]
# 120 AEs with 200-character names: more than a select may offer, each longer than an option's text.
MANY_AES = "".join(f"ae{i:03d}@example.com,{('Ann & Bob ' * 20)[:196]}{i:03d},ae,U0AEX{i:04d},,true\n"
                   for i in range(120))


@pytest.fixture
def db_url(tmp_path, sqlite_template):
    """SQLite only: what is checked here is the text, the same on either database."""
    import shutil
    target = tmp_path / "trialflow.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def slack():
    with interactive_fake_slack() as fake:
        yield fake


@pytest.fixture
def config_dir(tmp_path):
    return write_config(tmp_path / "config", ACCOUNTS, STAFF + MANY_AES, INSTANCES)


@pytest.fixture
def settings(db_url, config_dir, slack, fake_github):
    return make_settings(db_url, config_dir, **signing_settings(), **slack.settings(), **fake_github.settings(),
                         github_seconds_between_writes=0)


@pytest.fixture
def deliverer(runtime):
    return build_deliverer(runtime)


def signup(client, email: str, **extra) -> str:
    response = client.post("/api/signups", json={"email": email, **extra})
    assert response.status_code == 201, response.text
    return response.json()["trial_id"]


def open_form(client, clock, slack, action: str, trial_id: str, user: str) -> dict:
    opened = len(slack.views)
    response = post_interaction(client, block_action(action, trial_id, user, response_url=slack.response_url()),
                                clock.now())
    assert response.status_code == 200
    assert len(slack.views) == opened + 1, f"Slack refused the {action} form: {slack.calls('views.open')[-1].error}"
    assert_valid_view(slack.views[-1])
    return slack.views[-1]


CONTENT_ERRORS = {"invalid_blocks", "msg_too_long", "invalid_arguments", "too_long"}


def refusals(slack) -> list[str]:
    """Slack's refusals of what trialflow sent (not the everyday answers like name_taken)."""
    return [f"{r.method}: {r.error}" for r in slack.requests if r.error in CONTENT_ERRORS]


def all_delivered(runtime) -> dict[str, str]:
    with runtime.session_factory() as s:
        rows = s.execute(select(tables.outbox.c.key, tables.outbox.c.status, tables.outbox.c.last_error)).all()
    return {r.key: f"{r.status} {r.last_error or ''}".strip() for r in rows if r.status != "delivered"}


def test_a_long_lead_disqualified_with_a_500_character_note_reaches_slack_whole(client, runtime, clock, slack,
                                                                                 deliverer):
    # Names of "&" (five characters each once escaped), a 254-character email and a 500-character
    # note made a 3,099-character chat.update section: Slack's invalid_blocks, and the alert kept its buttons.
    trial_id = signup(client, LONG_EMAIL, name="&" * 200, company="&" * 200)
    deliverer.drain_all()
    form = open_form(client, clock, slack, "disqualify", trial_id, "U0SDR0001")
    submitted = post_interaction(client, view_submission(form, "U0SDR0001", {"reason": ("select", "other"),
                                                                            "note": NOTE}), clock.now())
    assert submitted.status_code == 200 and submitted.content == b""

    deliverer.drain_all()

    assert all_delivered(runtime) == {} and refusals(slack) == []
    [update] = slack.updates
    assert_valid_message(update)
    assert len(update["blocks"][0]["text"]["text"]) <= 3000
    assert "disqualified by <@U0SDR0001>: Other: Too small &amp; self-funded: &lt;maybe later&gt;" in update["text"]
    assert update["text"].endswith(". Self-hosting email sent.")

    # The same form submitted again is answered with a view that explains, also within Slack's limits.
    again = post_interaction(client, view_submission(form, "U0SDR0001", {"reason": ("select", "other"), "note": NOTE}),
                             clock.now())
    assert again.json()["response_action"] == "update"
    assert_valid_view(again.json()["view"])
    assert "Already done" in again.json()["view"]["blocks"][0]["text"]["text"]


def test_a_249_character_domain_still_gets_its_instance_request_issue(client, runtime, clock, slack, fake_github,
                                                                      deliverer):
    # Its title was 279 characters: GitHub's 422, parked, and the qualified lead never got an instance.
    trial_id = signup(client, f"lee@{DOMAIN_249}", name="Lee")
    form = open_form(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    post_interaction(client, view_submission(form, "U0SDR0001", {"opportunity_id": "0" * 64}), clock.now())

    deliverer.drain_all()

    assert all_delivered(runtime) == {} and refusals(slack) == []
    [issue] = fake_github.issues
    assert len(issue["title"]) <= 256
    assert issue["title"].startswith("Cloud trial instance request: aaa") and issue["title"].endswith(".io")
    assert f"- Domain: {code_span(DOMAIN_249)}" in issue["body"]
    assert client.get(f"/api/trials/{trial_id}").json()["state"] == "instance_requested"


def test_every_form_opens_in_slack_with_the_longest_data_and_a_crowded_staff(client, runtime, clock, slack, deliverer):
    trial_id = signup(client, LONG_EMAIL, name="&" * 200, company="&" * 200)
    for action in ("qualify", "disqualify", "reassign"):
        open_form(client, clock, slack, action, trial_id, "U0SDR0001")
    form = open_form(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    post_interaction(client, view_submission(form, "U0SDR0001", {}), clock.now())
    with runtime.session_factory() as s:
        cloud = Directory(s).by_slack_id("U0CLOUD01")
    run(runtime, Command(trial_id, "mark_instance_ready", "cody-cloud", cloud, {"host": "x" * 63 + ".sourcegraph.com"}))
    with runtime.session_factory() as s:
        ce = Directory(s).by_email(s.scalar(select(tables.trials.c.ce).where(tables.trials.c.id == trial_id)))
    run(runtime, Command(trial_id, "hand_off", ce.slack_user_id, ce, {}))
    form = open_form(client, clock, slack, "extend", trial_id, ce.slack_user_id)
    reassign = next(v for v in slack.views if v["callback_id"] == "trial:reassign")
    ae_options = reassign["blocks"][2]["element"]["options"]
    assert len(ae_options) == 100 and ae_options[-1]["value"] == "next"
    assert form["callback_id"] == "trial:extend"

    deliverer.drain_all()
    assert all_delivered(runtime) == {} and refusals(slack) == []
    for message in slack.messages + slack.updates:
        assert_valid_message(message)


def test_the_license_rotation_reminder_fits_slack(runtime, clock, deliverer, slack):
    with runtime.session_factory() as s, s.begin():
        s.execute(tables.kv.insert().values(key="license_rotated_at", value=(clock.now() - timedelta(days=8)).isoformat()))
    assert "license rotation reminder posted" in sweep(runtime).actions
    deliverer.drain_all()
    [reminder] = slack.messages_in("cloud-trial-alerts")
    assert_valid_message(reminder)


# --- a provider refusing what we built ------------------------------------------------------

def test_a_message_slack_refuses_is_parked_once_reported_once_and_never_sent_again(runtime, clock, slack, deliverer):
    # A section over 3,000 characters, as an effect written before texts were fitted would have it.
    text = "x" * 3001
    effect_id = enqueue_effect(runtime, "tr_old:1:send_to_triage:alert", "slack.message",
                               {"channel": "cloud-trial-alerts", "text": text,
                                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}, "tr_old")

    assert deliverer.drain() == {"failed": 1}
    parked = outbox_row(runtime, effect_id)
    assert parked.status == "failed" and parked.attempts == 1
    assert "Slack refused chat.postMessage: invalid_blocks" in parked.last_error
    assert "3000" in parked.last_error and "the same content would be rejected again" in parked.last_error

    # Retried by hand, it is refused the same way: parked again, and the channel is told only once.
    assert retry(runtime, effect_id)
    for _ in range(3):
        clock.advance(hours=1)
        deliverer.drain_all()
    posts = [r for r in slack.calls("chat.postMessage") if r.error == "invalid_blocks"]
    assert len(posts) == 2  # the first attempt and the one retry asked for, no more
    assert outbox_row(runtime, effect_id).status == "failed"
    [notice] = [m for m in slack.messages_in("cloud-trial-alerts")]
    assert_valid_message(notice)
    assert "invalid_blocks" in notice["text"] and "not one to retry" in notice["text"]
    assert "outbox retry" not in notice["text"]


def test_an_issue_github_refuses_is_parked_once_with_githubs_reason(runtime, clock, fake_github, deliverer, slack):
    effect_id = enqueue_effect(runtime, "tr_old:1:qualify:instance-request", "github.issue",
                               {"issue_kind": "instance-request", "title": "Cloud trial instance request: " + "a" * 249,
                                "body": "old", "labels": ["cloud-trial"], "ref": "instance-request:tr_old"}, "tr_old")

    assert deliverer.drain() == {"failed": 1}
    for _ in range(3):
        clock.advance(hours=1)
        deliverer.drain_all()

    parked = outbox_row(runtime, effect_id)
    assert parked.status == "failed" and parked.attempts == 1
    assert "422 Validation Failed (title is too long (maximum is 256 characters))" in parked.last_error
    assert "the same content would be rejected again" in parked.last_error
    assert len([r for r in fake_github.requests if r.method == "POST"]) == 1
    assert fake_github.issues == []
    [notice] = slack.messages_in("cloud-trial-alerts")
    assert "github.issue" in notice["text"] and "outbox retry" not in notice["text"]
