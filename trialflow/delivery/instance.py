"""Effects on the trial instances themselves (``instance.*``), through the instance-admin port.

``instance.account`` ``{host, email, purpose, admin, mail: {template, to, cc, from, context}}``
    Give ``email`` an account on ``host`` and email them the link to set its password, in one step.
    The link is asked of the instance (``createUser``; if the username or email is already there,
    the user is found and ``randomizeUserPassword`` gives a fresh link), put into the email's body,
    sent, and forgotten: it is never in the outbox row, its result, a log line or an exception. A
    retry after a worker died mid-way finds the account and sends a fresh link (each call renews the
    code, so the newest email is the one that works; it gets its own Message-ID for that reason).
    ``admin``: the account is made a site admin (the person who claims a pool instance owns it).
    ``purpose`` (``claim``, ``hand_off``, ``colleague``) tells ``InstanceFacts`` what it completes.

``instance.usage`` ``{host}``
    Ask the instance for its last 7 days (active users, searches, code-intel actions, who signed
    in) and record the answer as activity (``InstanceFacts.usage``).

Password reset turned off on the instance (SSO only): the account is made, no link exists, and
``InstanceFacts.account_ready`` is told so (the CE hears it in Slack).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from trialflow.delivery.core import Effect, Transport
from trialflow.domain.instance_admin import AccountExists, InstanceAdmin, InstanceUsage, InstanceUser, usernames_for
from trialflow.errors import PermanentFailure

log = logging.getLogger("trialflow.delivery.instance")

USAGE_DAYS = 7


class InstanceFacts(Protocol):
    """Where what an instance answered is recorded (``services.instance_sync.InstanceRecorder``)."""

    def account_ready(self, trial_id: str | None, key: str, purpose: str, host: str, email: str, username: str,
                      link_sent: bool) -> None: ...

    def usage(self, host: str, usage: InstanceUsage) -> None: ...


class InstanceTransport:
    def __init__(self, api: InstanceAdmin, mailer: Transport, facts: InstanceFacts, now: Callable[[], datetime]):
        self.api = api
        self.mailer = mailer
        self.facts = facts
        self.now = now

    def deliver(self, effect: Effect) -> dict[str, Any]:
        if effect.kind == "instance.account":
            return self._account(effect)
        if effect.kind == "instance.usage":
            return self._usage(effect)
        raise PermanentFailure(f"the instance transport does not know effect kind {effect.kind}")

    # --- instance.account ----------------------------------------------------------------------

    def _account(self, effect: Effect) -> dict[str, Any]:
        payload = effect.payload
        host, email, purpose = str(payload["host"]), str(payload["email"]), str(payload.get("purpose") or "")
        user, link, created = self._ensure_account(host, email)
        if payload.get("admin"):
            self.api.make_site_admin(host, user.id)
        result: dict[str, Any] = {"host": host, "account": "created" if created else "existing",
                                  "username": user.username, "link": "emailed" if link else "reset disabled"}
        if link is not None:
            sent = self.mailer.deliver(self._mail(effect, link))
            result["email"] = {k: sent[k] for k in ("message_id", "to", "dry_run") if k in sent}
            log.info("account %s on %s ready; its password link was emailed", user.username, host,
                     extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        else:
            log.warning("account %s on %s made, but the instance has password reset turned off: no link",
                        user.username, host, extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        self.facts.account_ready(effect.trial_id, effect.key, purpose, host, email, user.username, link is not None)
        return result

    def _ensure_account(self, host: str, email: str) -> tuple[InstanceUser, str | None, bool]:
        """(the user, a fresh reset link or None when reset is off, whether it was created now)."""
        for username in usernames_for(email):
            try:
                made = self.api.create_user(host, username, email)
            except AccountExists as exc:
                existing = self.api.user_by_email(host, email)
                if existing is not None:  # theirs already (an earlier attempt, or they had one)
                    return existing, self.api.randomize_password(host, existing.id), False
                if exc.what == "email":
                    raise PermanentFailure(f"the instance {host} says {email} already has an account, but does not "
                                           "find it by that address (unverified?): give them access by hand") from None
                continue  # the username is someone else's
            # No link with the new user: reset is off (then this is None too) or the instance's own email failed.
            return made.user, made.reset_url or self.api.randomize_password(host, made.user.id), True
        raise PermanentFailure(f"every username tried for {email} is taken on {host}")

    def _mail(self, effect: Effect, link: str) -> Effect:
        mail = dict(effect.payload.get("mail") or {})
        if not mail.get("to"):
            raise PermanentFailure(f"instance.account effect {effect.key} has no email to send the link in")
        mail["context"] = {**(mail.get("context") or {}), "reset_link": link}
        # Each attempt's link is a new one: its own Message-ID, so no mail system drops it as a duplicate.
        return Effect(effect.id, f"{effect.key}:mail:{effect.attempt}", "email", mail, effect.trial_id, 1,
                      effect.results)

    # --- instance.usage ------------------------------------------------------------------------

    def _usage(self, effect: Effect) -> dict[str, Any]:
        host = str(effect.payload["host"])
        now = self.now()
        usage = self.api.usage(host, now - timedelta(days=USAGE_DAYS), now)
        self.facts.usage(host, usage)
        return {"host": host, "at": usage.at.isoformat(), "active_users": usage.active_users,
                "searches": usage.searches, "code_intel_actions": usage.code_intel_actions,
                "signed_in": len(usage.signed_in)}
