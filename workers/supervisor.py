"""`trialflow worker`: a small supervisor around the Celery worker process.

Celery's worker can die of a broker outage (an error it does not expect while reconnecting) or
hang on its way out; nothing in Celery brings it back. This process starts the Celery worker as
its child and replaces it when it
- exits while nobody asked it to stop (a crash), after a pause that doubles from 1 s to 30 s
  while the replacements keep dying, and is back to 1 s once one has run healthy for a minute;
- is hung: its event loop has not touched the heartbeat file (``workers.liveness``) for
  ``worker_hung_seconds`` (a minute more before its first beat) while the broker answers. A
  worker waiting for a broker that is down is not hung, however long that lasts.

The child is forked from this process once trialflow is imported (a worker starts in half the
time two interpreters would take), runs in this process group and dies with this process
(parent-death signal): a supervisor killed outright (SIGKILL, OOM) takes its Celery worker and
pool with it, and an effect in flight is left to its lease. SIGTERM/SIGINT are passed on: a warm
shutdown, waiting for the running tasks, after which the supervisor exits with the child's code.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from trialflow.errors import ConfigError
from trialflow.settings import Settings
from workers.liveness import Status, WorkerFiles, age, worker_files

log = logging.getLogger("trialflow.supervisor")

TICK_SECONDS = 1.0
FIRST_PAUSE, LONGEST_PAUSE = 1.0, 30.0
HEALTHY_RUN_SECONDS = 60.0       # a child that ran healthy this long resets the pause
BEATING_SECONDS = 5.0            # a heartbeat this fresh: the event loop turns (it beats every second)
STARTUP_SECONDS = 60.0           # a new worker's first heartbeat may take this long more (imports, a busy machine)
STOP_GRACE_SECONDS = 5.0         # a hung child gets this long to stop on SIGTERM before SIGKILL
BROKER_TIMEOUT_SECONDS = 2.0


def broker_answers(url: str) -> bool:
    """Does the broker answer right now? (Redis: PING. Another broker: assumed up.)"""
    if not url.startswith(("redis://", "rediss://")):
        return True
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS,
                                  socket_timeout=BROKER_TIMEOUT_SECONDS)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class Supervisor:
    def __init__(self, settings: Settings, name: str, run_celery: Callable[[], object]):
        self.settings = settings
        self.name = name
        self.run_celery = run_celery
        self.files: WorkerFiles = worker_files(settings, name)
        self.child: int | None = None   # the Celery worker's pid
        self.child_started = 0.0
        self.restarts = 0
        self.pause = FIRST_PAUSE
        self.next_start = 0.0
        self.stopping = False
        self.state = "starting"
        self._lock: IO[str] | None = None

    # --- running -------------------------------------------------------------------------------

    def run(self) -> int:
        self._take_lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        log.info("supervising the Celery worker %r (replaced when it dies, or hangs for %gs while the broker "
                 "answers)", self.name, self.settings.worker_hung_seconds)
        try:
            while True:
                code = self._tick()
                if code is not None:
                    return code
                time.sleep(TICK_SECONDS)
        finally:
            self._write_status(healthy=False, heartbeat_age=None)

    def _tick(self) -> int | None:
        """One look at the child; an exit code when the supervisor is done."""
        now = time.time()
        if self.child is None:
            if self.stopping:
                return 0
            if now >= self.next_start:
                self._start_child(now)
            self._write_status(healthy=False, heartbeat_age=None)
            return None
        code = self._exit_code()
        if code is not None:
            self.child = None
            if self.stopping:
                return code
            self.state = "exited"
            self.next_start = now + self.pause
            log.error("the Celery worker exited with %s; starting another in %gs", code, self.pause)
            self.pause = min(self.pause * 2, LONGEST_PAUSE)
            self._write_status(healthy=False, heartbeat_age=None)
            return None
        heartbeat = age(self.files.heartbeat, now)   # the file is removed when a child starts: this child's
        silent = heartbeat if heartbeat is not None else now - self.child_started
        if self.stopping:
            self.state = "stopping"
        elif silent <= BEATING_SECONDS:
            self.state = "alive" if heartbeat is not None else "starting"
            if now - self.child_started >= HEALTHY_RUN_SECONDS:
                self.pause = FIRST_PAUSE
        elif not broker_answers(self.settings.broker_url or ""):
            self.state = "waiting-for-broker"
        elif silent > self.settings.worker_hung_seconds + (0 if heartbeat is not None else STARTUP_SECONDS):
            self.state = "hung"
            log.error("the Celery worker (pid %s) has not turned its event loop for %.0fs while the broker answers: "
                      "replacing it", self.child, silent)
            self._write_status(healthy=False, heartbeat_age=heartbeat)
            self._stop_child()
            self.child = None
            self.next_start = now
            return None
        else:
            self.state = "reconnecting" if heartbeat is not None else "starting"
        self._write_status(healthy=True, heartbeat_age=heartbeat)
        return None

    def _start_child(self, now: float) -> None:
        if self.state in ("exited", "hung"):
            self.restarts += 1
        self.files.heartbeat.unlink(missing_ok=True)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(self._be_the_child(parent))
        self.child = pid
        self.child_started = now
        self.state = "starting"
        log.info("started the Celery worker (pid %s)", pid)

    def _be_the_child(self, parent: int) -> int:
        """In the forked child: become the Celery worker; its exit code."""
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)   # Celery installs its own
            if self._lock is not None:
                self._lock.close()
            die_with_parent(parent)
            self.run_celery()
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever it was, the supervisor sees an exit and says so
            traceback.print_exc()
            return 1

    def _exit_code(self) -> int | None:
        """The child's exit code once it has exited (negative: the signal that killed it)."""
        if self.child is None:
            return None
        pid, status = os.waitpid(self.child, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if pid else None

    def _stop_child(self) -> None:
        if self.child is None:
            return
        os.kill(self.child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._exit_code() is None:
            if time.monotonic() >= deadline:
                # Its pool processes die with it (Celery gives them a parent-death signal).
                os.kill(self.child, signal.SIGKILL)
                os.waitpid(self.child, 0)
                return
            time.sleep(0.1)

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGTERM)  # a warm shutdown, whichever signal asked for the stop

    # --- files ---------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        handle = open(self.files.lock, "w")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"another `trialflow worker --name {self.name}` is running with this data directory "
                              f"({self.files.lock.parent}): give this one another --name") from None
        self._lock = handle  # held for the life of the process, released when it dies

    def _write_status(self, healthy: bool, heartbeat_age: float | None) -> None:
        Status(supervisor_pid=os.getpid(), celery_pid=self.child, state=self.state,
               healthy=healthy, heartbeat_age=heartbeat_age, restarts=self.restarts,
               updated_at=time.time()).write(self.files.status)


def die_with_parent(parent_pid: int) -> None:
    """In the supervised Celery process: be killed when the supervisor dies, however it dies."""
    import billiard.util

    util: Any = billiard.util  # its type stubs leave set_pdeathsig out
    try:
        util.set_pdeathsig(signal.SIGKILL)
    except OSError:
        log.warning("this platform has no parent-death signal: stop the supervisor with SIGTERM, not SIGKILL")
    if os.getppid() != parent_pid:  # the supervisor died before the signal was set
        os._exit(1)

