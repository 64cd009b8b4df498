"""Delivering effects in batches: one lease for many effects and each result recorded as its call
returns, results shared inside the batch, a provider's Retry-After holding back the rest of its effects, and a
batch that stops calling before its lease could pass to another worker."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from tests.conftest import make_settings
from tests.support.outbox import enqueue_effect, outbox_row
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.errors import PermanentFailure

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


def outbox_rows(rt):
    with rt.session_factory() as s:
        return s.execute(select(tables.outbox).order_by(tables.outbox.c.id)).all()


class OutboxUpdates:
    """Counts the statements that UPDATE the outbox table (an executemany counts once; on PostgreSQL
    a delivered result's UPDATE is inside a WITH that also counts it in delivery_stats)."""

    def __init__(self, engine):
        self.count = 0
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        if "UPDATE OUTBOX" in statement.upper():
            self.count += 1

    def close(self):
        event.remove(self._engine, "before_cursor_execute", self._seen)


class WatchesTheRecord:
    """In front of the real transport (our port): at each call, what the database already says
    about every effect of the batch."""

    def __init__(self, transport, runtime, ids: list[int]):
        self.transport, self.runtime, self.ids = transport, runtime, ids
        self.seen: list[list[str]] = []

    def deliver(self, effect):
        self.seen.append([outbox_row(self.runtime, effect_id).status for effect_id in self.ids])
        return self.transport.deliver(effect)


def test_a_batch_takes_one_lease_and_records_each_result_before_the_next_call_starts(runtime, settings,
                                                                                   fake_slack):
    ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(20)]
    watcher = WatchesTheRecord(SlackTransport(settings), runtime, ids)
    updates = OutboxUpdates(runtime.engine)
    try:
        outcomes = Deliverer(runtime, {"slack": watcher}).deliver_batch(ids)
    finally:
        updates.close()

    assert outcomes == {effect_id: "delivered" for effect_id in ids}
    # A worker killed at any call has every earlier call of its batch on record: only the call in
    # flight can be made again.
    assert watcher.seen == [["delivered"] * i + ["delivering"] * (20 - i) for i in range(20)]
    assert updates.count == 2 + 20   # the lease and its first-attempt stamp, then one statement per result
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


class Stopwatch:
    """The Deliverer's monotonic clock, moved by the provider below instead of by sleeping."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


class SlowTransport:
    """A provider that takes ``seconds`` to answer (our Transport port, in front of the real one)."""

    def __init__(self, transport, stopwatch: Stopwatch, seconds: float):
        self.transport, self.stopwatch, self.seconds = transport, stopwatch, seconds

    def deliver(self, effect):
        self.stopwatch.seconds += self.seconds
        return self.transport.deliver(effect)


def test_a_slow_batch_starts_no_call_past_half_its_lease_and_hands_the_rest_back_at_once(runtime, settings,
                                                                                        fake_slack):
    ids = [enqueue_effect(runtime, f"k:{i}", "slack.message", alert(f"alert {i}")) for i in range(4)]
    woken: list[list[int]] = []
    runtime.wake = woken.append
    stopwatch = Stopwatch()
    slow = Deliverer(runtime, {"slack": SlowTransport(SlackTransport(settings), stopwatch, 0.3)}, lease_seconds=1.0,
                     monotonic=stopwatch)

    outcomes = slow.deliver_batch(ids)

    # 0.3 s per call, none started from 0.5 s on: calls at 0 s and 0.3 s, then it stopped.
    assert outcomes == {ids[0]: "delivered", ids[1]: "delivered", ids[2]: "released", ids[3]: "released"}
    assert len(fake_slack.messages_in("cloud-trial-alerts")) == 2
    for effect_id in ids[2:]:
        handed_back = outbox_row(runtime, effect_id)
        assert (handed_back.status, handed_back.attempts) == ("pending", 0)
    assert woken == [ids[2:]]
    assert Deliverer(runtime, transports(settings)).drain() == {"delivered": 2}


class TakenOverMidCall:
    """A call that outlasts its lease: while it hangs, the clock passes the lease and another
    worker takes the effect over and starts its own call; then this one is refused."""

    def __init__(self, runtime, clock, other: Deliverer):
        self.runtime, self.clock, self.other = runtime, clock, other
        self.other_calling, self.release_other = threading.Event(), threading.Event()
        self.other_outcome: dict = {}

    def deliver(self, effect):
        self.clock.advance(seconds=self.runtime.settings.delivery_lease_seconds + 1)
        thread = threading.Thread(target=lambda: self.other_outcome.update(self.other.deliver_batch([effect.id])))
        thread.start()
        assert self.other_calling.wait(10)
        self.thread = thread
        raise PermanentFailure("Slack refused chat.postMessage: channel_not_found")


class Gate:
    """The other worker's provider: says it is calling, then waits to be let through."""

    def __init__(self, transport, owner: TakenOverMidCall):
        self.transport, self.owner = transport, owner

    def deliver(self, effect):
        self.owner.other_calling.set()
        assert self.owner.release_other.wait(10)
        return self.transport.deliver(effect)


def test_a_result_written_after_the_lease_passed_to_another_worker_is_dropped(runtime, settings, fake_slack,
                                                                              clock):
    effect_id = enqueue_effect(runtime, "k:alert", "slack.message", alert("bob signed up"))
    first = TakenOverMidCall(runtime, clock, other=None)
    first.other = Deliverer(runtime, {"slack": Gate(SlackTransport(settings), first)})

    outcome = Deliverer(runtime, {"slack": first}).deliver_batch([effect_id])

    assert outcome == {effect_id: "superseded"}
    held = outbox_row(runtime, effect_id)
    assert (held.status, held.attempts, held.last_error) == ("delivering", 2, None)  # still the other's lease
    first.release_other.set()
    first.thread.join(10)
    assert first.other_outcome == {effect_id: "delivered"}
    assert outbox_row(runtime, effect_id).status == "delivered"
    assert [m["text"] for m in fake_slack.messages_in("cloud-trial-alerts")] == ["bob signed up"]
    # The refused call was not the effect's fate: nobody was told it failed.
    assert Deliverer(runtime, transports(settings)).drain() == {}
    assert [r.key for r in outbox_rows(runtime)] == ["k:alert"]


def test_an_update_in_a_batch_goes_to_the_newest_alert_even_when_that_one_was_delivered_before(runtime, settings,
                                                                                              fake_slack):
    older = enqueue_effect(runtime, "k:alert-1", "slack.message", alert("waiting", ref=f"alert:{TRIAL}"), TRIAL)
    newer = enqueue_effect(runtime, "k:alert-2", "slack.message", alert("claimed", ref=f"alert:{TRIAL}"), TRIAL)
    update = enqueue_effect(runtime, "k:update", "slack.update", {"ref": f"alert:{TRIAL}", "text": "converted",
                                                                  "blocks": []}, TRIAL)
    deliverer = Deliverer(runtime, transports(settings))
    assert deliverer.deliver(newer) == "delivered"   # the older one's first attempt failed, say

    assert deliverer.deliver_batch([older, update]) == {older: "delivered", update: "delivered"}

    assert outbox_row(runtime, update).result["ts"] == outbox_row(runtime, newer).result["ts"]
    assert sorted(m["text"] for m in fake_slack.messages_in("cloud-trial-alerts")) == ["converted", "waiting"]


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
