"""What each lifecycle event causes: a pure decision over the trial, the people on it and the
settings. ``decide`` returns the effects (Slack messages, GitHub issues, emails) and timer
changes as values (``domain.decisions.Decisions``); ``services.writer`` persists them in the
transaction that took the step. Nothing here writes, and nothing here depends on who called.

Each effect's idempotency key is ``<trial>:<history position>:<name>``, so replaying the same
event (a retried request, a second worker) can never enqueue it twice.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.domain.business_hours import BusinessCalendar
from trialflow.domain.decisions import Decisions, InstanceReady
from trialflow.domain.normalize import is_public_domain
from trialflow.domain.trial import CASE_NAMED, SYSTEM, Event, PlainTrial
from trialflow.inert import code_span
from trialflow.services import fit as limits
from trialflow.services import instance_policies as instances
from trialflow.services import opportunity_policies as opportunity
from trialflow.services import prospect_policies as prospect
from trialflow.services import slack_blocks as sb
from trialflow.services.calendar import calendar_for
from trialflow.services.fit import Data, Fitted
from trialflow.services.messages import (
    account_of,
    channel_name,
    chase_text,
    domain_change_body,
    host,
    instance_request_body,
    issue_body,
    issue_title,
    lead,
    routing_text,
    score,
    triage_reason,
    who,
)
from trialflow.services.timers import (
    DECISION_DAYS,
    ESCALATION_GRACE_DAYS,
    EXTENSION_DAYS,
    HEADS_UP_DAYS,
    REVIEW_DAYS,
    TIMER_KINDS,
    USER_ADDED_REMINDER_DAYS,
    review_at,
)
from trialflow.settings import Settings

__all__ = ["Context", "decide", "DECISION_DAYS", "EXTENSION_DAYS", "REVIEW_DAYS"]


class People(Protocol):
    def by_email(self, email: str | None) -> Any: ...

    def mention(self, email: str | None) -> str: ...

    def in_role(self, role: str) -> list[Any]: ...

    def acting_for(self, email: str | None, today: date, fallback: str | None = None) -> str | None: ...


class Context:
    """What a decision may read: the people on the trial (``services.directory.Directory``,
    whose lookups are cached, so one context serves a whole batch) and the settings."""

    def __init__(self, people: People, settings: Settings):
        self.people = people
        self.settings = settings

    @property
    def alerts(self) -> str:
        return self.settings.alerts_channel

    @property
    def calendar(self) -> BusinessCalendar:
        return calendar_for(self.settings)

    def ce_mention(self, trial: PlainTrial, at: datetime) -> str:
        """The CE as a prompt names them: while they are away, whoever acts for them (their
        backup, else the trial's AE), saying so."""
        acting = self.people.acting_for(trial.ce, self.calendar.today(at), fallback=trial.ae)
        if not trial.ce or acting == trial.ce:
            return self.people.mention(trial.ce)
        person = self.people.by_email(trial.ce)
        why = f"away until {person.away_until:%m-%d}" if person and person.away_until else "not active"
        name = person.name if person else trial.ce
        return f"{self.people.mention(acting)} (for {sb.escape(name)}, {why})"

    def prospect(self, fx: _Effects) -> prospect.Prospect:
        """The prospect's emails for this event, unless their account turned them off."""
        lookup = getattr(self.people, "prospect_emails_on", None)
        on = lookup(fx.trial.domain) if lookup is not None else True
        return prospect.Prospect(fx, self.people, fx.trial, on, self.calendar.today(fx.event.at))


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

    def post(self, name: str, channel: str, text: str, *blocks: dict[str, Any], ref: str | None = None,
             thread_ref: str | None = None) -> None:
        payload = {"channel": channel, **sb.message(text, *blocks)}
        if ref:
            payload["ref"] = ref
        if thread_ref:
            payload["thread_ref"] = thread_ref
        self.add(name, "slack.message", payload)

    def alert(self, text: str, *blocks: dict[str, Any]) -> None:
        """The trial's one alert in #cloud-trial-alerts; later updates edit it in place."""
        self.post("alert", self.ctx.alerts, text, *blocks, ref=f"alert:{self.trial.id}")

    def update_alert(self, text: str, *blocks: dict[str, Any]) -> None:
        """Replace the alert's buttons with what happened, so the same button cannot be pressed twice."""
        self.add("alert-update", "slack.update", {
            "ref": f"alert:{self.trial.id}", **sb.message(text, *blocks, sb.context(f"trial `{self.trial.id}`")),
        })

    def to_account_channel(self, name: str, text: str, *blocks: dict[str, Any]) -> None:
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
            "topic": limits.fit(limits.SLACK_CHANNEL_TOPIC, "Cloud trial for {account} ({domain})",
                                account=Data(self.trial.account_name), domain=host(self.trial.domain)),
        })

    def email(self, slot: str, template: str, to: str, *, cc: list[str | None] | None = None,
              sender: str | None = None, **context: Any) -> None:
        self.add(slot, "email", {"template": template, "to": to, "cc": [c for c in (cc or []) if c],
                                 "from": sender, "context": context})

    def issue(self, name: str, issue_kind: str, title: str, body: str, labels: list[str],
              ref: str | None = None, detail: dict[str, Any] | None = None) -> None:
        # Titles and bodies are fitted where they are built; clipping here only guards the limits.
        payload: dict[str, Any] = {"issue_kind": issue_kind, "title": limits.clip(title, limits.GITHUB_TITLE),
                                   "body": issue_body(body), "labels": labels,
                                   "ref": ref or f"{issue_kind}:{self.trial.id}"}
        if detail:
            payload["detail"] = detail  # kept with the request until the cloud team completes it
        self.add(name, "github.issue", payload)


def _claimed(fx: _Effects, ctx: Context, trial: PlainTrial) -> None:
    named = trial.case == CASE_NAMED
    kind = "named account" if named else "pre-qualified account"
    manual = instances.claimed(fx, ctx.people, ctx.settings, trial)
    fx.alert(
        sb.mrkdwn(":rocket: {lead} signed up: {kind} *{account}*; instance {url} claimed from the pool.",
                  lead=lead(trial), kind=kind, account=Data(trial.account_name or ""), url=trial.instance_url or ""),
        sb.section(who(ctx.people, trial)),
        *routing_text(fx.event),
        sb.section(_after_claim(ctx, trial, named)),
        *([sb.section(manual)] if manual else []),
        sb.buttons(trial.id, lc.CONVERT_TO_OPPORTUNITY, lc.REASSIGN),
    )
    fx.channel()
    _start_clock(fx, trial, fx.event.at)
    prospect.started(ctx.prospect(fx), fx.event.at)


def _after_claim(ctx: Context, trial: PlainTrial, named: bool) -> str:
    """What is left to people after a claim: only what trialflow has not done itself (it routed the
    lead to the named SDR, assigned the AE/CE and invites them to the account's channel)."""
    channel = "#" + channel_name(trial.account_name) if trial.account_name else "the account's channel"
    if named:
        return sb.mrkdwn("Next: named SDR {sdr} converts to Opp. (trialflow routed the lead to them and is inviting "
                         "the AE and CE to {channel}.)", sdr=ctx.people.mention(trial.sdr), channel=channel)
    return sb.mrkdwn("Next: inbound SDR converts to Opp. (trialflow assigned the AE and CE by round robin and is "
                     "inviting them to {channel}.)", channel=channel)


def _start_clock(fx: _Effects, trial: PlainTrial, now: datetime) -> None:
    start = trial.started_at or now
    fx.out.schedule(trial.id, lc.TERMINATION_HEADS_UP, start + timedelta(days=HEADS_UP_DAYS), now)
    fx.out.schedule(trial.id, lc.DAY15_REVIEW, start + timedelta(days=REVIEW_DAYS), now)


def _instance_requested(fx: _Effects, ctx: Context, trial: PlainTrial, by: str) -> None:
    fx.update_alert(sb.mrkdwn(":white_check_mark: {lead} qualified by {by}; instance requested. {who}",
                              lead=lead(trial), by=by, who=who(ctx.people, trial)), *routing_text(fx.event))
    fx.channel()
    at = fx.event.at
    fx.out.cancel(trial.id, lc.TRIAGE_REMINDER, lc.TRIAGE_ESCALATION)
    fx.out.schedule(trial.id, lc.INSTANCE_REQUEST_SLA,
                    ctx.calendar.add_days(at, ctx.settings.instance_request_business_days), at)
    ce = ctx.people.by_email(trial.ce)
    fx.issue("instance-request", "instance-request",
             issue_title("Cloud trial instance request: {account}", account=host(account_of(trial))),
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
        fx = _Effects(ctx, event, out)
        HANDLERS[event.trigger](fx, ctx, trial, event)
        _refresh_homes(fx, trial, event)
    return out


def _refresh_homes(fx: _Effects, trial: PlainTrial, event: Event) -> None:
    """The App Home tabs this step changes (``services.app_home``): its people's, those it replaced
    (a reassignment takes the trial off their tab), and every SDR's when a lead enters or leaves
    triage. The prospect's emails change nothing they show."""
    if event.trigger in PROSPECT_STEPS:
        return
    people = sorted({p for p in (trial.sdr, trial.ae, trial.ce) if p})
    replaced = sorted(set(event.detail.get("replaced", {}).values()) - set(people))
    triage = lc.TRIAGE in (event.from_state, event.to_state)
    if people or replaced or triage:
        fx.add("home", "slack.home", {"people": people, **({"replaced": replaced} if replaced else {}),
                                      **({"triage": True} if triage else {})})


PROSPECT_STEPS = frozenset({lc.TELL_DEADLINE, lc.SEND_ONBOARDING_TIP, lc.CHECK_IN})


def _on_route_to_existing(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.alert(sb.mrkdwn(":house: {lead} signed up; *{domain}* already has {url}: redirected there.",
                       lead=lead(trial), domain=host(trial.domain), url=trial.instance_url or ""),
             sb.section(instances.colleague_joins(fx, ctx.people, ctx.settings, trial, event)),
             sb.buttons(trial.id, "user_added"))
    fx.out.schedule(trial.id, lc.USER_ADDED_REMINDER, event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_claim(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    _claimed(fx, ctx, trial)


def _on_wait(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    text = (":hourglass: {lead} is waiting for capacity (instance cap or empty pool); it proceeds by itself "
            "when an instance frees up.")
    if event.from_state == lc.TRIAGE:
        fx.update_alert(sb.mrkdwn(text + " Qualified by {sdr}.", lead=lead(trial), sdr=ctx.people.mention(trial.sdr)),
                        *routing_text(event))
        fx.out.cancel(trial.id, lc.TRIAGE_REMINDER, lc.TRIAGE_ESCALATION)
        opportunity.upsert(fx, ctx.settings, trial, event.at, always=bool(event.detail.get("qualified")))
    else:
        fx.alert(sb.mrkdwn(text, lead=lead(trial)), sb.context(score(trial)))


def _on_triage(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.alert(sb.mrkdwn(":mag: New cloud trial request from {lead} ({domain}): inbound SDR, please triage.",
                       lead=lead(trial), domain=host(trial.domain)),
             sb.section(sb.mrkdwn("*Why triage:* {reason}", reason=triage_reason(trial))),
             sb.context(score(trial)), sb.buttons(trial.id, lc.QUALIFY, lc.DISQUALIFY))
    at = event.at
    fx.out.schedule(trial.id, lc.TRIAGE_REMINDER, ctx.calendar.add_hours(at, ctx.settings.triage_reminder_business_hours), at)
    fx.out.schedule(trial.id, lc.TRIAGE_ESCALATION,
                    ctx.calendar.add_days(at, ctx.settings.triage_escalation_business_days), at)


def _on_remind_triage(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    today = ctx.calendar.today(event.at)
    sdrs = [p for p in ctx.people.in_role("inbound_sdr") if not p.is_away(today)]
    names = ", ".join(ctx.people.mention(p.email) for p in sdrs) or "Inbound SDRs (none is in: all away, or none active in staff.csv)"
    fx.post("reminder", ctx.alerts, sb.mrkdwn(
        ":hourglass_flowing_sand: {sdrs}: {lead} has waited {hours} business hours in triage. Qualify or disqualify.",
        sdrs=names, lead=lead(trial), hours=f"{ctx.settings.triage_reminder_business_hours:g}"),
        sb.buttons(trial.id, lc.QUALIFY, lc.DISQUALIFY), thread_ref=f"alert:{trial.id}")


def _on_escalate_triage(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    admins = ", ".join(ctx.people.mention(p.email) for p in ctx.people.in_role("admin")) or "admins (none in staff.csv)"
    fx.post("escalation", ctx.alerts, sb.mrkdwn(
        ":rotating_light: {admins}: {lead} has waited more than {days} business day(s) in triage and nobody has "
        "qualified or disqualified it.", admins=admins, lead=lead(trial),
        days=f"{ctx.settings.triage_escalation_business_days:g}"), sb.context(score(trial)),
        sb.buttons(trial.id, lc.QUALIFY, lc.DISQUALIFY))


def _on_chase_instance_request(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    expected = f"{ctx.settings.instance_request_business_days:g} business day(s)"
    # The same words as the chasing of the cloud team's other requests (services.cloud_loop).
    fx.add("chase", "github.comment", {"ref": f"instance-request:{trial.id}", "body": issue_body(chase_text(
        f"more than {expected}", expected, "comment `/ready <instance URL>` or add the `instance-ready` label"))})
    fx.post("chase-alert", ctx.alerts, sb.mrkdwn(
        ":hourglass: The instance for {lead} is still not ready after {expected}. The cloud team was reminded on "
        "the issue. CE {ce}, AE {ae}.", lead=lead(trial), expected=expected, ce=ctx.ce_mention(trial, event.at),
        ae=ctx.people.mention(trial.ae)), thread_ref=f"alert:{trial.id}")


def _on_remind_hand_off(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("hand-off-reminder", sb.mrkdwn(
        ":bell: CE {ce}: {url} is ready but not handed off to {email} yet: their trial has not started. Send the "
        "password-reset link, then press Handed off.", ce=ctx.ce_mention(trial, event.at),
        url=trial.instance_url or "", email=Data(trial.email)), sb.buttons(trial.id, lc.HAND_OFF))
    at = event.at
    fx.out.schedule(trial.id, lc.HAND_OFF_REMINDER, ctx.calendar.add_days(at, ctx.settings.hand_off_reminder_business_days), at)


def _on_escalate_hand_off(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("hand-off-escalation", sb.mrkdwn(
        ":rotating_light: AE {ae}: {url} has been ready for {days} business days and is still not handed off to {email} "
        "(CE {ce}).", ae=ctx.people.mention(trial.ae), url=trial.instance_url or "",
        days=f"{ctx.settings.hand_off_escalation_business_days:g}", email=Data(trial.email),
        ce=ctx.ce_mention(trial, event.at)), sb.buttons(trial.id, lc.HAND_OFF))


def _on_user_added(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    if event.actor == SYSTEM:
        fx.update_alert(sb.mrkdwn(":white_check_mark: {lead} was added to {url} (trialflow made their account and "
                                  "emailed them its link).", lead=lead(trial), url=trial.instance_url or ""))
    else:
        by = ctx.people.mention(trial.ae) if event.actor == trial.ae else Data(event.actor)
        fx.update_alert(sb.mrkdwn(":white_check_mark: {lead} was added to {url} (confirmed by {by}).",
                                  lead=lead(trial), url=trial.instance_url or "", by=by))
    fx.out.cancel(trial.id, lc.USER_ADDED_REMINDER)


def _on_remind_user_added(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    text = sb.mrkdwn(":bell: {ae}: {email} is still waiting to be added to {url}.", ae=ctx.people.mention(trial.ae),
                     email=Data(trial.email), url=trial.instance_url or "")
    fx.post("reminder", ctx.alerts, text, sb.buttons(trial.id, "user_added"), thread_ref=f"alert:{trial.id}")
    fx.out.schedule(trial.id, lc.USER_ADDED_REMINDER, event.at + timedelta(days=USER_ADDED_REMINDER_DAYS), event.at)


def _on_disqualify(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    reason = event.detail.get("reason", "")
    fx.update_alert(sb.mrkdwn(":no_entry: {lead} disqualified by {sdr}: {reason}. Self-hosting email sent.",
                              lead=lead(trial), sdr=ctx.people.mention(trial.sdr), reason=Data(reason)))
    fx.email("self-host", "self_host", trial.email, name=trial.name or "")
    fx.out.cancel(trial.id, lc.TRIAGE_REMINDER, lc.TRIAGE_ESCALATION)


def _on_qualify(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    _instance_requested(fx, ctx, trial, ctx.people.mention(trial.sdr))
    opportunity.upsert(fx, ctx.settings, trial, event.at, always=True)


def _on_request_instance(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    _instance_requested(fx, ctx, trial, "the capacity queue")


def _on_ready(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    # The instance is live and, unless the domain is a public mailbox's (shared by strangers:
    # claiming it would send every later @hotmail.fr signup to this one person), its domain leads there.
    if trial.instance_host is None:  # the step that marks it ready records the host first
        raise ValueError(f"trial {trial.id} was marked ready without an instance")
    fx.out.instance_ready(InstanceReady(trial.instance_host, trial.id, trial.email, trial.domain,
                                        claim_domain=not is_public_domain(trial.domain), at=event.at))
    instances.ready(fx, ctx.people, ctx.settings, trial, ctx.ce_mention(trial, event.at))
    at = event.at
    fx.out.cancel(trial.id, lc.INSTANCE_REQUEST_SLA)
    fx.out.schedule(trial.id, lc.HAND_OFF_REMINDER, ctx.calendar.add_days(at, ctx.settings.hand_off_reminder_business_days), at)
    fx.out.schedule(trial.id, lc.HAND_OFF_ESCALATION,
                    ctx.calendar.add_days(at, ctx.settings.hand_off_escalation_business_days), at)
    fx.add("issue-comment", "github.comment", {
        "ref": f"instance-request:{trial.id}",
        "body": issue_body(f"Instance {trial.instance_url} is ready; {trial.ce or 'the CE'} has been notified to hand it off."),
    })


def _on_hand_off(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("handed-off", instances.handed_off_text(ctx.people, trial, event,
                                                                  str(review_at(trial).date())))
    fx.out.cancel(trial.id, lc.HAND_OFF_REMINDER, lc.HAND_OFF_ESCALATION)
    _start_clock(fx, trial, event.at)
    prospect.started(ctx.prospect(fx), event.at)
    opportunity.upsert(fx, ctx.settings, trial, event.at)


def _on_convert_to_opp(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    if ctx.settings.salesforce_configured:
        # The id is Salesforce's to give: its link follows in this channel once the upsert answers.
        opportunity.upsert(fx, ctx.settings, trial, event.at, always=True)
        fx.to_account_channel("opp", sb.mrkdwn(":briefcase: Converted to Opp: the Opportunity for {account} is being "
                                               "written to Salesforce. {who}", account=Data(account_of(trial)),
                                               who=who(ctx.people, trial)))
        return
    opp = event.detail.get("opportunity_id") or trial.opportunity_id or "n/a"
    fx.to_account_channel("opp", sb.mrkdwn(":briefcase: Opportunity {opp} created for {account}. {who}", opp=Data(opp),
                                           account=Data(account_of(trial)), who=who(ctx.people, trial)))


def _on_reassign(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    reason = event.detail.get("reason")
    fx.to_account_channel("reassigned", sb.mrkdwn(":arrows_counterclockwise: {email}'s trial reassigned{why}: {who}",
                                                  email=Data(trial.email), who=who(ctx.people, trial),
                                                  why=Fitted(" ({reason})", {"reason": Data(reason)}) if reason else ""),
                          *routing_text(event))
    fx.channel()
    opportunity.upsert(fx, ctx.settings, trial, event.at)  # the AE owns the Opportunity


def _on_domain_change(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    new = event.detail["new_host"]
    body = domain_change_body(trial, new, event.actor, len(trial.history))
    fx.issue("domain-change", "domain-change",
             issue_title("Domain name change: {old} → {new}", old=host(trial.instance_host), new=host(new)), body,
             ["cloud-trial", "domain-change"], ref=f"domain-change:{trial.id}:{len(trial.history)}",
             detail={"new_host": new})
    fx.to_account_channel("domain-change-ae", sb.mrkdwn(
        ":money_with_wings: AE {ae}: {email} asked for the vanity domain {new} (a buying signal).",
        ae=ctx.people.mention(trial.ae), email=Data(trial.email), new=host(new)))


def _on_warn(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("heads-up", instances.heads_up_text(ctx.ce_mention(trial, event.at), trial, event,
                                                              str(review_at(trial).date())),
                          sb.buttons(trial.id, lc.KEEP, lc.TERMINATE))


def _on_check_usage(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    instances.check_usage(fx, trial)


def _on_ask_decision(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    instances.ask_decision(fx, ctx.ce_mention(trial, event.at), trial)


def _on_admin_confirmed(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    instances.admin_confirmed(fx, trial, event)


def _on_request_done(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    instances.request_done(fx, trial, event)


def _on_keep(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("kept", sb.mrkdwn(":pushpin: {actor} kept {url}: it will be extended at day 15, not terminated.",
                                            actor=Data(event.actor), url=trial.instance_url or ""))


def _on_extend(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    days = int(event.detail.get("days", EXTENSION_DAYS))
    until = datetime.fromisoformat(event.detail["until"])
    fx.issue("trial-extend", "trial-extend",
             issue_title("Trial extend: {host} until {until}", host=host(trial.instance_host), until=str(until.date())),
             f"Extend the cloud trial of {account_of(trial)} ({trial.instance_url}) by {days} days, until {until.date()}.\n"
             f"Requested by: {event.actor}\n\n<!-- trialflow:{trial.id}:trial-extend:{len(trial.history)} -->",
             ["cloud-trial", "trial-extend"], ref=f"trial-extend:{trial.id}:{len(trial.history)}")
    if event.detail.get("license_change"):
        fx.issue("license-change", "license-change",
                 issue_title("License change for trial extension: {host}", host=host(trial.instance_host)),
                 f"The trial of {account_of(trial)} is extended by more than {EXTENSION_DAYS} extra days (until {until.date()}): "
                 f"its trial license must be extended too.\n\n<!-- trialflow:{trial.id}:license-change:{len(trial.history)} -->",
                 ["cloud-trial", "license-change"], ref=f"license-change:{trial.id}:{len(trial.history)}")
    fx.to_account_channel("extended", sb.mrkdwn(":calendar: {url} extended until {until} ({actor}).",
                                                url=trial.instance_url or "", until=str(until.date()),
                                                actor=Data(event.actor)))
    fx.out.cancel(trial.id, lc.TERMINATION_HEADS_UP, lc.DAY15_REVIEW, lc.DAY30_ESCALATION)
    fx.out.schedule(trial.id, lc.DAY30_DECISION, until, event.at)
    prospect.extended(ctx.prospect(fx), event, until)
    opportunity.upsert(fx, ctx.settings, trial, event.at)


def _on_remind_decision(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    text = sb.mrkdwn(":alarm_clock: CE {ce}: {url} has reached the end of its trial. Extend, convert or terminate.",
                     ce=ctx.ce_mention(trial, event.at), url=trial.instance_url or "")
    fx.to_account_channel("decision", text, sb.buttons(trial.id, lc.EXTEND, lc.CONVERT, lc.TERMINATE))
    fx.out.schedule(trial.id, lc.DAY30_ESCALATION, event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_escalate(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    text = sb.mrkdwn(":rotating_light: No decision on {url} ({account}) after day 30. AE {ae}, CE {ce}: extend, "
                     "convert or terminate.", url=trial.instance_url or "", account=Data(account_of(trial)),
                     ae=ctx.people.mention(trial.ae), ce=ctx.ce_mention(trial, event.at))
    fx.post("escalation", ctx.alerts, text, sb.buttons(trial.id, lc.EXTEND, lc.CONVERT, lc.TERMINATE))
    # Until someone decides (extend, convert and terminate cancel it), the escalation repeats.
    fx.out.schedule(trial.id, lc.DAY30_ESCALATION, event.at + timedelta(days=ESCALATION_GRACE_DAYS), event.at)


def _on_convert(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.to_account_channel("converted", sb.mrkdwn(":tada: {account} converted to paid ({actor}).",
                                                 account=Data(account_of(trial)), actor=Data(event.actor)))
    fx.update_alert(sb.mrkdwn(":tada: {lead}: converted.", lead=lead(trial)))
    fx.out.cancel(trial.id, *TIMER_KINDS)
    prospect.converted(ctx.prospect(fx))
    opportunity.upsert(fx, ctx.settings, trial, event.at, always=True)  # a won deal belongs in Salesforce


def _on_terminate(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    reason = event.detail.get("reason", "")
    done: Fitted
    if trial.instance_host:
        fx.issue("termination", "termination",
                 issue_title("Terminate cloud trial instance {host}", host=host(trial.instance_host)),
                 issue_body(f"Terminate {trial.instance_url} ({code_span(account_of(trial))}). Reason: {code_span(reason)}\n"
                            f"Requested by: {event.actor}", f"<!-- trialflow:{trial.id}:termination -->"),
                 ["cloud-trial", "termination"])
        done = Fitted("{url} is being terminated", {"url": trial.instance_url or ""})
    elif event.from_state == lc.INSTANCE_REQUESTED:
        # Nothing to terminate yet: the cloud team must stop provisioning, on the request itself.
        fx.add("request-cancelled", "github.comment", {
            "ref": f"instance-request:{trial.id}",
            "body": issue_body(f"Request cancelled by {event.actor} ({code_span(reason, 'no reason given')}): "
                               "please stop provisioning this instance."),
        })
        done = Fitted("The instance request for {account} is cancelled", {"account": Data(account_of(trial))})
    else:
        done = Fitted("{email} left the capacity queue", {"email": Data(trial.email)})
    fx.to_account_channel("terminated", sb.mrkdwn(":wastebasket: {done} ({reason}; {actor}).", done=done,
                                                  reason=Data(reason or "no reason given"), actor=Data(event.actor)),
                          sb.buttons(trial.id, lc.REQUEST_FEEDBACK))
    fx.update_alert(sb.mrkdwn(":wastebasket: {lead}: terminated.", lead=lead(trial)))
    fx.out.cancel(trial.id, *TIMER_KINDS)
    prospect.ended(ctx.prospect(fx), event, ctx.settings.feedback_url or f"mailto:{ctx.settings.feedback_sender}")
    opportunity.upsert(fx, ctx.settings, trial, event.at, reason=reason or "no reason given")
    if trial.instance_host:
        fx.out.release_instance(trial.instance_host)


def _on_feedback(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    fx.email("feedback", "feedback_request", trial.email, sender=ctx.settings.feedback_sender, name=trial.name or "",
             cc=[trial.ce])


def _on_tell_deadline(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    prospect.tell_deadline(ctx.prospect(fx), event)


def _on_onboarding_tip(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    prospect.onboarding_tip(ctx.prospect(fx), event)


def _on_check_in(fx: _Effects, ctx: Context, trial: PlainTrial, event: Event) -> None:
    prospect.check_in(ctx.prospect(fx), event)


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
    lc.REMIND_TRIAGE: _on_remind_triage,
    lc.ESCALATE_TRIAGE: _on_escalate_triage,
    lc.CHASE_INSTANCE_REQUEST: _on_chase_instance_request,
    lc.REMIND_HAND_OFF: _on_remind_hand_off,
    lc.ESCALATE_HAND_OFF: _on_escalate_hand_off,
    lc.TELL_DEADLINE: _on_tell_deadline,
    lc.SEND_ONBOARDING_TIP: _on_onboarding_tip,
    lc.CHECK_IN: _on_check_in,
}
