"""What the trial instances answered, recorded: an account made (a 3.2 hand-off, a colleague
added), an instance with password reset turned off, a usage poll (activity, the PQL grade, the
instance's last answer) and who signed in (the admin of record).

The instance transport (``delivery.instance``) calls these while it delivers an effect. Each is one
transaction of its own and safe to run twice: a retried effect reports the same facts again.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.instance_admin import InstanceUsage
from trialflow.domain.trial import SYSTEM
from trialflow.errors import NotFound
from trialflow.services import outbox
from trialflow.services import slack_blocks as sb
from trialflow.services.activity import ActivityReport, record_activity
from trialflow.services.admin_of_record import note_sign_ins
from trialflow.services.directory import Directory
from trialflow.services.fit import Data
from trialflow.services.instance_policies import COLLEAGUE, HAND_OFF
from trialflow.services.messages import channel_name
from trialflow.services.trials import Command, get_trial, handle

log = logging.getLogger("trialflow.instances")

# The step an account completes, by the purpose it was made for.
_COMPLETES = {HAND_OFF: lc.HAND_OFF, COLLEAGUE: lc.CONFIRM_USER_ADDED}


class InstanceRecorder:
    """``delivery.instance.InstanceFacts`` on the database."""

    def __init__(self, rt: Any):
        self.rt = rt

    def account_ready(self, trial_id: str | None, key: str, purpose: str, host: str, email: str, username: str,
                      link_sent: bool) -> None:
        if not link_sent:
            self._reset_disabled(trial_id, key, host, email, username)
            return
        trigger = _COMPLETES.get(purpose)
        if trigger and trial_id:
            self._step(trial_id, trigger, {"account": username, "by": "trialflow"})

    def usage(self, host: str, usage: InstanceUsage) -> None:
        report = ActivityReport(at=usage.at, active_users=usage.active_users, searches=usage.searches,
                                code_intel_actions=usage.code_intel_actions, repositories=0)
        try:
            record_activity(self.rt, host, report)
        except NotFound:
            log.warning("usage of %s answered, but trialflow no longer knows that instance", host)
            return
        with self.rt.uow() as uow:
            uow.session.execute(update(tables.instances).where(tables.instances.c.host == host)
                                .values(api_answered_at=usage.at))
            note_sign_ins(uow, self.rt.settings, host, usage.signed_in, usage.at)
            uow.commit()

    def _step(self, trial_id: str, trigger: str, detail: dict[str, Any]) -> None:
        with self.rt.uow() as uow:
            try:
                trial = get_trial(uow, trial_id, lock=True)
            except NotFound:
                return
            if not trial.can(trigger):
                return  # done by hand meanwhile (Handed off, User added), or the trial moved on
            handle(uow, self.rt.settings, self.rt.clock.now(),
                   Command(trial_id, trigger, SYSTEM, None, detail, internal=True), trial)
            uow.commit()

    def _reset_disabled(self, trial_id: str | None, key: str, host: str, email: str, username: str) -> None:
        with self.rt.uow() as uow:
            trial = None
            if trial_id:
                try:
                    trial = get_trial(uow, trial_id)
                except NotFound:
                    trial = None
            people = Directory(uow.session)
            ce = people.mention(trial.ce) if trial is not None else "the CE"
            channel = ("#" + channel_name(trial.account_name)) if trial is not None and trial.account_name \
                else self.rt.settings.alerts_channel
            text = sb.mrkdwn(":warning: {host} has password reset turned off (no username/password sign-in), so "
                             "trialflow made {email}'s account `{username}` but could not send them a link to set its "
                             "password. CE {ce}: give them access the way the instance signs people in (SSO), and let "
                             "them know.", host=Data(host, keep_end=True), email=Data(email), username=Data(username),
                             ce=ce)
            outbox.enqueue(uow, key=f"{key}:reset-disabled", kind="slack.message", now=self.rt.clock.now(),
                           trial_id=trial_id, payload={"channel": channel, **sb.message(text)})
            uow.commit()
