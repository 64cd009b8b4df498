"""Delivering effects in batches: one lease and one result statement for many effects, results
shared inside the batch, a provider's Retry-After holding back the rest of its effects, and a
batch that stops calling before its lease could pass to another worker."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import event

from tests.conftest import make_settings
from tests.support.outbox import enqueue_effect, outbox_row
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.slack import SlackTransport

TRIAL = "tr_batchtest00001"


@pytest.fixture
def settings(db_url, config_dir, fake_slack, smtp_server):
    fake_slack.add_channel("cloud-trial-alerts")
    return make_settings(db_url, config_dir, **fake_slack.settings(), **smtp_server.settings())


def transports(settings) -> dict:
    return {"slack": SlackTransport(settings), "email": EmailTransport(settings)}


def alert(text: str, **extra) -> dict:
    return {"channel": "cloud-trial-alerts", "text": text, "blocks": [], **extra}


def email(to: str) -> dict:
    return {"template": "self_host", "to": to, "cc": [], "from": None, "context": {"name": "Bob"}}


class OutboxUpdates:
    """Counts the UPDATE statements sent for the outbox table (an executemany counts once)."""

    def __init__(self, engine):
        self.count = 0
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE OUTBOX"):
            self.count += 1

    def close(self):
        event.remove(self._engine, "before_cursor_execute", self._seen)


def test_a_batch_takes_one_lease_statement_and_one_result_statement_for_all_its_effects(runtime, settings,
                                                                                        fake_slack):
    ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(20)]
    updates = OutboxUpdates(runtime.engine)
    try:
        outcomes = Deliverer(runtime, transports(settings)).deliver_batch(ids)
    finally:
        updates.close()

    assert outcomes == {effect_id: "delivered" for effect_id in ids}
    assert updates.count == 2
    assert [m["text"] for m in fake_slack.messages_in("cloud-trial-alerts")] == [f"alert {i}" for i in range(20)]
    assert all(outbox_row(runtime, effect_id).status == "delivered" for effect_id in ids)


def test_an_update_and_a_reply_find_the_alert_posted_earlier_in_the_same_batch(runtime, settings, fake_slack):
    ids = [
        enqueue_effect(runtime, "k:alert", "slack.message", alert("bob signed up", ref=f"alert:{TRIAL}"), TRIAL),
        enqueue_effect(runtime, "k:update", "slack.update", {"ref": f"alert:{TRIAL}", "text": "qualified by Sam",
                                                            "blocks": []}, TRIAL),
        enqueue_effect(runtime, "k:reply", "slack.message", {"channel": "cloud-trial-alerts", "text": "reminder",
                                                            "blocks": [], "thread_ref": f"alert:{TRIAL}"}, TRIAL),
    ]

    assert Deliverer(runtime, transports(settings)).deliver_batch(ids) == dict.fromkeys(ids, "delivered")

    [posted] = [m for m in fake_slack.messages if m["text"] == "qualified by Sam"]
    reply = next(m for m in fake_slack.messages if m["text"] == "reminder")
    assert reply["thread_ts"] == posted["ts"] == outbox_row(runtime, ids[0]).result["ts"]
    assert outbox_row(runtime, ids[1]).result["ts"] == posted["ts"]


def test_a_rate_limited_provider_gets_nothing_more_from_the_batch_and_no_attempt_is_spent(runtime, settings,
                                                                                        fake_slack, smtp_server,
                                                                                        clock):
    fake_slack.rate_limit("chat.postMessage", retry_after=30)
    slack_ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(3)]
    mail_id = enqueue_effect(runtime, "k:mail", "email", email("bob@acme-corp.com"))
    started = clock.now()

    outcomes = Deliverer(runtime, transports(settings)).deliver_batch([*slack_ids, mail_id])

    assert outcomes == {slack_ids[0]: "retry", slack_ids[1]: "released", slack_ids[2]: "released",
                        mail_id: "delivered"}
    assert [r.status for r in fake_slack.calls("chat.postMessage")] == [429]  # one call, then it waited
    assert [m["To"] for m in smtp_server.messages] == ["bob@acme-corp.com"]    # other providers went on
    for effect_id in slack_ids:
        waiting = outbox_row(runtime, effect_id)
        assert (waiting.status, waiting.attempts) == ("pending", 0)
        assert timedelta(seconds=30) <= waiting.next_attempt_at - started <= timedelta(seconds=31)

    clock.advance(seconds=32)
    assert Deliverer(runtime, transports(settings)).drain() == {"delivered": 3}
    assert [m["text"] for m in fake_slack.messages_in("cloud-trial-alerts")] == ["alert 0", "alert 1", "alert 2"]


class SlowTransport:
    """A provider that takes ``seconds`` to answer (our Transport port, in front of the real one)."""

    def __init__(self, transport, seconds: float):
        self.transport, self.seconds = transport, seconds

    def deliver(self, effect):
        time.sleep(self.seconds)
        return self.transport.deliver(effect)


def test_a_slow_batch_stops_calling_at_half_its_lease_and_hands_the_rest_back_at_once(runtime, settings,
                                                                                     fake_slack):
    ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(4)]
    woken: list[list[int]] = []
    runtime.wake = woken.append
    slow = Deliverer(runtime, {"slack": SlowTransport(SlackTransport(settings), 0.3)}, lease_seconds=1.0)

    outcomes = slow.deliver_batch(ids)

    # 0.3 s per call, stop at 0.5 s: two calls started in time, the rest was never called.
    assert outcomes == {ids[0]: "delivered", ids[1]: "delivered", ids[2]: "released", ids[3]: "released"}
    assert len(fake_slack.messages_in("cloud-trial-alerts")) == 2
    for effect_id in ids[2:]:
        handed_back = outbox_row(runtime, effect_id)
        assert (handed_back.status, handed_back.attempts) == ("pending", 0)
    assert woken == [ids[2:]]
    assert Deliverer(runtime, transports(settings)).drain() == {"delivered": 2}


class Interrupted(BaseException):
    """The worker is told to stop mid-call (a warm shutdown): not an Exception the Deliverer handles."""


class InterruptedOnSecondCall:
    def __init__(self, transport):
        self.transport, self.calls = transport, 0

    def deliver(self, effect):
        self.calls += 1
        result = self.transport.deliver(effect)
        if self.calls == 2:
            raise Interrupted()
        return result


def test_a_batch_stopped_mid_call_records_what_it_delivered_and_hands_back_what_it_never_started(
        runtime, settings, fake_slack, clock):
    ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(4)]

    with pytest.raises(Interrupted):
        Deliverer(runtime, {"slack": InterruptedOnSecondCall(SlackTransport(settings))}).deliver_batch(ids)

    states = [(r.status, r.attempts) for r in (outbox_row(runtime, i) for i in ids)]
    assert states == [("delivered", 1), ("delivering", 1), ("pending", 0), ("pending", 0)]
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)
    assert Deliverer(runtime, transports(settings)).drain() == {"delivered": 3}
    # The one in flight had reached Slack: its next attempt found it instead of posting again.
    assert sorted(m["text"] for m in fake_slack.messages_in("cloud-trial-alerts")) == [f"alert {i}" for i in range(4)]
