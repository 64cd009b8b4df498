"""What a step causes, as values: the effects to deliver, the timers to set or cancel and the
instances to release. Policies return a ``Decisions``; one writer (``trialflow.services.writer``)
persists it, whoever took the step (a signup, a person in Slack or GitHub, the sweep).

Pure: no ORM, no clients, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Effect:
    """One outbox row: delivered at least once by a worker, never twice thanks to ``key``."""
    key: str
    kind: str
    payload: dict[str, Any]
    trial_id: str | None
    at: datetime


@dataclass(frozen=True)
class InstanceReady:
    """The cloud team reported ``host`` ready for ``trial_id``: the instance is live and its
    domain now leads there (unless the domain is a public mailbox's, ``claim_domain`` False)."""
    host: str
    trial_id: str
    admin_email: str
    domain: str
    claim_domain: bool
    at: datetime


@dataclass(frozen=True)
class InstanceMoved:
    """The cloud team changed ``old_host``'s domain to ``new_host``: the instance, its domain's claim
    and its trial follow (routing, activity reports, usage polls, the admin of record)."""
    old_host: str
    new_host: str
    trial_id: str
    at: datetime


@dataclass
class Decisions:
    """Effects keep their order; a repeated idempotency key is a no-op when written. Timer changes
    keep only the last operation per (trial, kind), which leaves the same rows as applying them in
    order: a cancel deletes unfired timers, a schedule upserts."""
    effects: list[Effect] = field(default_factory=list)
    timers: dict[tuple[str, str], tuple[datetime, datetime] | None] = field(default_factory=dict)  # None: cancel
    released_hosts: list[str] = field(default_factory=list)
    ready_instances: list[InstanceReady] = field(default_factory=list)
    # Terminated instances the cloud team confirmed gone: only now is their capacity free.
    confirmed_teardowns: list[tuple[str, datetime]] = field(default_factory=list)
    moved_instances: list[InstanceMoved] = field(default_factory=list)

    def effect(self, key: str, kind: str, payload: dict[str, Any], at: datetime, trial_id: str | None = None) -> None:
        self.effects.append(Effect(key, kind, payload, trial_id, at))

    def schedule(self, trial_id: str, kind: str, due_at: datetime, now: datetime) -> None:
        self.timers[(trial_id, kind)] = (due_at, now)

    def cancel(self, trial_id: str, *kinds: str) -> None:
        for kind in kinds:
            self.timers[(trial_id, kind)] = None

    def release_instance(self, host: str) -> None:
        self.released_hosts.append(host)

    def instance_ready(self, ready: InstanceReady) -> None:
        self.ready_instances.append(ready)

    def confirm_teardown(self, host: str, at: datetime) -> None:
        self.confirmed_teardowns.append((host, at))

    def move_instance(self, moved: InstanceMoved) -> None:
        self.moved_instances.append(moved)

    def extend(self, other: Decisions) -> None:
        self.effects.extend(other.effects)
        self.timers.update(other.timers)
        self.released_hosts.extend(other.released_hosts)
        self.ready_instances.extend(other.ready_instances)
        self.confirmed_teardowns.extend(other.confirmed_teardowns)
        self.moved_instances.extend(other.moved_instances)

    def due(self, at: datetime) -> Decisions:
        """These decisions with their effects due at ``at``: a step decided as of another time
        (``trialflow sweep --at``) still causes what it causes when it is taken."""
        # replace() carries every other field, so a kind of decision added later is never dropped here.
        return replace(self, effects=[replace(e, at=at) for e in self.effects])

    @property
    def scheduled(self) -> list[tuple[str, str, datetime, datetime]]:
        """(trial_id, kind, due_at, created_at) of every timer set."""
        return [(trial_id, kind, op[0], op[1]) for (trial_id, kind), op in self.timers.items() if op is not None]

    @property
    def cancelled(self) -> list[tuple[str, str]]:
        return [key for key, op in self.timers.items() if op is None]

    def __bool__(self) -> bool:
        return bool(self.effects or self.timers or self.released_hosts or self.ready_instances
                    or self.confirmed_teardowns or self.moved_instances)
