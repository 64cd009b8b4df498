"""What each lifecycle event causes: a pure decision over the trial, the people on it and the
settings. ``decide`` returns the effects (Slack messages, GitHub issues, emails) and timer
changes as values (``domain.decisions.Decisions``); ``services.writer`` persists them in the
transaction that took the step. Nothing here writes, and nothing here depends on who called.

Each effect's idempotency key is ``<trial>:<history position>:<name>``, so replaying the same
event (a retried request, a second worker) can never enqueue it twice.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions, InstanceReady
from trialflow.domain.normalize import is_public_domain
from trialflow.domain.trial import CASE_NAMED, SYSTEM, Event, PlainTrial
from trialflow.services import instance_policies as instances
from trialflow.services import slack_blocks as sb
from trialflow.services.messages import (account_of, channel_name, domain_change_body, instance_request_body,
                                         lead, score, who)
from trialflow.services.timers import (DECISION_DAYS, ESCALATION_GRACE_DAYS, EXTENSION_DAYS, HEADS_UP_DAYS,
                                       REVIEW_DAYS, TIMER_KINDS, USER_ADDED_REMINDER_DAYS)
from trialflow.settings import Settings

__all__ = ["Context", "decide", "DECISION_DAYS", "EXTENSION_DAYS", "REVIEW_DAYS"]


class People(Protocol):
    def by_email(self, email: str | None) -> Any: ...

    def mention(self, email: str | None) -> str: ...


class Context:
    """What a decision may read: the people on the trial (``services.directory.Directory``,
    whose lookups are cached, so one context serves a whole batch) and the settings."""

    def __init__(self, people: People, settings: Settings):
        self.people = people
        self.settings = settings

    @property
    def alerts(self) -> str:
        return self.settings.alerts_channel


class _Effects:
    """Collects the effects of one event under keys derived from its place in the history."""

    def __init__(self, ctx: Context, event: Event, out: Decisions):
        self.ctx = ctx
        self.event = event
        self.out = out
        self.trial = event.trial
        self.base = f"{self.trial.id}:{len(self.trial.history)}:{event.trigger}"

    def add(self, name: str, kind: str, payload: dict[str, Any]) -> None:
        self.out.effect(f"{self.base}:{name}", kind, payload, self.event.at, self.trial.id)

    def post(self, name: str, channel: str, text: str, *blocks: dict, ref: str | None = None,
             thread_ref: str | None = None) -> None:
        payload = {"channel": channel, **sb.message(text, *blocks)}
        if ref:
            payload["ref"] = ref
        if thread_ref:
            payload["thread_ref"] = thread_ref
        self.add(name, "slack.message", payload)

    def alert(self, text: str, *blocks: dict) -> None:
        """The trial's one alert in #cloud-trial-alerts; later updates edit it in place."""
        self.post("alert", self.ctx.alerts, text, *blocks, ref=f"alert:{self.trial.id}")

    def update_alert(self, text: str) -> None:
        """Replace the alert's buttons with what happened, so the same button cannot be pressed twice."""
        self.add("alert-update", "slack.update", {
            "ref": f"alert:{self.trial.id}", **sb.message(text, sb.context(f"trial `{self.trial.id}`")),
        })

    def to_account_channel(self, name: str, text: str, *blocks: dict) -> None:
        if self.trial.account_name:
            self.post(name, "#" + channel_name(self.trial.account_name), text, *blocks)
        else:
            self.post(name, self.ctx.alerts, text, *blocks)

    def channel(self) -> None:
        if not self.trial.account_name:
            return
        self.add("channel", "slack.channel", {
            "name": channel_name(self.trial.account_name),
            "invite": [e for e in (self.trial.ce, self.trial.ae) if e],
            "topic": f"Cloud trial for {self.trial.account_name} ({self.trial.domain})",
        })

    def email(self, slot: str, template: str, to: str, *, cc: list[str] | None = None,
              sender: str | None = None, **context: Any) -> None:
        self.add(slot, "email", {"template": template, "to": to, "cc": [c for c in (cc or []) if c],
                                 "from": sender, "context": context})

    def issue(self, name: str, issue_kind: str, title: str, body: str, labels: list[str],
              ref: str | None = None, detail: dict[str, Any] | None = None) -> None:
        payload = {"issue_kind": issue_kind, "title": title, "body": body, "labels": labels,
                   "ref": ref or f"{issue_kind}:{self.trial.id}"}
        if detail:
            payload["detail"] = detail  # kept with the request until the cloud team completes it
        self.add(name, "github.issue", payload)


def _claimed(fx: _Effects, ctx: Context, trial: PlainTrial) -> None:
    named = trial.case == CASE_NAMED
    kind = "named account" if named else "pre-qualified account"
    manual = instances.claimed(fx, ctx.people, ctx.settings, trial)
    fx.alert(
        f":rocket: {lead(trial)} signed up: {kind} *{trial.account_name}*; instance {trial.instance_url} claimed from the pool.",
        sb.section(who(ctx.people, trial)),
        sb.section("Next: " + ("inbound SDR routes to the named SDR, who converts to Opp."
                               if named else "inbound SDR converts to Opp (AE/CE assigned by round robin).")),
        *([sb.section(manual)] if manual else []),
        sb.buttons(trial.id, lc.CONVERT_TO_OPPORTUNITY, lc.REASSIGN),
    )
    fx.channel()
    _start_clock(fx, trial, fx.event.at)


def _start_clock(fx: _Effects, trial: PlainTrial, now: datetime) -> None:
    start = trial.started_at or now
    fx.out.schedule(trial.id, lc.TERMINATION_HEADS_UP, start + timedelta(days=HEADS_UP_DAYS), now)
    fx.out.schedule(trial.id, lc.DAY15_REVIEW, start + timedelta(days=REVIEW_DAYS), now)


def _instance_requested(fx: _Effects, ctx: Context, trial: PlainTrial, by: str) -> None:
    fx.update_alert(f":white_check_mark: {lead(trial)} qualified by {by}; instance requested. {who(ctx.people, trial)}")
    fx.channel()
    ce = ctx.people.by_email(trial.ce)
    fx.issue("instance-request", "instance-request",
             f"Cloud trial instance request: {account_of(trial)}",
             instance_request_body(trial, trial.ce or "", ctx.settings), ["cloud-trial", "instance-request"])
    ae = ctx.people.by_email(trial.ae)
    fx.email("welcome", "welcome", trial.email, cc=[trial.ae], sender=trial.ce or None,
             name=trial.name or "", ce_name=ce.name if ce else (trial.ce or "our team"),
             ce_email=trial.ce or "", ae_name=ae.name if ae else "")


def decide(trial: PlainTrial, ctx: Context) -> Decisions:
    """What the trial's recorded events cause; clears the events."""
    out = Decisions()
    events, trial.events[:] = list(trial.events), []
    for event in events:
        HANDLERS[event.trigger](_Effects(ctx, event, out), ctx, trial, event)
    return out


def _on_route_to_existing(fx, ctx, trial, event):
    fx.alert(f":house: {lead(trial)} signed up; *{trial.domain}* already has {trial.instance_url}: redirected there.",
             sb.section(instances.colleague_joins(fx, ctx.people, ctx.settings, trial, event)),
             sb.buttons(trial.id, "user_added"))
    fx.out.schedule(trial.id, lc.USER_ADDED_REMINDER, event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_claim(fx, ctx, trial, event):
    _claimed(fx, ctx, trial)


def _on_wait(fx, ctx, trial, event):
    text = f":hourglass: {lead(trial)} is waiting for capacity (instance cap or empty pool); it proceeds by itself when an instance frees up."
    if event.from_state == lc.TRIAGE:
        fx.update_alert(f"{text} Qualified by {ctx.people.mention(trial.sdr)}.")
    else:
        fx.alert(text, sb.context(score(trial)))


def _on_triage(fx, ctx, trial, event):
    fx.alert(f":mag: New cloud trial request from {lead(trial)} ({trial.domain}): inbound SDR, please triage.",
             sb.context(score(trial)), sb.buttons(trial.id, lc.QUALIFY, lc.DISQUALIFY))


def _on_user_added(fx, ctx, trial, event):
    by = ("trialflow made their account and emailed them its link" if event.actor == SYSTEM else
          f"confirmed by {ctx.people.mention(trial.ae) if event.actor == trial.ae else event.actor}")
    fx.update_alert(f":white_check_mark: {lead(trial)} was added to {trial.instance_url} ({by}).")
    fx.out.cancel(trial.id, lc.USER_ADDED_REMINDER)


def _on_remind_user_added(fx, ctx, trial, event):
    fx.post("reminder", ctx.alerts, f":bell: {ctx.people.mention(trial.ae)}: {trial.email} is still waiting to be added to {trial.instance_url}.",
            sb.buttons(trial.id, "user_added"), thread_ref=f"alert:{trial.id}")
    fx.out.schedule(trial.id, lc.USER_ADDED_REMINDER, event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_disqualify(fx, ctx, trial, event):
    reason = event.detail.get("reason", "")
    fx.update_alert(f":no_entry: {lead(trial)} disqualified by {ctx.people.mention(trial.sdr)}: {reason}. Self-hosting email sent.")
    fx.email("self-host", "self_host", trial.email, name=trial.name or "")


def _on_qualify(fx, ctx, trial, event):
    _instance_requested(fx, ctx, trial, ctx.people.mention(trial.sdr))


def _on_request_instance(fx, ctx, trial, event):
    _instance_requested(fx, ctx, trial, "the capacity queue")


def _on_ready(fx, ctx, trial, event):
    # The instance is live and, unless the domain is a public mailbox's (shared by strangers:
    # claiming it would send every later @hotmail.fr signup to this one person), its domain leads there.
    fx.out.instance_ready(InstanceReady(trial.instance_host, trial.id, trial.email, trial.domain,
                                        claim_domain=not is_public_domain(trial.domain), at=event.at))
    instances.ready(fx, ctx.people, ctx.settings, trial)
    fx.add("issue-comment", "github.comment", {
        "ref": f"instance-request:{trial.id}",
        "body": f"Instance {trial.instance_url} is ready; {trial.ce or 'the CE'} has been notified to hand it off.",
    })


def _on_hand_off(fx, ctx, trial, event):
    review_on = str((trial.started_at + timedelta(days=REVIEW_DAYS)).date())
    fx.to_account_channel("handed-off", instances.handed_off_text(ctx.people, trial, event, review_on))
    _start_clock(fx, trial, event.at)


def _on_convert_to_opp(fx, ctx, trial, event):
    opp = event.detail.get("opportunity_id") or trial.opportunity_id or "n/a"
    fx.to_account_channel("opp", f":briefcase: Opportunity {opp} created for {account_of(trial)}. {who(ctx.people, trial)}")


def _on_reassign(fx, ctx, trial, event):
    fx.to_account_channel("reassigned", f":arrows_counterclockwise: {trial.email}'s trial reassigned: {who(ctx.people, trial)}")
    fx.channel()


def _on_domain_change(fx, ctx, trial, event):
    new = event.detail["new_host"]
    body = domain_change_body(trial, new, event.actor, len(trial.history))
    fx.issue("domain-change", "domain-change", f"Domain name change: {trial.instance_host} → {new}", body,
             ["cloud-trial", "domain-change"], ref=f"domain-change:{trial.id}:{len(trial.history)}",
             detail={"new_host": new})
    fx.to_account_channel("domain-change-ae", f":money_with_wings: AE {ctx.people.mention(trial.ae)}: {trial.email} asked for the vanity domain {new} (a buying signal).")


def _on_warn(fx, ctx, trial, event):
    review_on = str((trial.started_at + timedelta(days=REVIEW_DAYS)).date())
    fx.to_account_channel("heads-up", instances.heads_up_text(ctx.people, trial, event, review_on),
                          sb.buttons(trial.id, lc.KEEP, lc.TERMINATE))


def _on_check_usage(fx, ctx, trial, event):
    instances.check_usage(fx, trial)


def _on_ask_decision(fx, ctx, trial, event):
    instances.ask_decision(fx, ctx.people, trial)


def _on_admin_confirmed(fx, ctx, trial, event):
    instances.admin_confirmed(fx, trial, event)


def _on_request_done(fx, ctx, trial, event):
    instances.request_done(fx, trial, event)


def _on_keep(fx, ctx, trial, event):
    fx.to_account_channel("kept", f":pushpin: {event.actor} kept {trial.instance_url}: it will be extended at day 15, not terminated.")


def _on_extend(fx, ctx, trial, event):
    days = int(event.detail.get("days", EXTENSION_DAYS))
    until = datetime.fromisoformat(event.detail["until"])
    fx.issue("trial-extend", "trial-extend", f"Trial extend: {trial.instance_host} until {until.date()}",
             f"Extend the cloud trial of {account_of(trial)} ({trial.instance_url}) by {days} days, until {until.date()}.\n"
             f"Requested by: {event.actor}\n\n<!-- trialflow:{trial.id}:trial-extend:{len(trial.history)} -->",
             ["cloud-trial", "trial-extend"], ref=f"trial-extend:{trial.id}:{len(trial.history)}")
    if event.detail.get("license_change"):
        fx.issue("license-change", "license-change", f"License change for trial extension: {trial.instance_host}",
                 f"The trial of {account_of(trial)} is extended by more than {EXTENSION_DAYS} extra days (until {until.date()}): "
                 f"its trial license must be extended too.\n\n<!-- trialflow:{trial.id}:license-change:{len(trial.history)} -->",
                 ["cloud-trial", "license-change"], ref=f"license-change:{trial.id}:{len(trial.history)}")
    fx.to_account_channel("extended", f":calendar: {trial.instance_url} extended until {until.date()} ({event.actor}).")
    fx.out.cancel(trial.id, lc.TERMINATION_HEADS_UP, lc.DAY15_REVIEW, lc.DAY30_ESCALATION)
    fx.out.schedule(trial.id, lc.DAY30_DECISION, until, event.at)


def _on_remind_decision(fx, ctx, trial, event):
    fx.to_account_channel("decision", f":alarm_clock: CE {ctx.people.mention(trial.ce)}: {trial.instance_url} has reached the end of its trial. Extend, convert or terminate.",
                          sb.buttons(trial.id, lc.EXTEND, lc.CONVERT, lc.TERMINATE))
    fx.out.schedule(trial.id, lc.DAY30_ESCALATION, event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_escalate(fx, ctx, trial, event):
    fx.post("escalation", ctx.alerts, f":rotating_light: No decision on {trial.instance_url} ({account_of(trial)}) "
            f"after day 30. AE {ctx.people.mention(trial.ae)}, CE {ctx.people.mention(trial.ce)}: extend, convert or terminate.",
            sb.buttons(trial.id, lc.EXTEND, lc.CONVERT, lc.TERMINATE))
    # Until someone decides (extend, convert and terminate cancel it), the escalation repeats.
    fx.out.schedule(trial.id, lc.DAY30_ESCALATION, event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_convert(fx, ctx, trial, event):
    fx.to_account_channel("converted", f":tada: {account_of(trial)} converted to paid ({event.actor}).")
    fx.update_alert(f":tada: {lead(trial)}: converted.")
    fx.out.cancel(trial.id, *TIMER_KINDS)


def _on_terminate(fx, ctx, trial, event):
    reason = event.detail.get("reason", "")
    why = f"{reason or 'no reason given'}; {event.actor}"
    if trial.instance_host:
        fx.issue("termination", "termination", f"Terminate cloud trial instance {trial.instance_host}",
                 f"Terminate {trial.instance_url} ({account_of(trial)}). Reason: {reason}\nRequested by: {event.actor}\n\n"
                 f"<!-- trialflow:{trial.id}:termination -->", ["cloud-trial", "termination"])
        done = f"{trial.instance_url} is being terminated"
    elif event.from_state == lc.INSTANCE_REQUESTED:
        # Nothing to terminate yet: the cloud team must stop provisioning, on the request itself.
        fx.add("request-cancelled", "github.comment", {
            "ref": f"instance-request:{trial.id}",
            "body": f"Request cancelled by {event.actor} ({reason or 'no reason given'}): please stop provisioning this instance.",
        })
        done = f"The instance request for {account_of(trial)} is cancelled"
    else:
        done = f"{trial.email} left the capacity queue"
    fx.to_account_channel("terminated", f":wastebasket: {done} ({why}).", sb.buttons(trial.id, lc.REQUEST_FEEDBACK))
    fx.update_alert(f":wastebasket: {lead(trial)}: terminated.")
    fx.out.cancel(trial.id, *TIMER_KINDS)
    if trial.instance_host:
        fx.out.release_instance(trial.instance_host)


def _on_feedback(fx, ctx, trial, event):
    fx.email("feedback", "feedback_request", trial.email, sender=ctx.settings.feedback_sender, name=trial.name or "",
             cc=[trial.ce])


# One handler per lifecycle step (a test checks that every trigger of the table has one).
HANDLERS: dict[str, Callable[[_Effects, Context, PlainTrial, Event], None]] = {
    lc.ROUTE_TO_EXISTING: _on_route_to_existing,
    lc.CLAIM_POOL_INSTANCE: _on_claim,
    lc.WAIT_FOR_CAPACITY: _on_wait,
    lc.SEND_TO_TRIAGE: _on_triage,
    lc.CONFIRM_USER_ADDED: _on_user_added,
    lc.REMIND_USER_ADDED: _on_remind_user_added,
    lc.DISQUALIFY: _on_disqualify,
    lc.QUALIFY: _on_qualify,
    lc.REQUEST_INSTANCE: _on_request_instance,
    lc.MARK_INSTANCE_READY: _on_ready,
    lc.HAND_OFF: _on_hand_off,
    lc.CONVERT_TO_OPPORTUNITY: _on_convert_to_opp,
    lc.REASSIGN: _on_reassign,
    lc.REQUEST_DOMAIN_CHANGE: _on_domain_change,
    lc.WARN_TERMINATION: _on_warn,
    lc.KEEP: _on_keep,
    lc.EXTEND: _on_extend,
    lc.REMIND_DECISION: _on_remind_decision,
    lc.ESCALATE_DECISION: _on_escalate,
    lc.CONVERT: _on_convert,
    lc.TERMINATE: _on_terminate,
    lc.REQUEST_FEEDBACK: _on_feedback,
    lc.CHECK_USAGE: _on_check_usage,
    lc.ASK_DECISION: _on_ask_decision,
    lc.CONFIRM_ADMIN: _on_admin_confirmed,
    lc.CONFIRM_REQUEST_DONE: _on_request_done,
}
