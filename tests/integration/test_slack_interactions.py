"""Buttons and modals over HTTP, signed like Slack signs them, against a local Slack for views.open
and response URLs (the real slack_sdk clients)."""
from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.config import STAFF
from tests.support.signed import (
    SLACK_SECRET,
    block_action,
    interactive_fake_slack,
    post_interaction,
    signing_settings,
    view_submission,
)
from trialflow.db import tables
from trialflow.services.trials import Command, run

SLACK_IDS = {line.split(",")[0]: line.split(",")[3] for line in STAFF.strip().splitlines()[1:]}


@pytest.fixture
def slack():
    with interactive_fake_slack() as fake:
        yield fake


@pytest.fixture
def settings(db_url, config_dir, slack):
    return make_settings(db_url, config_dir, **signing_settings(), **slack.settings())


def signup(client, email: str, **extra) -> str:
    response = client.post("/api/signups", json={"email": email, **extra})
    assert response.status_code == 201, response.text
    return response.json()["trial_id"]


def trial(client, trial_id: str) -> dict:
    return client.get(f"/api/trials/{trial_id}").json()


def counts(runtime, trial_id: str) -> tuple[int, int]:
    """(history entries, outbox effects) of one trial: what a refused or repeated request must not change."""
    with runtime.session_factory() as s:
        history = s.scalar(select(func.count()).select_from(tables.trial_history).where(tables.trial_history.c.trial_id == trial_id))
        effects = s.scalar(select(func.count()).select_from(tables.outbox).where(tables.outbox.c.trial_id == trial_id))
    return history, effects


def effects(runtime, trial_id: str, kind: str) -> list[dict]:
    with runtime.session_factory() as s:
        return [r.payload for r in s.execute(select(tables.outbox.c.payload).where(
            tables.outbox.c.trial_id == trial_id, tables.outbox.c.kind == kind).order_by(tables.outbox.c.id))]


def ready_trial(runtime, client, email: str = "sam@stark-industries.com") -> str:
    """A qualified lead whose instance the cloud team has reported ready (set up through the services)."""
    trial_id = signup(client, email, name="Sam", company="Stark Industries")
    run(runtime, Command(trial_id, "qualify", "U0SDR0001", _person(runtime, "U0SDR0001"), {"opportunity_id": "006X"}))
    run(runtime, Command(trial_id, "mark_instance_ready", "cody-cloud", _person(runtime, "U0CLOUD01"),
                         {"host": "stark-industries.sourcegraph.com"}))
    return trial_id


def _person(runtime, slack_id: str):
    from trialflow.services.directory import Directory
    with runtime.session_factory() as s:
        return Directory(s).by_slack_id(slack_id)


def press(client, clock, slack, action: str, trial_id: str, user: str, **kw):
    return post_interaction(client, block_action(action, trial_id, user, response_url=slack.response_url(), **kw), clock.now())


# --- signatures -------------------------------------------------------------------------------------

def test_an_unsigned_forged_or_stale_interaction_is_refused_and_changes_nothing(client, runtime, clock, slack):
    trial_id = signup(client, "sam@stark-industries.com")
    payload = block_action("disqualify", trial_id, "U0SDR0001", response_url=slack.response_url())
    before = counts(runtime, trial_id)
    body = json.dumps(payload)
    assert client.post("/slack/interactions", data={"payload": body}).status_code == 401
    assert post_interaction(client, payload, clock.now(), secret="not-the-signing-secret").status_code == 401
    assert post_interaction(client, payload, clock.now() - timedelta(minutes=5, seconds=1)).status_code == 401
    forged = post_interaction(client, payload, clock.now())
    assert forged.status_code == 200  # the genuine one goes through ...
    assert slack.views  # ... and opened the form
    # ... but the same signed bytes replayed later than five minutes are refused.
    from tests.support.signed import interaction_body, slack_headers
    raw = interaction_body(payload)
    headers = slack_headers(raw, clock.now())
    clock.advance(minutes=5, seconds=1)
    assert client.post("/slack/interactions", content=raw, headers=headers).status_code == 401
    assert counts(runtime, trial_id) == before
    assert trial(client, trial_id)["state"] == "triage"


def test_without_a_signing_secret_slack_requests_are_refused_with_a_clear_message(db_url, config_dir, clock):
    from fastapi.testclient import TestClient

    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as c:
        response = post_interaction(c, block_action("qualify", "tr_0", "U0SDR0001"), clock.now())
    rt.close()
    assert response.status_code == 503
    assert "TRIALFLOW_SLACK_SIGNING_SECRET" in response.json()["error"]


# --- modals ---------------------------------------------------------------------------------------

def test_an_sdr_pressing_qualify_gets_a_form_and_submitting_it_requests_the_instance(client, runtime, clock, slack):
    trial_id = signup(client, "sam@stark-industries.com", name="Sam", company="Stark Industries")
    pressed = press(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    assert pressed.status_code == 200 and pressed.content == b""
    [view] = slack.views
    assert view["callback_id"] == "trial:qualify"
    assert json.loads(view["private_metadata"])["trial_id"] == trial_id
    assert trial(client, trial_id)["state"] == "triage", "nothing happens until the form is submitted"

    submitted = post_interaction(client, view_submission(view, "U0SDR0001", {"opportunity_id": "006ABC123"}), clock.now())
    assert submitted.status_code == 200 and submitted.content == b""   # an empty answer closes the modal
    detail = trial(client, trial_id)
    assert detail["state"] == "instance_requested"
    assert detail["opportunity_id"] == "006ABC123"
    assert detail["assignees"]["sdr"] == "ivy.inbound@example.com"
    assert detail["history"][-1]["actor"] == "U0SDR0001"
    [issue] = effects(runtime, trial_id, "github.issue")
    assert issue["issue_kind"] == "instance-request" and detail["assignees"]["ce"] in issue["body"]
    [confirmation] = slack.responses()
    assert "Qualify" in confirmation["text"] and "instance requested" in confirmation["text"]
    assert confirmation["response_type"] == "ephemeral"


def test_disqualifying_asks_for_a_criterion_and_sends_the_self_hosting_email(client, runtime, clock, slack):
    trial_id = signup(client, "tom@tinytown.dev", name="Tom")
    press(client, clock, slack, "disqualify", trial_id, "U0SDR0001")
    [view] = slack.views
    reasons = [o["value"] for o in view["blocks"][2]["element"]["options"]]
    assert "needs_self_hosted" in reasons and "other" in reasons

    missing = post_interaction(client, view_submission(view, "U0SDR0001", {}, view_id="V0DISQ0001"), clock.now())
    assert missing.json()["response_action"] == "errors" and "reason" in missing.json()["errors"]
    assert trial(client, trial_id)["state"] == "triage"

    corrected = view_submission(view, "U0SDR0001", {"reason": ("select", "needs_self_hosted"), "note": "air-gapped"},
                                view_id="V0DISQ0001")
    assert post_interaction(client, corrected, clock.now()).status_code == 200
    detail = trial(client, trial_id)
    assert detail["state"] == "disqualified"
    assert detail["history"][-1]["detail"]["reason"] == "Needs self-hosting (code on-premises, air-gapped, compliance): air-gapped"
    [email] = effects(runtime, trial_id, "email")
    assert email["template"] == "self_host" and email["to"] == "tom@tinytown.dev"


def test_reassigning_from_the_form_changes_the_ae_and_ce(client, runtime, clock, slack):
    trial_id = signup(client, "sam@stark-industries.com")
    run(runtime, Command(trial_id, "qualify", "U0SDR0001", _person(runtime, "U0SDR0001"), {}))
    before = trial(client, trial_id)["assignees"]
    press(client, clock, slack, "reassign", trial_id, "U0SDR0001")
    [view] = slack.views
    ae_options = [o["value"] for o in view["blocks"][2]["element"]["options"]]
    assert "old.ae@example.com" not in ae_options, "inactive staff are not offered"
    new_ae = next(e for e in ("alice.ae@example.com", "andy.ae@example.com") if e != before["ae"])
    new_ce = next(e for e in ("carol.ce@example.com", "chris.ce@example.com") if e != before["ce"])
    post_interaction(client, view_submission(view, "U0SDR0001", {"ae": ("select", new_ae), "ce": ("select", new_ce)}),
                     clock.now())
    assert trial(client, trial_id)["assignees"] == {**before, "ae": new_ae, "ce": new_ce}


def test_extending_by_more_than_fifteen_days_also_asks_for_a_license_change(client, runtime, clock, slack):
    trial_id = signup(client, "bob@acme-corp.com")           # named account: Carol is the CE
    press(client, clock, slack, "extend", trial_id, SLACK_IDS["carol.ce@example.com"])
    [view] = slack.views
    post_interaction(client, view_submission(view, SLACK_IDS["carol.ce@example.com"],
                                             {"days": ("select", "30"), "reason": "evaluation with 3 teams"}), clock.now())
    detail = trial(client, trial_id)
    assert detail["state"] == "extended"
    assert detail["history"][-1]["detail"]["license_change"] is True
    kinds = [i["issue_kind"] for i in effects(runtime, trial_id, "github.issue")]
    assert kinds == ["trial-extend", "license-change"]
    assert detail["deadlines"]["day30_decision"].startswith(str((clock.now() + timedelta(days=45)).date()))


def test_when_slack_will_not_open_the_form_the_person_is_told(client, clock, slack):
    trial_id = signup(client, "sam@stark-industries.com")
    slack.fail("views.open", "expired_trigger_id")
    answer = press(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    assert "expired_trigger_id" in answer.json()["text"]
    assert "expired_trigger_id" in slack.responses()[0]["text"]
    assert trial(client, trial_id)["state"] == "triage"


# --- who may act ----------------------------------------------------------------------------------

def test_someone_who_is_not_an_sdr_cannot_qualify_and_the_attempt_is_logged(client, runtime, clock, slack, caplog):
    trial_id = signup(client, "sam@stark-industries.com")
    before = counts(runtime, trial_id)
    with caplog.at_level(logging.WARNING, logger="trialflow.interactions"):
        answer = press(client, clock, slack, "qualify", trial_id, SLACK_IDS["alice.ae@example.com"])
    assert answer.status_code == 200
    assert answer.json()["response_type"] == "ephemeral" and "only an SDR" in answer.json()["text"]
    assert slack.views == [], "no form for someone who may not submit it"
    assert counts(runtime, trial_id) == before
    assert any(trial_id in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    assert SLACK_SECRET not in caplog.text


def test_a_slack_user_who_is_not_staff_cannot_act(client, runtime, clock, slack):
    trial_id = signup(client, "bob@acme-corp.com")
    before = counts(runtime, trial_id)
    answer = press(client, clock, slack, "terminate", trial_id, "U0STRANGER")
    assert "not in staff.csv" in answer.json()["text"]
    assert counts(runtime, trial_id) == before and trial(client, trial_id)["state"] == "active"


def test_only_the_trials_own_ce_or_ae_can_hand_off(client, runtime, clock, slack):
    trial_id = ready_trial(runtime, client)
    ce = trial(client, trial_id)["assignees"]["ce"]
    other_ce = next(e for e in ("carol.ce@example.com", "chris.ce@example.com") if e != ce)
    refused = press(client, clock, slack, "hand_off", trial_id, SLACK_IDS[other_ce])
    assert "the trial's CE or AE" in refused.json()["text"]
    done = press(client, clock, slack, "hand_off", trial_id, SLACK_IDS[ce])
    assert "Handed off" in done.json()["text"]
    assert trial(client, trial_id)["state"] == "active"


# --- twice ----------------------------------------------------------------------------------------

def test_pressing_handed_off_twice_changes_nothing_the_second_time(client, runtime, clock, slack):
    trial_id = ready_trial(runtime, client)
    ce_slack = SLACK_IDS[trial(client, trial_id)["assignees"]["ce"]]
    first = press(client, clock, slack, "hand_off", trial_id, ce_slack)
    assert first.json()["text"].startswith(":white_check_mark:")
    after_first = counts(runtime, trial_id)
    second = press(client, clock, slack, "hand_off", trial_id, ce_slack)
    assert second.status_code == 200
    assert "Already done" in second.json()["text"] and f"<@{ce_slack}>" in second.json()["text"]
    assert counts(runtime, trial_id) == after_first
    assert [h["trigger"] for h in trial(client, trial_id)["history"]].count("hand_off") == 1


def test_a_step_that_keeps_the_state_is_still_done_only_once(client, runtime, clock, slack):
    trial_id = signup(client, "bob@acme-corp.com")
    carol = SLACK_IDS["carol.ce@example.com"]
    assert "Keep" in press(client, clock, slack, "keep", trial_id, carol).json()["text"]
    after_first = counts(runtime, trial_id)
    again = press(client, clock, slack, "keep", trial_id, SLACK_IDS["alice.ae@example.com"])
    assert "Already done" in again.json()["text"] and f"<@{carol}>" in again.json()["text"]
    assert counts(runtime, trial_id) == after_first


def test_a_slack_retry_of_the_same_press_is_acknowledged_without_doing_anything(client, runtime, clock, slack):
    trial_id = signup(client, "gina@globex.com")
    payload = block_action("convert_to_opportunity", trial_id, "U0SDR0001", response_url=slack.response_url())
    assert post_interaction(client, payload, clock.now()).json()["text"].startswith(":white_check_mark:")
    after_first = counts(runtime, trial_id)
    retry = post_interaction(client, payload, clock.now(), **{"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    assert retry.status_code == 200 and retry.content == b""
    assert counts(runtime, trial_id) == after_first
    assert len(slack.responses()) == 1


def test_a_modal_submitted_twice_by_a_retry_acts_once(client, runtime, clock, slack):
    trial_id = signup(client, "sam@stark-industries.com")
    press(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    submission = view_submission(slack.views[0], "U0SDR0001", {"opportunity_id": "006"})
    post_interaction(client, submission, clock.now())
    after_first = counts(runtime, trial_id)
    retry = post_interaction(client, submission, clock.now(), **{"x-slack-retry-num": "1"})
    assert retry.status_code == 200 and retry.content == b""
    assert counts(runtime, trial_id) == after_first


def test_two_owners_pressing_converted_at_the_same_moment_convert_once(client, runtime, clock, slack):
    trial_id = signup(client, "bob@acme-corp.com")       # Carol (CE) and Alice (AE) may both convert
    answers: list[str] = []
    start = threading.Barrier(2)

    def press_as(user: str) -> None:
        start.wait()
        answers.append(press(client, clock, slack, "convert", trial_id, user).json()["text"])

    threads = [threading.Thread(target=press_as, args=(SLACK_IDS[e],)) for e in ("carol.ce@example.com", "alice.ae@example.com")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.split(" ")[0] for a in answers) == [":information_source:", ":white_check_mark:"]
    history = trial(client, trial_id)["history"]
    assert [h["trigger"] for h in history].count("convert") == 1
    assert len(effects(runtime, trial_id, "slack.update")) == 1


# --- not ours --------------------------------------------------------------------------------------

def test_a_button_that_is_not_trialflows_is_acknowledged_and_ignored(client, clock, slack):
    from tests.support.signed import fixture_json
    answer = post_interaction(client, fixture_json("slack/block_actions.json"), clock.now())
    assert answer.status_code == 200 and answer.content == b""
    assert slack.views == [] and slack.responses() == []


def test_a_button_for_a_trial_that_does_not_exist_says_so(client, clock, slack):
    answer = press(client, clock, slack, "hand_off", "tr_00000000deadbeef", "U0CE00001")
    assert "no trial `tr_00000000deadbeef`" in answer.json()["text"]


def test_a_requested_or_queued_trial_can_be_terminated_so_it_does_not_hold_capacity_forever(db_url, config_dir, clock, slack):
    from fastapi.testclient import TestClient

    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    from trialflow.services.sweep import sweep
    rt = Runtime(make_settings(db_url, config_dir, instance_cap=1, **signing_settings(), **slack.settings()), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as c:
        def qualify(email: str) -> str:
            trial_id = signup(c, email, name="Lead", company="Some Company")
            press(c, clock, slack, "qualify", trial_id, "U0SDR0001")
            post_interaction(c, view_submission(slack.views[-1], "U0SDR0001", {}), clock.now())
            return trial_id

        def terminate(trial_id: str, user: str | None = None) -> str:
            user = user or SLACK_IDS[trial(c, trial_id)["assignees"]["ce"]]
            press(c, clock, slack, "terminate", trial_id, user)
            return trial(c, trial_id)["state"]

        sam, lee, tom = qualify("sam@stark-industries.com"), qualify("lee@randomcorp.dev"), qualify("tom@tinytown.dev")
        assert [trial(c, t)["state"] for t in (sam, lee, tom)] == ["instance_requested", "waiting_for_capacity",
                                                                    "waiting_for_capacity"]
        assert terminate(tom, "U0AE00009") == "waiting_for_capacity", "a former AE is refused"
        assert terminate(tom) == "terminated", "a queued trial leaves the queue"
        assert terminate(sam) == "terminated", "a requested instance is cancelled"
        [cancel] = effects(rt, sam, "github.comment")
        assert cancel["ref"] == f"instance-request:{sam}", "the cloud team is told on the request itself"
        assert "stop provisioning" in cancel["body"]
        assert [i["issue_kind"] for i in effects(rt, sam, "github.issue")] == ["instance-request"], \
            "no 'terminate instance None' issue: there is no instance yet"
        assert effects(rt, tom, "github.issue") == [] and effects(rt, tom, "github.comment") == [], \
            "nothing was ever asked of the cloud team for a queued trial"
        sweep(rt)
        states = [trial(c, t)["state"] for t in (sam, lee, tom)]
    rt.close()
    assert states == ["terminated", "instance_requested", "terminated"], "the freed capacity went to the queue"


def test_a_lead_outside_accounts_csv_gets_an_account_named_after_its_domain_not_the_company_it_typed(client, runtime, clock, slack):
    trial_id = signup(client, "mallory@evil-corp.dev", name="Mallory", company="Acme Corp")
    press(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    post_interaction(client, view_submission(slack.views[-1], "U0SDR0001", {}), clock.now())
    detail = trial(client, trial_id)
    assert detail["state"] == "instance_requested"
    assert detail["account_name"] == "evil-corp.dev" and detail["company"] == "Acme Corp"
    [channel] = effects(runtime, trial_id, "slack.channel")
    assert channel["name"] == "cloud-trial-evil-corp-dev", "not Acme's #cloud-trial-acme-corp"


def test_without_an_active_ce_a_lead_cannot_be_qualified_and_nothing_changes(db_url, tmp_path, clock, slack):
    from fastapi.testclient import TestClient

    from tests.support.config import write_config
    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    no_ce = "\n".join(line for line in STAFF.splitlines() if ",ce," not in line) + "\n"
    config_dir = write_config(tmp_path / "no-ce", staff=no_ce)
    rt = Runtime(make_settings(db_url, config_dir, **signing_settings(), **slack.settings()), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as c:
        trial_id = signup(c, "sam@stark-industries.com", name="Sam", company="Stark Industries")
        before = counts(rt, trial_id)
        pressed = press(c, clock, slack, "qualify", trial_id, "U0SDR0001")
        detail = trial(c, trial_id)
    rt.close()
    assert pressed.status_code == 200 and slack.views == [], "no form to fill in for nothing"
    [answer] = slack.responses()
    assert "no active CE in staff.csv to assign" in answer["text"] and answer["response_type"] == "ephemeral"
    assert detail["state"] == "triage" and detail["assignees"]["ce"] is None and detail["account_name"] is None
    assert counts(rt, trial_id) == before


def test_a_qualify_form_submitted_after_the_last_ce_left_is_refused_and_changes_nothing(client, runtime, clock, slack, tmp_path):
    from tests.support.config import write_config
    from trialflow.services.reference import load_reference_data
    trial_id = signup(client, "sam@stark-industries.com", name="Sam", company="Stark Industries")
    press(client, clock, slack, "qualify", trial_id, "U0SDR0001")
    no_ce = "\n".join(line for line in STAFF.splitlines() if ",ce," not in line) + "\n"
    load_reference_data(runtime.session_factory, write_config(tmp_path / "no-ce", staff=no_ce), clock.now())
    before = counts(runtime, trial_id)
    submitted = post_interaction(client, view_submission(slack.views[-1], "U0SDR0001", {}), clock.now())
    assert "no active CE in staff.csv to assign" in json.dumps(submitted.json())
    assert any("no active CE in staff.csv to assign" in r["text"] for r in slack.responses())
    assert trial(client, trial_id)["state"] == "triage" and counts(runtime, trial_id) == before
