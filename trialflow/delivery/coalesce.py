"""Sending delivery tasks from the API: one task for many commits' effects when they come fast.

A signup commits about one effect; a Celery task per effect costs more (broker round trips,
acks, a lease and a result statement) than delivering it. The API process therefore hands the
ids of committed effects to a sender thread that sends them at most once per ``linger``
seconds: a lone commit goes out at once (the thread is waiting for it), and commits arriving
while it waits out the linger travel together in the next task, up to ``batch_size`` ids each.

Nothing is lost if the process dies with ids still waiting here: the rows are committed, and
the beat relay re-sends due effects whose task never arrived (``relay_grace_seconds``).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from trialflow.delivery.core import batches

log = logging.getLogger("trialflow.delivery")


class Coalescer:
    def __init__(self, send: Callable[[list[int]], None], batch_size: int, linger: float = 0.01):
        self._send = send
        self.batch_size = batch_size
        self.linger = linger
        self._stopped = False
        self._reset()
        # A forked child (uvicorn's workers, Celery's pool) has none of the parent's threads, and
        # may inherit a lock held at the fork and ids the parent is about to send.
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._pending: list[int] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, ids) -> None:
        with self._lock:
            self._pending.extend(ids)
            self._ensure_thread()
        self._ready.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="trialflow-dispatch", daemon=True)
            self._thread.start()

    def _take(self) -> list[int]:
        with self._lock:
            ids, self._pending = self._pending, []
        return ids

    def flush(self) -> None:
        """Send everything waiting now (also at exit, best effort)."""
        for chunk in batches(self._take(), self.batch_size):
            try:
                self._send(chunk)
            except Exception:  # noqa: BLE001 - the relay re-sends these once they are overdue
                log.warning("could not send a delivery task for %s effect(s); the relay will", len(chunk),
                            exc_info=True)

    def _run(self) -> None:
        while not self._stopped:
            self._ready.wait()
            self._ready.clear()
            self.flush()
            time.sleep(self.linger)

    def stop(self) -> None:
        self._stopped = True
        self._ready.set()
        self.flush()
