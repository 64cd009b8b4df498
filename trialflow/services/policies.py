"""What each lifecycle event causes: outbox effects and timers, written in the same transaction.

Pure decisions over the trial and reference data; nothing here talks to Slack, GitHub or SMTP.
Each effect's idempotency key is ``<trial>:<history position>:<name>``, so replaying the same
event (a retried request, a second worker) can never enqueue it twice.
"""
from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import CASE_NAMED, Event, Trial
from trialflow.services import outbox
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory
from trialflow.services.uow import UnitOfWork
from trialflow.settings import Settings

HEADS_UP_DAYS = 12
REVIEW_DAYS = 15
DECISION_DAYS = 30
ESCALATION_GRACE_DAYS = 2
USER_ADDED_REMINDER_DAYS = 2
EXTENSION_DAYS = 15

TIMER_KINDS = ("user_added_reminder", "termination_heads_up", "day15_review", "day30_decision", "day30_escalation")


def channel_name(account: str) -> str:
    """Slack channel names: lower case, at most 80 chars, letters, digits, - and _ only."""
    ascii_name = unicodedata.normalize("NFKD", account).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_name).strip("-_") or "account"
    return ("cloud-trial-" + slug)[:80].rstrip("-_")


class Context:
    def __init__(self, uow: UnitOfWork, settings: Settings):
        self.uow = uow
        self.settings = settings
        self.people = Directory(uow.session)

    @property
    def alerts(self) -> str:
        return self.settings.alerts_channel


def schedule(uow: UnitOfWork, trial: Trial, kind: str, due_at: datetime, now: datetime) -> None:
    batch = getattr(uow, "batched_writes", None)
    if batch is not None:  # the sweep writes a whole batch's timers at once (services/sweep.py)
        batch.schedule(trial.id, kind, due_at, now)
        return
    if not insert_ignore(uow.session, tables.timers,
                         {"trial_id": trial.id, "kind": kind, "due_at": due_at, "created_at": now}):
        uow.session.execute(update(tables.timers).where(
            tables.timers.c.trial_id == trial.id, tables.timers.c.kind == kind
        ).values(due_at=due_at, fired_at=None))


def cancel(uow: UnitOfWork, trial: Trial, *kinds: str) -> None:
    batch = getattr(uow, "batched_writes", None)
    if batch is not None:
        batch.cancel(trial.id, kinds)
        return
    uow.session.execute(delete(tables.timers).where(
        tables.timers.c.trial_id == trial.id, tables.timers.c.kind.in_(kinds), tables.timers.c.fired_at.is_(None)))


def deadlines(session, trial_id: str) -> dict[str, str]:
    rows = session.execute(select(tables.timers.c.kind, tables.timers.c.due_at).where(
        tables.timers.c.trial_id == trial_id, tables.timers.c.fired_at.is_(None)).order_by(tables.timers.c.due_at))
    return {kind: due.isoformat() for kind, due in rows}


class _Effects:
    """Collects the effects of one event under keys derived from its place in the history."""

    def __init__(self, ctx: Context, event: Event):
        self.ctx = ctx
        self.event = event
        self.trial = event.trial
        self.base = f"{self.trial.id}:{len(self.trial.history)}:{event.trigger}"

    def add(self, name: str, kind: str, payload: dict[str, Any]) -> None:
        outbox.enqueue(self.ctx.uow, key=f"{self.base}:{name}", kind=kind, payload=payload,
                       now=self.event.at, trial_id=self.trial.id)

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
              ref: str | None = None) -> None:
        self.add(name, "github.issue", {"issue_kind": issue_kind, "title": title, "body": body,
                                        "labels": labels, "ref": ref or f"{issue_kind}:{self.trial.id}"})


def _who(ctx: Context, trial: Trial) -> str:
    m = ctx.people.mention
    return f"SDR {m(trial.sdr)} · AE {m(trial.ae)} · CE {m(trial.ce)}"


def _lead(trial: Trial) -> str:
    who = sb.escape(trial.name) if trial.name else trial.email
    company = f" ({sb.escape(trial.company)})" if trial.company else ""
    return f"*{who}*{company} <mailto:{trial.email}|{trial.email}>"


def _score(trial: Trial) -> str:
    grade = trial.pql_grade or "-"
    return f"lead score: MQL {trial.mql_points or 0} pts{' (MQL)' if (trial.mql_points or 0) >= 15 else ''} · PQL grade {grade}"


def instance_request_body(trial: Trial, ce_email: str, settings: Settings) -> str:
    tags = ",".join(settings.license_tags)
    return "\n".join([
        f"### Cloud trial instance request: {trial.account_name or trial.domain}",
        "",
        f"- Account: {trial.account_name or trial.domain}",
        f"- Domain: {trial.domain}",
        f"- Requester: {trial.name or ''} <{trial.email}>".replace(" <", " <", 1),
        f"- Assigned CE (needs operator access to create the password-reset link): {ce_email}",
        f"- Opportunity: {trial.opportunity_id or 'n/a'}",
        f"- Trial license: tags `{tags}`, {settings.trial_license_seats:,} users",
        "",
        "When the instance is ready, comment `/ready https://<instance host>` (or comment a line "
        "`Instance: https://<instance host>` and add the label `instance-ready`).",
        "",
        f"<!-- trialflow:{trial.id}:instance-request -->",
    ])


def _claimed(fx: _Effects, ctx: Context, trial: Trial) -> None:
    named = trial.case == CASE_NAMED
    kind = "named account" if named else "pre-qualified account"
    fx.alert(
        f":rocket: {_lead(trial)} signed up: {kind} *{trial.account_name}*; instance {trial.instance_url} claimed from the pool.",
        sb.section(_who(ctx, trial)),
        sb.section("Next: " + ("inbound SDR routes to the named SDR, who converts to Opp."
                               if named else "inbound SDR converts to Opp (AE/CE assigned by round robin).")),
        sb.buttons(trial.id, "convert_to_opportunity", "reassign"),
    )
    fx.email("reset-link", "password_reset", trial.email, instance_url=trial.instance_url,
             reset_link=f"{trial.instance_url}/password-reset?code={secrets.token_urlsafe(24)}", name=trial.name or "")
    fx.channel()
    _start_clock(ctx, trial, fx.event.at)


def _start_clock(ctx: Context, trial: Trial, now: datetime) -> None:
    start = trial.started_at or now
    schedule(ctx.uow, trial, "termination_heads_up", start + timedelta(days=HEADS_UP_DAYS), now)
    schedule(ctx.uow, trial, "day15_review", start + timedelta(days=REVIEW_DAYS), now)


def _instance_requested(fx: _Effects, ctx: Context, trial: Trial, by: str) -> None:
    fx.update_alert(f":white_check_mark: {_lead(trial)} qualified by {by}; instance requested. {_who(ctx, trial)}")
    fx.channel()
    ce = ctx.people.by_email(trial.ce)
    fx.issue("instance-request", "instance-request",
             f"Cloud trial instance request: {trial.account_name or trial.domain}",
             instance_request_body(trial, trial.ce or "", ctx.settings), ["cloud-trial", "instance-request"])
    ae = ctx.people.by_email(trial.ae)
    fx.email("welcome", "welcome", trial.email, cc=[trial.ae], sender=trial.ce or None,
             name=trial.name or "", ce_name=ce.name if ce else (trial.ce or "our team"),
             ce_email=trial.ce or "", ae_name=ae.name if ae else "")


def apply(uow: UnitOfWork, trial: Trial, settings: Settings, ctx: Context | None = None) -> None:
    """Turn the trial's recorded events into outbox rows and timers; clears the events."""
    ctx = ctx or Context(uow, settings)
    events, trial.events[:] = list(trial.events), []
    for event in events:
        fx = _Effects(ctx, event)
        _HANDLERS.get(event.trigger, _nothing)(fx, ctx, trial, event)


def _nothing(*_):
    pass


def _on_route_to_existing(fx, ctx, trial, event):
    fx.alert(f":house: {_lead(trial)} signed up; *{trial.domain}* already has {trial.instance_url}: redirected there.",
             sb.section(f"AE {ctx.people.mention(trial.ae)}: make sure the admin adds them "
                        "(without SSO they cannot join without an invite)."),
             sb.buttons(trial.id, "user_added"))
    schedule(ctx.uow, trial, "user_added_reminder", event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_claim(fx, ctx, trial, event):
    _claimed(fx, ctx, trial)


def _on_wait(fx, ctx, trial, event):
    text = f":hourglass: {_lead(trial)} is waiting for capacity (instance cap or empty pool); it proceeds by itself when an instance frees up."
    if event.from_state == lc.TRIAGE:
        fx.update_alert(f"{text} Qualified by {ctx.people.mention(trial.sdr)}.")
    else:
        fx.alert(text, sb.context(_score(trial)))


def _on_triage(fx, ctx, trial, event):
    fx.alert(f":mag: New cloud trial request from {_lead(trial)} ({trial.domain}): inbound SDR, please triage.",
             sb.context(_score(trial)), sb.buttons(trial.id, "qualify", "disqualify"))


def _on_user_added(fx, ctx, trial, event):
    fx.update_alert(f":white_check_mark: {_lead(trial)} was added to {trial.instance_url} (confirmed by {ctx.people.mention(trial.ae) if event.actor == trial.ae else event.actor}).")
    cancel(ctx.uow, trial, "user_added_reminder")


def _on_remind_user_added(fx, ctx, trial, event):
    fx.post("reminder", ctx.alerts, f":bell: {ctx.people.mention(trial.ae)}: {trial.email} is still waiting to be added to {trial.instance_url}.",
            sb.buttons(trial.id, "user_added"), thread_ref=f"alert:{trial.id}")
    schedule(ctx.uow, trial, "user_added_reminder", event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_disqualify(fx, ctx, trial, event):
    reason = event.detail.get("reason", "")
    fx.update_alert(f":no_entry: {_lead(trial)} disqualified by {ctx.people.mention(trial.sdr)}: {reason}. Self-hosting email sent.")
    fx.email("self-host", "self_host", trial.email, name=trial.name or "")


def _on_qualify(fx, ctx, trial, event):
    _instance_requested(fx, ctx, trial, ctx.people.mention(trial.sdr))


def _on_request_instance(fx, ctx, trial, event):
    _instance_requested(fx, ctx, trial, "the capacity queue")


def _on_ready(fx, ctx, trial, event):
    fx.post("ready", ctx.alerts, f":white_check_mark: Instance {trial.instance_url} for {_lead(trial)} is ready. "
            f"CE {ctx.people.mention(trial.ce)}: log in with `?sourcegraph-operator`, create the password-reset link and send it.",
            sb.buttons(trial.id, "hand_off"))
    fx.add("issue-comment", "github.comment", {
        "ref": f"instance-request:{trial.id}",
        "body": f"Instance {trial.instance_url} is ready; {trial.ce or 'the CE'} has been notified to hand it off.",
    })


def _on_hand_off(fx, ctx, trial, event):
    fx.to_account_channel("handed-off", f":handshake: {ctx.people.mention(trial.ce)} handed {trial.instance_url} off to {trial.email}. Trial started: day-15 review on {(trial.started_at + timedelta(days=REVIEW_DAYS)).date()}.")
    _start_clock(ctx, trial, event.at)


def _on_convert_to_opp(fx, ctx, trial, event):
    opp = event.detail.get("opportunity_id") or trial.opportunity_id or "n/a"
    fx.to_account_channel("opp", f":briefcase: Opportunity {opp} created for {trial.account_name or trial.domain}. {_who(ctx, trial)}")


def _on_reassign(fx, ctx, trial, event):
    fx.to_account_channel("reassigned", f":arrows_counterclockwise: {trial.email}'s trial reassigned: {_who(ctx, trial)}")
    fx.channel()


def _on_domain_change(fx, ctx, trial, event):
    new = event.detail["new_host"]
    body = "\n".join([
        f"### Domain name change: {trial.instance_host} → {new}",
        "", f"- Account: {trial.account_name or trial.domain}", f"- Requested by: {event.actor}", "",
        "Changing the domain will break, until the admin reconfigures them:",
        "- [ ] the auth provider (SSO): sign-in is broken until it is reconfigured",
        "- [ ] permission syncing: repository permissions are broken until it is reconfigured",
        "- [ ] webhooks pointing at the old domain",
        "- [ ] every hard-coded link to the old domain",
        "", f"<!-- trialflow:{trial.id}:domain-change:{len(trial.history)} -->",
    ])
    fx.issue("domain-change", "domain-change", f"Domain name change: {trial.instance_host} → {new}", body,
             ["cloud-trial", "domain-change"], ref=f"domain-change:{trial.id}:{len(trial.history)}")
    fx.to_account_channel("domain-change-ae", f":money_with_wings: AE {ctx.people.mention(trial.ae)}: {trial.email} asked for the vanity domain {new} (a buying signal).")


def _on_warn(fx, ctx, trial, event):
    fx.to_account_channel("heads-up", f":warning: CE {ctx.people.mention(trial.ce)}: {trial.instance_url} is up for its day-15 review on "
                          f"{(trial.started_at + timedelta(days=REVIEW_DAYS)).date()}. With no activity it will be terminated unless you keep it.",
                          sb.buttons(trial.id, "keep", "terminate"))


def _on_keep(fx, ctx, trial, event):
    fx.to_account_channel("kept", f":pushpin: {event.actor} kept {trial.instance_url}: it will be extended at day 15, not terminated.")


def _on_extend(fx, ctx, trial, event):
    days = int(event.detail.get("days", EXTENSION_DAYS))
    until = datetime.fromisoformat(event.detail["until"])
    fx.issue("trial-extend", "trial-extend", f"Trial extend: {trial.instance_host} until {until.date()}",
             f"Extend the cloud trial of {trial.account_name or trial.domain} ({trial.instance_url}) by {days} days, until {until.date()}.\n"
             f"Requested by: {event.actor}\n\n<!-- trialflow:{trial.id}:trial-extend:{len(trial.history)} -->",
             ["cloud-trial", "trial-extend"], ref=f"trial-extend:{trial.id}:{len(trial.history)}")
    if event.detail.get("license_change"):
        fx.issue("license-change", "license-change", f"License change for trial extension: {trial.instance_host}",
                 f"The trial of {trial.account_name or trial.domain} is extended by more than {EXTENSION_DAYS} extra days (until {until.date()}): "
                 f"its trial license must be extended too.\n\n<!-- trialflow:{trial.id}:license-change:{len(trial.history)} -->",
                 ["cloud-trial", "license-change"], ref=f"license-change:{trial.id}:{len(trial.history)}")
    fx.to_account_channel("extended", f":calendar: {trial.instance_url} extended until {until.date()} ({event.actor}).")
    cancel(ctx.uow, trial, "termination_heads_up", "day15_review", "day30_escalation")
    schedule(ctx.uow, trial, "day30_decision", until, event.at)


def _on_remind_decision(fx, ctx, trial, event):
    fx.to_account_channel("decision", f":alarm_clock: CE {ctx.people.mention(trial.ce)}: {trial.instance_url} has reached the end of its trial. Extend, convert or terminate.",
                          sb.buttons(trial.id, "extend", "convert", "terminate"))
    schedule(ctx.uow, trial, "day30_escalation", event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_escalate(fx, ctx, trial, event):
    fx.post("escalation", ctx.alerts, f":rotating_light: No decision on {trial.instance_url} ({trial.account_name or trial.domain}) "
            f"after day 30. AE {ctx.people.mention(trial.ae)}, CE {ctx.people.mention(trial.ce)}: extend, convert or terminate.",
            sb.buttons(trial.id, "extend", "convert", "terminate"))
    # Until someone decides (extend, convert and terminate cancel it), the escalation repeats.
    schedule(ctx.uow, trial, "day30_escalation", event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_convert(fx, ctx, trial, event):
    fx.to_account_channel("converted", f":tada: {trial.account_name or trial.domain} converted to paid ({event.actor}).")
    fx.update_alert(f":tada: {_lead(trial)}: converted.")
    cancel(ctx.uow, trial, *TIMER_KINDS)


def _on_terminate(fx, ctx, trial, event):
    reason = event.detail.get("reason", "")
    why = f"{reason or 'no reason given'}; {event.actor}"
    if trial.instance_host:
        fx.issue("termination", "termination", f"Terminate cloud trial instance {trial.instance_host}",
                 f"Terminate {trial.instance_url} ({trial.account_name or trial.domain}). Reason: {reason}\nRequested by: {event.actor}\n\n"
                 f"<!-- trialflow:{trial.id}:termination -->", ["cloud-trial", "termination"])
        done = f"{trial.instance_url} is being terminated"
    elif event.from_state == lc.INSTANCE_REQUESTED:
        # Nothing to terminate yet: the cloud team must stop provisioning, on the request itself.
        fx.add("request-cancelled", "github.comment", {
            "ref": f"instance-request:{trial.id}",
            "body": f"Request cancelled by {event.actor} ({reason or 'no reason given'}): please stop provisioning this instance.",
        })
        done = f"The instance request for {trial.account_name or trial.domain} is cancelled"
    else:
        done = f"{trial.email} left the capacity queue"
    fx.to_account_channel("terminated", f":wastebasket: {done} ({why}).", sb.buttons(trial.id, "request_feedback"))
    fx.update_alert(f":wastebasket: {_lead(trial)}: terminated.")
    cancel(ctx.uow, trial, *TIMER_KINDS)
    if trial.instance_host:
        release_instance(ctx.uow, trial.instance_host)


def release_instance(uow: UnitOfWork, host: str) -> None:
    """The instance is being terminated: it no longer counts as live, and its domain is free again."""
    batch = getattr(uow, "batched_writes", None)
    if batch is not None:
        batch.release_instance(host)
        return
    uow.session.execute(update(tables.instances).where(tables.instances.c.host == host).values(status="terminated"))
    uow.session.execute(delete(tables.domain_claims).where(tables.domain_claims.c.instance_host == host))


def _on_feedback(fx, ctx, trial, event):
    fx.email("feedback", "feedback_request", trial.email, sender=ctx.settings.feedback_sender, name=trial.name or "",
             cc=[trial.ce])


_HANDLERS = {
    "route_to_existing": _on_route_to_existing,
    "claim_pool_instance": _on_claim,
    "wait_for_capacity": _on_wait,
    "send_to_triage": _on_triage,
    "confirm_user_added": _on_user_added,
    "remind_user_added": _on_remind_user_added,
    "disqualify": _on_disqualify,
    "qualify": _on_qualify,
    "request_instance": _on_request_instance,
    "mark_instance_ready": _on_ready,
    "hand_off": _on_hand_off,
    "convert_to_opportunity": _on_convert_to_opp,
    "reassign": _on_reassign,
    "request_domain_change": _on_domain_change,
    "warn_termination": _on_warn,
    "keep": _on_keep,
    "extend": _on_extend,
    "remind_decision": _on_remind_decision,
    "escalate_decision": _on_escalate,
    "convert": _on_convert,
    "terminate": _on_terminate,
    "request_feedback": _on_feedback,
}
