"""The dry-run sink: with no token configured, log what would be sent and mark it delivered."""
from __future__ import annotations

import logging

from trialflow.services.outbox import redact

log = logging.getLogger("trialflow.dryrun")


class DryRunTransport:
    def __init__(self, name: str):
        self.name = name
        self.delivered: list = []

    def deliver(self, effect) -> dict:
        payload = redact(effect.payload)
        summary = payload.get("text") or payload.get("title") or payload.get("template") or payload.get("name") or ""
        target = payload.get("channel") or payload.get("to") or payload.get("ref") or ""
        log.info("dry-run %s → %s: %s", effect.kind, target, str(summary)[:200],
                 extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        self.delivered.append(effect)
        return {"dry_run": True}
