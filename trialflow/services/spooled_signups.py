"""No signup is lost when the database is down: a signup whose routing failed is kept, and routed later.

``keep_unrouted`` runs when routing a signup failed. If the database could not be reached, the
signup goes to the spool on local disk (``trialflow.spool``) and the caller is answered 202: it
is routed when the database is back, and support hears nothing. Any other failure goes to the
failsafe as before (``failed_signups`` and an email to support), and to the spool should the
failsafe's own write fail.

``replay`` routes the spooled signups, oldest first, exactly once: routing the same email twice
finds the trial the first routing made (the email's ON CONFLICT), and a record handed to support
is handed over under its record id, once. A record leaves the spool only after the database has
it. A replay stops at the first sign that the database is still away. ``trialflow serve`` replays
in the background (``SpoolReplayer``), Celery's sweep and ``trialflow spool replay`` on demand.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc

from trialflow.services.signups import SignupInput, keep_failed_signup, submit_signup
from trialflow.services.uow import App
from trialflow.settings import Settings
from trialflow.spool import DamagedRecord, Spool, SpooledSignup, spool_dir

log = logging.getLogger("trialflow.spool")

MAX_REPLAY_BACKOFF_SECONDS = 30.0


class SpoolRecordDamaged(Exception):
    """A spool file whose content cannot be trusted: handed to support as it is."""


@dataclass(frozen=True)
class _At:
    """The clock of a replayed signup: it happened when it was received, not when it is routed."""
    moment: datetime

    def now(self) -> datetime:
        return self.moment


@dataclass
class ReplayReport:
    routed: list[tuple[str, str, bool]] = field(default_factory=list)   # (record id, trial id, created)
    to_support: list[str] = field(default_factory=list)                 # record ids kept for support
    left: int = 0                                                       # records still in the spool
    stopped: str | None = None                                          # why the replay stopped early


def spool_of(settings: Settings) -> Spool:
    return Spool(spool_dir(settings))


def is_unreachable(error: BaseException | None) -> bool:
    """The database could not be reached, or dropped the connection (down, restarting, shutting
    down, the pool exhausted): an outage to wait out, not a fault in the signup."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free
            return True
        cause = error.orig if isinstance(error, sa_exc.DBAPIError) else error
        if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        if isinstance(cause, sqlite3.OperationalError) and any(
                words in str(cause) for words in ("database is locked", "unable to open", "disk I/O")):
            return True
        error = error.__cause__ or error.__context__
    return False


def keep_unrouted(rt: App, body: bytes, signup: dict[str, Any], error: BaseException) -> bool:
    """Keep a signup whose routing failed; True when it is kept (answer 202), False when it could
    not be kept anywhere (answer 503: the caller must try again)."""
    if is_unreachable(error) and _spool(rt, body, signup, error):
        return True
    try:
        keep_failed_signup(rt.uow, rt.settings, rt.clock, body, error)
        return True
    except Exception as failsafe_error:  # noqa: BLE001 - the database is gone too: the disk is left
        log.warning("could not keep the failed signup in the database either (%s)", type(failsafe_error).__name__)
        return _spool(rt, body, signup, failsafe_error)


def _spool(rt: App, body: bytes, signup: dict[str, Any], error: BaseException) -> bool:
    try:
        record_id = spool_of(rt.settings).append(signup, body, f"{type(error).__name__}: {error}", rt.clock.now())
    except OSError:
        log.exception("could not write the signup to the spool at %s", spool_dir(rt.settings))
        return False
    log.warning("the database is unreachable (%s): signup kept in the spool as %s; it is routed when the "
                "database is back", type(error).__name__, record_id)
    return True


def replay(rt: App, spool: Spool | None = None) -> ReplayReport:
    """Route every spooled signup into the database, oldest first (see the module's docstring)."""
    spool = spool or spool_of(rt.settings)
    report = ReplayReport()
    with spool.replaying() as held:
        if not held:
            report.stopped = "another process is replaying the spool"
        else:
            for record in spool.records():
                try:
                    _replay_one(rt, record, report)
                except Exception as exc:  # noqa: BLE001 - the record stays; the next replay tries again
                    if is_unreachable(exc):
                        report.stopped = f"the database is still unreachable ({type(exc).__name__})"
                        break
                    log.exception("could not replay spooled signup %s; it stays in the spool", record.id)
                    continue
                spool.remove(record)
            for leftover in spool.stale_temporaries():
                leftover.unlink(missing_ok=True)
    report.left = spool.count()
    if report.routed or report.to_support:
        log.info("spool replayed: %s signup(s) routed, %s kept for support, %s left", len(report.routed),
                 len(report.to_support), report.left)
    return report


def _replay_one(rt: App, record: SpooledSignup | DamagedRecord, report: ReplayReport) -> None:
    if isinstance(record, DamagedRecord):
        _to_support(rt, record.id, record.text.encode("utf-8"), SpoolRecordDamaged(f"spool file {record.path.name}: "
                                                                                     f"{record.reason}"), report)
        return
    fields = {k: record.signup.get(k) for k in ("email", "name", "company", "source")}
    try:
        result = submit_signup(rt.uow, rt.settings, _At(record.received_at), SignupInput(**fields))
    except Exception as exc:
        if is_unreachable(exc):
            raise
        # Routing itself fails with the database up: the failsafe, as for a signup answered live.
        _to_support(rt, record.id, record.body.encode("utf-8"), exc, report)
        return
    report.routed.append((record.id, result.trial_id, result.created))


def _to_support(rt: App, record_id: str, body: bytes, error: BaseException, report: ReplayReport) -> None:
    keep_failed_signup(rt.uow, rt.settings, rt.clock, body, error, key=f"spool:{record_id}")
    report.to_support.append(record_id)
    log.error("spooled signup %s could not be routed and was kept for support: %s", record_id, type(error).__name__)


def replay_if_any(rt: App) -> ReplayReport | None:
    """``replay`` when the spool holds something (a directory listing otherwise)."""
    spool = spool_of(rt.settings)
    return replay(rt, spool) if spool.count() else None


class SpoolReplayer:
    """``trialflow serve``'s background loop: routes spooled signups once the database is back,
    looking every ``spool_replay_seconds`` (backing off while it is still away)."""

    def __init__(self, rt: App, interval: float | None = None):
        self.rt = rt
        self.interval = interval or rt.settings.spool_replay_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trialflow-spool", daemon=True)

    def start(self) -> Callable[[], None]:
        self._thread.start()
        return self.stop

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                report = replay_if_any(self.rt)
            except Exception:  # noqa: BLE001 - keep looking; the files are still there
                log.exception("replaying the spool failed")
                report = None
            waiting = report is not None and report.stopped is not None and report.left
            delay = min(delay * 2, MAX_REPLAY_BACKOFF_SECONDS) if waiting else self.interval
