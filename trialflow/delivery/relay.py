"""In-process delivery for the embedded default (no broker): one background thread."""
from __future__ import annotations

import logging
import threading

from trialflow.delivery.core import Deliverer

log = logging.getLogger("trialflow.relay")


class InProcessRelay:
    def __init__(self, deliverer: Deliverer, interval: float = 0.5, on_tick=None):
        self.deliverer = deliverer
        self.interval = interval
        self.on_tick = on_tick          # e.g. the scheduler's sweep, run between drains
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self, _ids=None) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trialflow-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.on_tick:
                    self.on_tick()
                self.deliverer.drain_all()
            except Exception:  # noqa: BLE001 - keep delivering; the rows are still there
                log.exception("relay pass failed")
            self._wake.wait(self.interval)
            self._wake.clear()
