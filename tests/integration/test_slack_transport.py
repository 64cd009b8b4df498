"""Slack effects delivered by the real Deliverer and slack_sdk's WebClient to a local server
that answers like Slack's Web API (shapes from ../shared/fixtures/slack/web_api)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.outbox import DiesAfterTheCall, WorkerKilled, enqueue_effect, outbox_row
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.slack import CLOCK_SKEW_SECONDS, SlackTransport
from trialflow.delivery.wiring import build_deliverer

TRIAL = "tr_slacktransport1"


@pytest.fixture
def settings(db_url, config_dir, fake_slack):
    return make_settings(db_url, config_dir, **fake_slack.settings())


@pytest.fixture
def deliverer(runtime):
    return build_deliverer(runtime)


def enqueue(rt, key: str, kind: str, payload: dict, trial_id: str | None = TRIAL) -> int:
    return enqueue_effect(rt, key, kind, payload, trial_id)


row = outbox_row


def message(channel: str, text: str, **extra) -> dict:
    return {"channel": channel, "text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
            **extra}


def test_an_alert_is_posted_to_the_alerts_channel_and_tagged_with_its_effect_key(runtime, deliverer, fake_slack):
    effect_id = enqueue(runtime, f"{TRIAL}:1:send_to_triage:alert", "slack.message",
                        message("cloud-trial-alerts", ":mag: New cloud trial request", ref=f"alert:{TRIAL}"))

    assert deliverer.drain() == {"delivered": 1}

    [posted] = fake_slack.messages_in("cloud-trial-alerts")
    assert posted["text"] == ":mag: New cloud trial request"
    assert posted["blocks"][0]["type"] == "section"
    assert posted["metadata"] == {"event_type": "trialflow_effect",
                                  "event_payload": {"key": f"{TRIAL}:1:send_to_triage:alert"}}
    stored = row(runtime, effect_id)
    assert stored.status == "delivered"
    assert stored.result == {"channel": posted["channel"], "ts": posted["ts"]}


def test_a_message_for_an_account_channel_that_does_not_exist_yet_creates_the_channel(runtime, deliverer, fake_slack):
    enqueue(runtime, "k:opp", "slack.message", message("#cloud-trial-acme-corp", ":briefcase: Opportunity created"))

    assert deliverer.drain() == {"delivered": 1}

    channel = fake_slack.channel_named("cloud-trial-acme-corp")
    assert channel is not None
    assert [m["text"] for m in fake_slack.messages_in("cloud-trial-acme-corp")] == [":briefcase: Opportunity created"]


def test_an_update_edits_the_referenced_alert_in_place(runtime, deliverer, fake_slack):
    enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "triage me", ref=f"alert:{TRIAL}"))
    deliverer.drain()
    enqueue(runtime, "k:alert-update", "slack.update",
            {"ref": f"alert:{TRIAL}", "text": "qualified by Ivy", "blocks": []})

    assert deliverer.drain() == {"delivered": 1}

    [alert] = fake_slack.messages_in("cloud-trial-alerts")
    assert alert["text"] == "qualified by Ivy"
    assert [(u["ts"], u["text"]) for u in fake_slack.updates] == [(alert["ts"], "qualified by Ivy")]
    assert len(fake_slack.messages) == 1


def test_an_update_waits_until_the_message_it_edits_has_been_posted(runtime, deliverer, fake_slack, clock):
    update_id = enqueue(runtime, "k:alert-update", "slack.update",
                        {"ref": f"alert:{TRIAL}", "text": "qualified", "blocks": []})

    assert deliverer.drain() == {"retry": 1}
    assert fake_slack.calls("chat.update") == []
    assert "not posted yet" in row(runtime, update_id).last_error

    enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "triage me", ref=f"alert:{TRIAL}"))
    assert deliverer.drain() == {"delivered": 1}
    clock.advance(minutes=1)
    assert deliverer.drain() == {"delivered": 1}
    assert row(runtime, update_id).status == "delivered"
    assert fake_slack.messages_in("cloud-trial-alerts")[0]["text"] == "qualified"


def test_a_reminder_is_posted_in_the_thread_of_the_trial_s_alert(runtime, deliverer, fake_slack):
    enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "bob signed up", ref=f"alert:{TRIAL}"))
    deliverer.drain()
    enqueue(runtime, "k:reminder", "slack.message",
            message("cloud-trial-alerts", "still waiting to be added", thread_ref=f"alert:{TRIAL}"))

    assert deliverer.drain() == {"delivered": 1}

    alert, reminder = fake_slack.messages
    assert reminder["thread_ts"] == alert["ts"]
    assert reminder["channel"] == alert["channel"]


def test_a_channel_is_created_with_its_topic_and_the_ce_and_ae_are_invited(runtime, deliverer, fake_slack):
    effect_id = enqueue(runtime, "k:channel", "slack.channel", {
        "name": "cloud-trial-acme-corp", "invite": ["carol.ce@example.com", "alice.ae@example.com"],
        "topic": "Cloud trial for Acme Corp (acme-corp.com)"})

    assert deliverer.drain() == {"delivered": 1}

    channel = fake_slack.channel_named("cloud-trial-acme-corp")
    assert channel.topic == "Cloud trial for Acme Corp (acme-corp.com)"
    assert {"U0CE00001", "U0AE00001"} <= channel.members
    result = row(runtime, effect_id).result
    assert result["channel"] == channel.id
    assert sorted(result["invited"]) == ["U0AE00001", "U0CE00001"]


def test_a_channel_name_that_is_taken_is_reused_rather_than_failing(runtime, deliverer, fake_slack):
    existing = fake_slack.add_channel("cloud-trial-acme-corp", is_member=False, topic="set by a person")

    effect_id = enqueue(runtime, "k:channel", "slack.channel", {
        "name": "cloud-trial-acme-corp", "invite": ["carol.ce@example.com"], "topic": "Cloud trial for Acme Corp"})

    assert deliverer.drain() == {"delivered": 1}
    assert [r.error for r in fake_slack.calls("conversations.create")] == ["name_taken"]
    assert [c.id for c in fake_slack.channels.values() if c.name == "cloud-trial-acme-corp"] == [existing]
    channel = fake_slack.channel_named("cloud-trial-acme-corp")
    assert "U0CE00001" in channel.members
    assert channel.topic == "set by a person"
    assert row(runtime, effect_id).result["channel"] == existing


def test_a_person_without_a_slack_account_is_skipped_and_noted_while_the_others_are_invited(runtime, deliverer,
                                                                                           fake_slack, caplog):
    effect_id = enqueue(runtime, "k:channel", "slack.channel", {
        "name": "cloud-trial-globex", "invite": ["new.hire@example.com", "chris.ce@example.com"], "topic": "t"})

    assert deliverer.drain() == {"delivered": 1}

    assert [r.error for r in fake_slack.calls("users.lookupByEmail")] == ["users_not_found", None]
    assert "U0CE00002" in fake_slack.channel_named("cloud-trial-globex").members
    result = row(runtime, effect_id).result
    assert result["not_in_slack"] == ["new.hire@example.com"]
    assert "new.hire@example.com has no Slack account" in caplog.text


def test_inviting_someone_who_is_already_in_the_channel_does_not_fail_the_effect(runtime, deliverer, fake_slack):
    fake_slack.add_channel("cloud-trial-initech", members=("U0CE00001",))

    effect_id = enqueue(runtime, "k:channel", "slack.channel", {
        "name": "cloud-trial-initech", "invite": ["carol.ce@example.com", "andy.ae@example.com"], "topic": "t"})

    assert deliverer.drain() == {"delivered": 1}
    assert [r.error for r in fake_slack.calls("conversations.invite")] == ["already_in_channel", None]
    result = row(runtime, effect_id).result
    assert result["already_in_channel"] == ["U0CE00001"]
    assert result["invited"] == ["U0AE00002"]


def test_a_429_comes_back_after_the_retry_after_slack_asked_for_and_not_before(runtime, deliverer, fake_slack, clock):
    fake_slack.rate_limit("chat.postMessage", retry_after=30)
    effect_id = enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "hello"))
    started = clock.now()

    assert deliverer.drain() == {"retry": 1}

    # slack_sdk did not retry by itself: the one 429 reached the Deliverer, which rescheduled.
    assert [r.status for r in fake_slack.calls("chat.postMessage")] == [429]
    waiting = row(runtime, effect_id)
    assert waiting.status == "pending"
    assert "rate-limited" in waiting.last_error
    assert timedelta(seconds=30) <= waiting.next_attempt_at - started <= timedelta(seconds=31)

    clock.advance(seconds=29)
    assert deliverer.drain() == {}
    assert len(fake_slack.calls("chat.postMessage")) == 1

    clock.advance(seconds=2)
    assert deliverer.drain() == {"delivered": 1}
    assert [r.status for r in fake_slack.calls("chat.postMessage")] == [429, 200]
    assert len(fake_slack.messages) == 1


def test_waiting_out_rate_limits_does_not_spend_the_attempt_budget(runtime, deliverer, fake_slack, clock):
    limit = runtime.settings.delivery_max_attempts
    fake_slack.rate_limit("chat.postMessage", retry_after=5, times=limit + 2)
    effect_id = enqueue(runtime, "k:throttled", "slack.message", message("cloud-trial-alerts", "patience"))

    for _ in range(limit + 2):
        assert deliverer.drain() == {"retry": 1}
        assert row(runtime, effect_id).status == "pending"
        clock.advance(seconds=6)

    assert deliverer.drain() == {"delivered": 1}
    assert row(runtime, effect_id).attempts == 1
    assert len(fake_slack.messages) == 1


def test_a_bad_token_parks_the_effect_with_slack_s_reason(runtime, fake_slack):
    from trialflow.delivery.core import Deliverer
    from trialflow.delivery.dryrun import DryRunTransport
    from trialflow.delivery.slack import SlackTransport

    wrong = make_settings(runtime.settings.database_url, runtime.settings.config_dir,
                          slack_bot_token="xoxb-not-the-right-one", slack_api_url=fake_slack.url)
    effect_id = enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "hello"))
    # The failure notice goes to a dry-run sink here: with a bad token it could not reach Slack either.
    deliverer = Deliverer(runtime, {"slack": SlackTransport(wrong)})

    assert deliverer.drain() == {"failed": 1}
    parked = row(runtime, effect_id)
    assert parked.status == "failed"
    assert "invalid_auth" in parked.last_error
    assert fake_slack.messages == []
    Deliverer(runtime, {"slack": DryRunTransport("slack")}).drain()
    with runtime.session_factory() as s:
        notice = s.execute(select(tables.outbox).where(tables.outbox.c.key == f"delivery-failed:{effect_id}")).one()
    assert notice.status == "delivered"
    assert f"trialflow outbox retry {effect_id}" in notice.payload["text"]



def test_a_retry_reads_the_channel_back_to_its_first_attempt_however_many_messages_came_since(
        runtime, settings, fake_slack, clock):
    clock.set(datetime.now(UTC))   # in step with the timestamps Slack gives messages
    first_attempt = clock.now().timestamp()
    for i in range(1000):                   # the channel's past: older than the first attempt
        fake_slack.add_message("cloud-trial-alerts", f"last month {i}", at=first_attempt - 7 * 86400)
    effect_id = enqueue(runtime, "k:alert", "slack.message", message("cloud-trial-alerts", "bob signed up"))
    with pytest.raises(WorkerKilled):
        Deliverer(runtime, {"slack": DiesAfterTheCall(SlackTransport(settings))}).deliver(effect_id)
    for i in range(650):                    # alerts posted before its lease expired
        fake_slack.add_message("cloud-trial-alerts", f"meanwhile {i}")
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)

    assert build_deliverer(runtime).deliver(effect_id) == "delivered"

    assert fake_slack.deliveries()["k:alert"] == 1
    reads = fake_slack.calls("conversations.history")
    # Every page back to the first attempt (less the clock-skew margin), and not one page further.
    assert len(reads) == 4                  # 651 messages, 200 a page
    assert {float(r.args["oldest"]) for r in reads} == {first_attempt - CLOCK_SKEW_SECONDS}
    assert row(runtime, effect_id).result["ts"] == next(m["ts"] for m in fake_slack.messages if m["text"] == "bob signed up")
