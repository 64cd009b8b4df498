"""What the steps that touch a trial instance cause: accounts and their links, usage checks, the
day-15 question, the admin of record and the cloud team's completed requests. Called by
``services.policies`` (one handler per step stays there); pure, like it.

An account is an ``instance.account`` effect only when trialflow holds a token for the instance
(``Settings.instance_token_for``). Without one nothing is invented: the person is told their
account is being prepared and the CE gets today's manual step in Slack.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions, InstanceMoved
from trialflow.domain.trial import SYSTEM, Event, PlainTrial
from trialflow.services import slack_blocks as sb
from trialflow.services.fit import Data, Fitted
from trialflow.services.messages import account_of, host, lead
from trialflow.services.routing import JOIN_ACCOUNT, JOIN_ADMIN_ACCOUNT
from trialflow.services.timers import ASK_AGAIN_DAYS, USAGE_ANSWER_MINUTES
from trialflow.settings import Settings

CLAIM, HAND_OFF, COLLEAGUE = "claim", "hand_off", "colleague"
OPERATOR = "log in with `?sourcegraph-operator` on its sign-in page"


class People(Protocol):
    def by_email(self, email: str | None) -> Any: ...

    def mention(self, email: str | None) -> str: ...


class Effects(Protocol):
    """``services.policies._Effects``: the effects of one event, keyed by its place in the history."""
    out: Decisions
    event: Event

    def add(self, name: str, kind: str, payload: dict[str, Any]) -> None: ...

    def post(self, name: str, channel: str, text: str, *blocks: dict[str, Any], ref: str | None = None,
             thread_ref: str | None = None) -> None: ...

    def email(self, slot: str, template: str, to: str, *, cc: list[str | None] | None = None,
              sender: str | None = None, **context: Any) -> None: ...

    def to_account_channel(self, name: str, text: str, *blocks: dict[str, Any]) -> None: ...


def can_administer(settings: Settings, host: str | None) -> bool:
    return settings.instance_token_for(host) is not None


def account(fx: Effects, trial: PlainTrial, purpose: str, email: str, template: str, *, admin: bool,
            cc: list[str] | None = None, sender: str | None = None, **context: Any) -> None:
    """Create ``email``'s account on the trial's instance and email them its link (``template``)."""
    fx.add(f"account:{email}", "instance.account", {
        "host": trial.instance_host, "email": email, "purpose": purpose, "admin": admin,
        "mail": {"template": template, "to": email, "cc": [c for c in (cc or []) if c and c != email],
                 "from": sender, "context": {"instance_url": trial.instance_url, **context}},
    })


def claimed(fx: Effects, people: People, settings: Settings, trial: PlainTrial) -> str | None:
    """2.1/2.2: the pool instance is theirs; so is its first admin account. Returns the CE's manual
    step for the alert when trialflow cannot make the account itself."""
    if can_administer(settings, trial.instance_host):
        account(fx, trial, CLAIM, trial.email, "password_reset", admin=True, name=trial.name or "")
        return None
    fx.email("account-pending", "account_pending", trial.email, instance_url=trial.instance_url, name=trial.name or "")
    return sb.mrkdwn(":key: CE {ce}: trialflow holds no API token for this instance, so their account is yours to "
                     "make: {operator}, create their account (site admin) and email them its password-reset link. "
                     "They were told it is on its way.", ce=people.mention(trial.ce), operator=OPERATOR)


def colleague_joins(fx: Effects, people: People, settings: Settings, trial: PlainTrial, event: Event) -> str:
    """Case 1: a colleague signed up for the domain's instance. On a trial instance trialflow makes
    their account (an admin one while the claim is provisional) and emails them its link; otherwise
    (converted, a customer's, auto-add off, or no token) the admin of record is asked, AE in cc.
    Returns what the AE's alert says."""
    how, admin = event.detail.get("join"), event.detail.get("admin")
    ae = people.mention(trial.ae)
    if admin and admin == trial.email:
        return sb.mrkdwn("AE {ae}: they are its admin of record already.", ae=ae)
    if how in (JOIN_ACCOUNT, JOIN_ADMIN_ACCOUNT) and can_administer(settings, trial.instance_host):
        account(fx, trial, COLLEAGUE, trial.email, "colleague_access", admin=how == JOIN_ADMIN_ACCOUNT,
                name=trial.name or "", account_name=account_of(trial))
        if how == JOIN_ADMIN_ACCOUNT:
            return sb.mrkdwn("AE {ae}: nobody at {domain} has signed in to it yet (its claim may not be theirs), so "
                             "trialflow is giving them an admin account of their own and emailing them its link.",
                             ae=ae, domain=host(trial.domain))
        return sb.mrkdwn("AE {ae}: trialflow is adding them to the instance and emailing them their own link.", ae=ae)
    if admin:
        fx.email("access-request", "access_request", admin, cc=[trial.ae or ""], colleague=trial.email,
                 colleague_name=trial.name or trial.email, instance_url=trial.instance_url, name="")
        return sb.mrkdwn("AE {ae}: make sure the admin adds them: {admin} was emailed a request naming them (you are "
                         "in cc). Without SSO they cannot join without an invite.", ae=ae, admin=Data(str(admin)))
    return sb.mrkdwn("AE {ae}: make sure the admin adds them (without SSO they cannot join without an invite).", ae=ae)


def ready(fx: Effects, people: People, settings: Settings, trial: PlainTrial, ce_mention: str) -> None:
    """3.2: the cloud team's instance is up. With a token trialflow makes the lead's account and the
    CE's introduction email carries the link (AE in cc); the hand-off is recorded once it is sent."""
    ce = people.by_email(trial.ce)
    ae = people.by_email(trial.ae)
    if can_administer(settings, trial.instance_host):
        account(fx, trial, HAND_OFF, trial.email, "instance_ready", admin=True, cc=[trial.ae or ""],
                sender=trial.ce or None, name=trial.name or "", ce_name=ce.name if ce else (trial.ce or ""),
                ce_email=trial.ce or "", ae_name=ae.name if ae else "")
        fx.post("ready", settings.alerts_channel, sb.mrkdwn(
            ":white_check_mark: Instance {url} for {lead} is ready. trialflow is creating their account and sending "
            "the link in CE {ce}'s introduction email; the hand-off is recorded when it is sent. (Done it by hand? "
            "Press Handed off.)", url=trial.instance_url or "", lead=lead(trial), ce=ce_mention),
            sb.buttons(trial.id, lc.HAND_OFF))
        return
    fx.post("ready", settings.alerts_channel, sb.mrkdwn(
        ":white_check_mark: Instance {url} for {lead} is ready. CE {ce}: {operator}, create the password-reset link "
        "and send it.", url=trial.instance_url or "", lead=lead(trial), ce=ce_mention, operator=OPERATOR),
        sb.buttons(trial.id, lc.HAND_OFF))


def handed_off_text(people: People, trial: PlainTrial, event: Event, review_on: str) -> str:
    if event.actor == SYSTEM:
        return sb.mrkdwn(":handshake: trialflow created {email}'s account on {url} and sent the link in CE {ce}'s "
                         "introduction email. Trial started: day-15 review on {review}.", email=Data(trial.email),
                         url=trial.instance_url or "", ce=people.mention(trial.ce), review=review_on)
    return sb.mrkdwn(":handshake: {ce} handed {url} off to {email}. Trial started: day-15 review on {review}.",
                     ce=people.mention(trial.ce), url=trial.instance_url or "", email=Data(trial.email),
                     review=review_on)


def check_usage(fx: Effects, trial: PlainTrial) -> None:
    """Day 15: ask the instance now; the review comes back for the answer."""
    fx.add("usage", "instance.usage", {"host": trial.instance_host})
    at = fx.event.at
    fx.out.schedule(trial.id, lc.DAY15_REVIEW, at + timedelta(minutes=USAGE_ANSWER_MINUTES), at)


def ask_decision(fx: Effects, ce_mention: str, trial: PlainTrial) -> None:
    """Day 15 without usage data: the CE decides; asked again until they do."""
    fx.to_account_channel("ask", sb.mrkdwn(
        ":question: CE {ce}: day 15 for {url} ({account}), and trialflow has no usage data from it: its API never "
        "answered and it never reported. It will not be terminated automatically: extend it or terminate it.",
        ce=ce_mention, url=trial.instance_url or "", account=Data(account_of(trial))),
        sb.buttons(trial.id, lc.EXTEND, lc.KEEP, lc.TERMINATE))
    at = fx.event.at
    fx.out.schedule(trial.id, lc.DAY15_REVIEW, at + timedelta(days=ASK_AGAIN_DAYS), at)


def heads_up_text(ce_mention: str, trial: PlainTrial, event: Event, review_on: str) -> str:
    if event.detail.get("usage") == "none":
        return sb.mrkdwn(":warning: CE {ce}: {url} is up for its day-15 review on {review}. trialflow has no usage "
                         "data from it yet; without any, you will be asked to decide then (nothing is terminated "
                         "without data). Keep it or terminate it now if you know.", ce=ce_mention,
                         url=trial.instance_url or "", review=review_on)
    return sb.mrkdwn(":warning: CE {ce}: {url} is up for its day-15 review on {review}. With no activity it will be "
                     "terminated unless you keep it.", ce=ce_mention, url=trial.instance_url or "",
                     review=review_on)


def admin_confirmed(fx: Effects, trial: PlainTrial, event: Event) -> None:
    admin, claimed = str(event.detail.get("admin") or ""), event.detail.get("claimed_by")
    if not claimed or claimed == admin:
        fx.to_account_channel("admin", sb.mrkdwn(":bust_in_silhouette: {admin} signed in to {url}: they are its "
                                                 "admin of record.", admin=Data(admin), url=trial.instance_url or ""))
        return
    fx.to_account_channel("admin", sb.mrkdwn(
        ":bust_in_silhouette: {admin} signed in to {url}: they are its admin of record. The claim was made as "
        "{claimed}, who never signed in: the instance answers to {admin} now.", admin=Data(admin),
        url=trial.instance_url or "", claimed=Data(str(claimed))))


def request_done(fx: Effects, trial: PlainTrial, event: Event) -> None:
    """The cloud team completed a request: a termination frees its capacity now; a domain change
    moves the trial to its new host."""
    kind, number = str(event.detail.get("kind") or ""), event.detail.get("number")
    done = Fitted("#{number}, {actor}", {"number": str(number), "actor": Data(event.actor)}) if number \
        else Data(event.actor)
    url = trial.instance_url or ""
    if kind == "termination":
        if trial.instance_host:
            fx.out.confirm_teardown(trial.instance_host, event.at)
        text = sb.mrkdwn(":white_check_mark: The cloud team confirmed {url} is terminated ({done}): its capacity is "
                         "free.", url=url, done=done)
    elif kind == "domain-change" and event.detail.get("to_host"):
        old = str(event.detail["from_host"])
        fx.out.move_instance(InstanceMoved(old, str(event.detail["to_host"]), trial.id, event.at))
        text = sb.mrkdwn(":globe_with_meridians: {old} is now {url} ({done}): signups, activity and usage follow it. "
                         "Its admin must now reconfigure SSO, permission syncing, webhooks and links.",
                         old=host(old), url=url, done=done)
    else:
        text = sb.mrkdwn(":white_check_mark: The cloud team completed the {kind} request for {url} ({done}).",
                         kind=kind, url=url, done=done)
    fx.to_account_channel("request-done", text)
