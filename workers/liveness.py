"""Is this machine's worker alive? The files that answer it, in the data directory.

``<name>.heartbeat``: touched every second by the Celery worker's own event loop while it is
connected to the broker (the ``Heartbeat`` consumer step). A worker whose loop is stuck (hung
in a shutdown, blocked on a dead socket) stops touching it.

``<name>.json``: written every second by the supervisor (``workers.supervisor``): which Celery
process it runs, whether that process is healthy, and how often it was replaced. ``trialflow
worker --check`` reads it, and docker-compose's health check runs that.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import bootsteps

from trialflow.datadir import data_dir
from trialflow.settings import Settings

HEARTBEAT_SECONDS = 1.0
# The supervisor writes its status every second; older than this, the supervisor itself is stuck or gone.
STATUS_STALE_SECONDS = 15.0


@dataclass(frozen=True)
class WorkerFiles:
    heartbeat: Path
    status: Path
    lock: Path


def worker_files(settings: Settings, name: str) -> WorkerFiles:
    directory = data_dir(settings, "worker")
    return WorkerFiles(directory / f"{name}.heartbeat", directory / f"{name}.json", directory / f"{name}.lock")


def touch(path: str) -> None:
    Path(path).touch()


def age(path: Path, now: float) -> float | None:
    """Seconds since ``path`` was last touched (None: never)."""
    try:
        return max(now - path.stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None


class Heartbeat(bootsteps.StartStopStep):
    """Consumer step: while connected, the event loop touches the heartbeat file every second.

    Its timer entry lives on the loop's own timer, so the file goes stale exactly when the loop
    stops turning; it is started again after each reconnection, like the connection itself."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        path = c.app.conf.get("trialflow_heartbeat_file")
        if not path:
            return
        touch(path)
        self.tref = c.timer.call_repeatedly(HEARTBEAT_SECONDS, touch, (path,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


@dataclass
class Status:
    """What the supervisor knows, as it writes it every second."""
    supervisor_pid: int
    celery_pid: int | None
    state: str                  # starting | alive | waiting-for-broker | hung | exited | stopping
    healthy: bool
    heartbeat_age: float | None
    restarts: int
    updated_at: float

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


def check(settings: Settings, name: str, now: float | None = None) -> tuple[bool, str]:
    """(alive, why) for ``trialflow worker --check``: the supervisor is running and says its
    Celery process is healthy (its loop turned lately, or the broker is down and it is waiting)."""
    now = time.time() if now is None else now
    path = worker_files(settings, name).status
    try:
        status = Status(**json.loads(path.read_text()))
    except FileNotFoundError:
        return False, f"no worker named {name!r} has run with this data directory ({path} is missing)"
    except (ValueError, TypeError) as exc:
        return False, f"{path} is unreadable: {exc}"
    if now - status.updated_at > STATUS_STALE_SECONDS:
        return False, f"the supervisor has not written {path.name} for {now - status.updated_at:.0f}s"
    if not process_alive(status.supervisor_pid):
        return False, f"the supervisor (pid {status.supervisor_pid}) is gone"
    beat = "never" if status.heartbeat_age is None else f"{status.heartbeat_age:.0f}s ago"
    why = (f"celery pid {status.celery_pid or '-'}: {status.state}, last heartbeat {beat}, "
           f"{status.restarts} replacement(s)")
    return status.healthy, why


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
