"""The API's sender of delivery tasks: a lone commit goes out at once, a burst travels together."""
from __future__ import annotations

import threading
import time

from tests.support.processes import wait_for
from trialflow.delivery.coalesce import Coalescer


class Sent:
    def __init__(self, fail_first: int = 0):
        self.tasks: list[list[int]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, ids: list[int]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("broker down")
            self.tasks.append(list(ids))

    def ids(self) -> list[int]:
        with self.lock:
            return [i for task in self.tasks for i in task]


def test_a_lone_commit_is_sent_at_once():
    sent = Sent()
    coalescer = Coalescer(sent, batch_size=50, linger=5.0)
    try:
        started = time.monotonic()
        coalescer([7, 8])
        wait_for(lambda: sent.tasks == [[7, 8]], 2, "the task")
        assert time.monotonic() - started < 1.0  # not held back for the (long) linger
    finally:
        coalescer.stop()


def test_commits_arriving_during_the_linger_travel_together_in_tasks_no_bigger_than_the_batch():
    sent = Sent()
    coalescer = Coalescer(sent, batch_size=4, linger=1.0)
    try:
        coalescer([0])
        wait_for(lambda: sent.tasks == [[0]], 2, "the first task")
        for i in range(1, 11):  # ten commits while the sender waits out its linger
            coalescer([i])
        wait_for(lambda: len(sent.ids()) == 11, 3, "the rest")
        assert sent.tasks == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    finally:
        coalescer.stop()


def test_a_failed_send_is_logged_and_the_sender_keeps_going(caplog):
    sent = Sent(fail_first=1)
    coalescer = Coalescer(sent, batch_size=50, linger=0.01)
    try:
        coalescer([1])
        wait_for(lambda: "could not send a delivery task" in caplog.text, 2, "the warning")
        coalescer([2])
        wait_for(lambda: sent.ids() == [2], 2, "the next task")  # [1] is the relay's to re-send
    finally:
        coalescer.stop()


def test_stop_sends_what_is_still_waiting():
    sent = Sent()
    coalescer = Coalescer(sent, batch_size=50, linger=5.0)
    coalescer([1])
    wait_for(lambda: sent.ids() == [1], 2, "the first task")
    coalescer([2, 3])  # the sender is in its linger
    coalescer.stop()
    assert sent.ids() == [1, 2, 3]
