"""Delivering outbox effects: exactly once, as far as the provider lets us tell.

Effects are delivered in batches (a Celery task carries up to ``delivery_batch_size`` ids). The
batch takes a *lease* on its rows in one short transaction (status ``delivering``,
``next_attempt_at`` = lease end) before calling the providers, and records all the results in a
second one. So:
- two workers never deliver the same effect at once (the lease is taken with a conditional
  UPDATE; whoever updates the row owns it);
- a worker killed mid-batch leaves its rows ``delivering`` with an expired lease; the next
  attempt knows the call *may* have happened (``attempt > 1``) and asks the provider first
  (Slack: message metadata in the channel history; GitHub: the effect's marker in issue bodies),
  so a retry finds the first delivery instead of making a second one;
- transient failures back off exponentially with jitter (Retry-After wins when the provider
  sends one, and the rest of the batch for that provider waits as long); after
  ``delivery_max_attempts`` the effect is parked as ``failed`` and #cloud-trial-alerts is told.
"""
from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.exc import OperationalError

from trialflow.db import tables
from trialflow.errors import PayloadRefused, PermanentFailure, RetryLater
from trialflow.logs import bind_trial, scrub
from trialflow.services import outbox
from trialflow.services.fit import Data
from trialflow.services.slack_blocks import message, mrkdwn

log = logging.getLogger("trialflow.delivery")

LEASE_SECONDS = 120.0
WRITE_ATTEMPTS = 3
BASE_BACKOFF = 2.0
MAX_BACKOFF = 15 * 60.0


@dataclass
class Effect:
    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    trial_id: str | None
    attempt: int                      # 1 on the first try
    results: ResultLookup           # results of earlier effects (a message's ts, an issue's number)

    @property
    def maybe_delivered(self) -> bool:
        """An earlier attempt may have reached the provider before its worker died."""
        return self.attempt > 1


class ResultLookup(Protocol):
    def result_for_ref(self, ref: str) -> dict[str, Any] | None: ...


class Transport(Protocol):
    def deliver(self, effect: Effect) -> dict[str, Any]:
        """Deliver, return what to remember (ids). Raise RetryLater or PermanentFailure."""


class _DbResults:
    def __init__(self, session_factory):
        self._factory = session_factory

    def result_for_ref(self, ref: str) -> dict[str, Any] | None:
        """What an earlier effect with this ``ref`` returned (the alert's ts, the issue's number)."""
        newest = self.newest_for_ref(ref)
        return newest[1] if newest else None

    def newest_for_ref(self, ref: str) -> tuple[int, dict[str, Any]] | None:
        """The newest delivered effect that created ``ref``: its id and its result."""
        trial_id = _trial_of(ref)
        # Only effects that create something (a message, an issue) define a ref; updates and
        # comments carry the ref of their target and must never be mistaken for it.
        o = tables.outbox
        stmt = select(o.c.id, o.c.payload, o.c.result).where(
            o.c.status == "delivered", o.c.result.is_not(None), o.c.kind.in_(_CREATING_KINDS))
        stmt = stmt.where(o.c.trial_id == trial_id) if trial_id else stmt.where(o.c.trial_id.is_(None))
        with self._factory() as session:
            # Newest first: a trial that waited and was then claimed has two alerts under one ref,
            # and what happens next belongs on the latest.
            for effect_id, payload, result in session.execute(stmt.order_by(o.c.id.desc())):
                if payload.get("ref") == ref:
                    return effect_id, result
        return None


_CREATING_KINDS = ("slack.message", "github.issue")


def _has_secret(payload: Any) -> bool:
    if isinstance(payload, dict):
        return any(k in outbox.SECRET_KEYS or _has_secret(v) for k, v in payload.items())
    if isinstance(payload, list):
        return any(_has_secret(v) for v in payload)
    return False


def _trial_of(ref: str) -> str | None:
    # refs look like "alert:tr_…" or "instance-request:tr_…"
    parts = ref.split(":")
    return parts[1] if len(parts) >= 2 and parts[1].startswith("tr_") else None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    if retry_after is not None:
        return max(retry_after, 0.0) + random.uniform(0, 0.25)
    ceiling = min(MAX_BACKOFF, BASE_BACKOFF * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)  # "equal jitter"


class _BatchResults:
    """Results of the batch being delivered, before they are written, in front of the database's:
    an alert and its update (or an issue and its comment) often travel in one batch."""

    def __init__(self, stored: _DbResults):
        self._stored = stored
        self._fresh: dict[tuple[str | None, str], tuple[int, dict[str, Any]]] = {}

    def remember(self, effect: Effect, result: dict[str, Any]) -> None:
        ref = effect.payload.get("ref")
        if ref and effect.kind in _CREATING_KINDS:
            self._fresh[(effect.trial_id, ref)] = (effect.id, result)

    def result_for_ref(self, ref: str) -> dict[str, Any] | None:
        # As in the database: the newest effect that created the ref wins, wherever it is.
        found = [r for r in (self._fresh.get((_trial_of(ref), ref)), self._stored.newest_for_ref(ref)) if r]
        return max(found, key=lambda r: r[0])[1] if found else None


@dataclass
class _Outcome:
    effect_id: int
    outcome: str                      # delivered | retry | failed | released (| superseded, once written)
    values: dict[str, Any]            # the columns to write
    undo_attempt: bool = False        # the attempt certainly did not reach the provider
    payload_refused: bool = False     # parked because the provider refused what we built


class Deliverer:
    def __init__(self, rt, transports: dict[str, Transport], lease_seconds: float = LEASE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic):
        self.rt = rt
        self.transports = transports
        self.lease = timedelta(seconds=lease_seconds)
        self.results = _DbResults(rt.session_factory)
        self.monotonic = monotonic  # how long a batch has been calling (the lease is in clock time)

    def due_ids(self, limit: int = 500) -> list[int]:
        now = self.rt.clock.now()
        with self.rt.session_factory() as session:
            return list(session.scalars(
                select(tables.outbox.c.id)
                .where(tables.outbox.c.status.in_(("pending", "delivering")), tables.outbox.c.next_attempt_at <= now)
                .order_by(tables.outbox.c.next_attempt_at, tables.outbox.c.id).limit(limit)))

    def claim_for_dispatch(self, limit: int = 1000, grace_seconds: float = 5.0) -> list[int]:
        """Due effects whose task was never sent, or was sent ``grace_seconds`` ago and has not
        finished (lost with a dead worker or a restarted broker). Marks them dispatched now."""
        now = self.rt.clock.now()
        cutoff = now - timedelta(seconds=grace_seconds)
        o = tables.outbox
        with self.rt.session_factory() as session, session.begin():
            ids = list(session.scalars(
                select(o.c.id).where(o.c.status.in_(("pending", "delivering")), o.c.next_attempt_at <= now,
                                     func.coalesce(o.c.dispatched_at, o.c.created_at) <= cutoff)
                .order_by(o.c.next_attempt_at, o.c.id).limit(limit).with_for_update(skip_locked=True)))
            if ids:
                session.execute(update(o).where(o.c.id.in_(ids)).values(dispatched_at=now))
        return ids

    def _lease(self, effect_ids: list[int], results: ResultLookup) -> tuple[list[Effect], datetime]:
        """Take every one of ``effect_ids`` that is due and not held by someone else, in one
        statement; the effects come back in commit order. The lease's end doubles as its token:
        results are written only where it is still on the row."""
        now = self.rt.clock.now()
        lease_end = now + self.lease
        o = tables.outbox
        with self.rt.session_factory() as session, session.begin():
            claimed = session.execute(
                update(o)
                .where(o.c.id.in_(effect_ids), o.c.status.in_(("pending", "delivering")), o.c.next_attempt_at <= now)
                .values(status="delivering", attempts=o.c.attempts + 1, next_attempt_at=lease_end)
                .returning(o.c.id, o.c.key, o.c.kind, o.c.payload, o.c.trial_id, o.c.attempts)
            ).all()
        effects = sorted((Effect(r.id, r.key, r.kind, r.payload, r.trial_id, r.attempts, results) for r in claimed),
                         key=lambda e: e.id)
        return effects, lease_end

    def deliver(self, effect_id: int) -> str:
        """Deliver one effect if it is due and nobody else holds it. Returns what happened."""
        return self.deliver_batch([effect_id]).get(effect_id, "skipped")

    def deliver_batch(self, effect_ids: list[int]) -> dict[int, str]:
        """Deliver these effects: one lease statement for all of them, the provider calls one
        after another, one statement for all the results. Returns what happened to each effect
        this worker leased (the others are held elsewhere, already done, or not due yet).

        A provider that asks us to slow down (Retry-After) gets nothing more from this batch: the
        rest of its effects go back to the queue for when it said, without spending an attempt.
        The batch starts no call once half the lease has gone (a slow provider): every call
        starts with at least half the lease ahead of it, and what is left goes back to the queue
        at once. Should a call still outlast the lease and another worker take the effect over,
        this batch's result for it is not written (``superseded``): the lease is the token."""
        if not effect_ids:
            return {}
        results = _BatchResults(self.results)
        effects, lease_end = self._lease(list(effect_ids), results)
        if not effects:
            return {}
        stop_calling_at = self.monotonic() + self.lease.total_seconds() / 2
        held_back: dict[str, datetime] = {}  # transport -> when its provider said to come back
        outcomes: list[_Outcome] = []
        try:
            for effect in effects:
                transport_name = effect.kind.split(".", 1)[0]
                if self.monotonic() >= stop_calling_at:
                    outcomes.append(self._release(effect, self.rt.clock.now()))
                elif transport_name in held_back:
                    outcomes.append(self._release(effect, held_back[transport_name]))
                else:
                    with bind_trial(effect.trial_id):
                        outcome = self._attempt(effect, results)
                    outcomes.append(outcome)
                    if outcome.outcome == "retry" and outcome.undo_attempt:  # the provider said when
                        held_back[transport_name] = outcome.values["next_attempt_at"]
        except BaseException:
            # The worker is being stopped mid-call (a warm shutdown, an interrupt). The effect in
            # flight may have reached its provider: it keeps its lease, and its next attempt asks
            # first. The ones not started yet go back to the queue untouched.
            for effect in effects[len(outcomes) + 1:]:
                outcomes.append(self._release(effect, self.rt.clock.now()))
            raise
        finally:
            # What was delivered is written down, however the batch ended. (A worker killed
            # outright writes nothing: its lease expires and the next attempts ask first.)
            outcomes = self._record(effects, lease_end, outcomes)
        return {o.effect_id: o.outcome for o in outcomes}

    def _attempt(self, effect: Effect, results: _BatchResults) -> _Outcome:
        transport = self.transports.get(effect.kind.split(".", 1)[0])
        try:
            if transport is None:
                raise PermanentFailure(f"no transport for effect kind {effect.kind}")
            result = transport.deliver(effect)
        except RetryLater as exc:
            return self._retry(effect, str(exc), exc.retry_after)
        except PermanentFailure as exc:
            parked = self._park(effect, str(exc))
            parked.payload_refused = isinstance(exc, PayloadRefused)
            return parked
        except Exception as exc:  # noqa: BLE001 - an unknown failure is treated as transient
            log.warning("effect %s (%s) attempt %s failed: %s", effect.id, effect.kind, effect.attempt, exc)
            return self._retry(effect, f"{type(exc).__name__}: {exc}", None)
        result = result or {}
        results.remember(effect, result)
        done: dict[str, Any] = {"status": "delivered", "result": result, "delivered_at": self.rt.clock.now()}
        if _has_secret(effect.payload):
            # A password-reset link is for its recipient only: once sent, it is not kept.
            done["payload"] = outbox.redact(effect.payload)
        log.info("effect %s delivered", effect.key, extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        return _Outcome(effect.id, "delivered", done)

    def _retry(self, effect: Effect, why: str, retry_after: float | None) -> _Outcome:
        why = scrub(why)
        if retry_after is None and effect.attempt >= self.rt.settings.delivery_max_attempts:
            return self._park(effect, why)
        # A provider that said when to come back (a rate limit): waiting is not failing, so this
        # attempt does not spend the budget. It certainly did not deliver, so undoing its count
        # keeps "maybe delivered" true only for attempts that really may have.
        delay = backoff(effect.attempt, retry_after)
        return _Outcome(effect.id, "retry", {"status": "pending", "last_error": why[:2000],
                                             "next_attempt_at": self.rt.clock.now() + timedelta(seconds=delay)},
                        undo_attempt=retry_after is not None)

    def _release(self, effect: Effect, until: datetime) -> _Outcome:
        """Back to the queue, not attempted, due again at ``until``: the attempt the lease
        counted is given back."""
        return _Outcome(effect.id, "released", {"status": "pending", "next_attempt_at": until}, undo_attempt=True)

    def _park(self, effect: Effect, why: str) -> _Outcome:
        why = scrub(why)  # a provider's error may quote what it was sent (a reset link, a token)
        log.error("effect %s parked as failed after %s attempt(s): %s", effect.key, effect.attempt, why,
                  extra={"trial_id": effect.trial_id})
        return _Outcome(effect.id, "failed", {"status": "failed", "last_error": why[:2000]})

    def _record(self, effects: list[Effect], lease_end: datetime, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Write every outcome in one transaction (one executemany per shape of row), on the rows
        this lease still holds; then tell #cloud-trial-alerts about parked effects and wake
        delivery for released ones. Returns the outcomes, ``superseded`` where the lease was lost."""
        if not outcomes:
            return outcomes
        ours = self._write(lease_end, outcomes)
        for i, outcome in enumerate(outcomes):
            if outcome.effect_id not in ours:
                log.warning("effect %s: its lease passed to another worker before the result was written; "
                            "that worker's result stands", outcome.effect_id)
                outcomes[i] = _Outcome(outcome.effect_id, "superseded", {})
        by_id = {e.id: e for e in effects}
        parked = [(by_id[x.effect_id], x.values["last_error"], x.payload_refused)
                  for x in outcomes if x.outcome == "failed"]
        if parked:
            self._tell_alerts_channel(parked)
        released_now = [x.effect_id for x in outcomes if x.outcome == "released"
                        and x.values["next_attempt_at"] <= self.rt.clock.now()]
        if released_now and self.rt.wake:
            self.rt.wake(released_now)
        return outcomes

    def _write(self, lease_end: datetime, outcomes: list[_Outcome]) -> set[int]:
        o = tables.outbox
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self.rt.session_factory() as session, session.begin():
                    if session.get_bind().dialect.name == "postgresql":
                        # Safe to lose in a database crash: the lease (committed durably before the
                        # calls) then expires and the next attempts ask the provider before sending again.
                        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    held = (o.c.status == "delivering", o.c.next_attempt_at == lease_end)
                    ours = set(session.scalars(select(o.c.id).where(
                        o.c.id.in_([x.effect_id for x in outcomes]), *held).with_for_update()))
                    shapes: dict[tuple, list[dict[str, Any]]] = {}
                    for outcome in outcomes:
                        if outcome.effect_id not in ours:
                            continue
                        values = outcome.values
                        shapes.setdefault((tuple(sorted(values)), outcome.undo_attempt), []).append(
                            {"b_id": outcome.effect_id, **{f"b_{k}": v for k, v in values.items()}})
                    for (columns, undo_attempt), rows in shapes.items():
                        sets: dict[str, Any] = {c: bindparam(f"b_{c}") for c in columns}
                        if undo_attempt:
                            sets["attempts"] = o.c.attempts - 1
                        session.execute(update(o).where(o.c.id == bindparam("b_id"), *held).values(sets), rows)
                return ours
            except OperationalError:
                # A database blip must not leave a whole batch of delivered effects to be sent
                # again (email cannot be asked whether it already arrived).
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("writing a batch's results failed (attempt %s); trying again", attempt, exc_info=True)
                time.sleep(0.5 * attempt)
        return set()

    def _tell_alerts_channel(self, parked: list[tuple[Effect, str, bool]]) -> None:
        with self.rt.uow() as uow:
            for effect, why, payload_refused in parked:
                if effect.kind.startswith("slack.") and effect.payload.get("channel") == self.rt.settings.alerts_channel \
                        and effect.key.startswith("delivery-failed:"):
                    continue  # the failure notice itself failed: do not loop
                advice = ("The provider refused what trialflow built, so sending it again would be refused "
                          "again: a trialflow bug to report, not one to retry." if payload_refused
                          else f"Retry with `trialflow outbox retry {effect.id}`.")
                text = mrkdwn(":x: trialflow could not deliver `{kind}` for trial `{trial}` after {n} attempt(s): "
                              "{why}. {advice}", kind=effect.kind, trial=effect.trial_id or "-", n=str(effect.attempt),
                              why=Data(why[:300]), advice=advice)
                # One notice per effect (its key): a parked effect retried by hand and parked again is not announced twice.
                outbox.enqueue(uow, key=f"delivery-failed:{effect.id}", kind="slack.message", now=self.rt.clock.now(),
                               trial_id=effect.trial_id, payload={"channel": self.rt.settings.alerts_channel,
                                                                  **message(text)})
            uow.commit()

    def drain(self, limit: int = 500) -> dict[str, int]:
        """Deliver what is due now, up to ``limit`` effects. Returns counts by outcome:
        ``released`` counts effects handed back unattempted (behind a provider's Retry-After, or
        past half a slow batch's lease); ``skipped`` those another worker held."""
        counts: Counter[str] = Counter()
        for chunk in batches(self.due_ids(limit), self.rt.settings.delivery_batch_size):
            outcomes = self.deliver_batch(chunk)
            counts.update(outcomes.get(effect_id, "skipped") for effect_id in chunk)
        return dict(counts)

    def drain_all(self, batch: int = 200) -> dict[str, int]:
        """Deliver until nothing more is due (effects enqueued meanwhile included)."""
        total: Counter[str] = Counter()
        while True:
            counts = self.drain(batch)
            total.update(counts)
            if sum(counts.values()) < batch:
                return dict(total)


def batches(ids, size: int):
    """``ids`` in lists of at most ``size``, in order: one delivery task's worth each."""
    ids = list(ids)
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def retry(rt, effect_id: int) -> bool:
    """Put a failed (or pending) effect back in the queue now, with a fresh attempt budget."""
    with rt.session_factory() as session, session.begin():
        done = session.execute(update(tables.outbox).where(
            tables.outbox.c.id == effect_id, tables.outbox.c.status.in_(("failed", "pending"))
        ).values(status="pending", attempts=0, next_attempt_at=rt.clock.now(), last_error=None)).rowcount
    if done and rt.wake:
        rt.wake([effect_id])
    return bool(done)
