"""The words of trialflow's messages: how a lead, the people on a trial and its score read in
Slack, and the titles and bodies of the cloud team's GitHub issues. Pure text building, shared by
the policies that decide when each is sent; fitted to each provider's limits here, where it is
built (``services.fit``)."""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Protocol

from trialflow.domain.normalize import is_public_domain
from trialflow.domain.rotation import render
from trialflow.domain.trial import Event, PlainTrial
from trialflow.inert import code_span
from trialflow.scoring import is_mql
from trialflow.services import fit as limits
from trialflow.services import slack_blocks as sb
from trialflow.services.fit import Data, Field, Fitted
from trialflow.settings import Settings

# Room left at the end of an issue body for the delivery's own marker
# (``delivery.github.marker``: ``<!-- trialflow-effect:<effect key> -->``).
EFFECT_MARKER_ROOM = 512
ISSUE_BODY = limits.GITHUB_BODY - EFFECT_MARKER_ROOM


class People(Protocol):
    """Who is who, for the words of a message (``services.directory.Directory``)."""

    def mention(self, email: str | None) -> str: ...


def channel_name(account: str) -> str:
    """Slack channel names: lower case, at most 80 chars, letters, digits, - and _ only."""
    ascii_name = unicodedata.normalize("NFKD", account).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_name).strip("-_") or "account"
    return ("cloud-trial-" + slug)[:80].rstrip("-_")


def routing_text(event: Event) -> list[dict[str, Any]]:
    """Why the trial's people were picked (``services.rotation``), as a context block, when this
    step assigned anyone: ``AE Andy AE: next in rotation · CE Carl: …; Cora skipped: away until 12-08``."""
    notes = event.detail.get("routing") or {}
    if not notes:
        return []
    return [sb.context(sb.escape("Routing: " + render(sorted(notes.items()))))]


def chase_text(waited: str, expected: str, done: str = "close this issue or comment `/done`") -> str:
    """A request to the cloud team that is past its SLA (an issue comment)."""
    return (f"This request has been open for {waited} (trialflow expects one within {expected}). "
            f"When it is done, {done}.")


def who(people: People, trial: PlainTrial) -> str:
    m = people.mention
    return f"SDR {m(trial.sdr)} · AE {m(trial.ae)} · CE {m(trial.ce)}"


def lead(trial: PlainTrial) -> Fitted:
    """``*Name* (Company) <mailto:…>`` for a message's template: the name and company give way
    when the message is too long for Slack; the email link is kept whole."""
    company: Field = Fitted(" ({company})", {"company": Data(trial.company)}) if trial.company else ""
    return Fitted("*{name}*{company} {link}", {"name": Data(trial.name or trial.email), "company": company,
                                               "link": sb.mailto(trial.email)})


def host(name: str | None) -> Data:
    """A domain or host name as data: shortened in the middle, so its end (the domain) still shows."""
    return Data(name or "", keep_end=True)


def issue_title(template: str, /, **fields: Field) -> str:
    """A GitHub issue title in GitHub's 256 characters: the data gives way, the words stay."""
    return limits.fit(limits.GITHUB_TITLE, template, **fields)


def issue_body(text: str, trailer: str = "") -> str:
    """An issue or comment body within GitHub's limit, leaving room for the delivery's marker;
    ``trailer`` (trialflow's own hidden marker) is kept whole at the end."""
    room = ISSUE_BODY - len(trailer) - (2 if trailer else 0)
    body = limits.clip(text, room)
    return f"{body}\n\n{trailer}" if trailer else body


def score(trial: PlainTrial) -> str:
    grade = trial.pql_grade or "-"
    points = trial.mql_points or 0
    return f"lead score: MQL {points} pts{' (MQL)' if is_mql(points) else ''} · PQL grade {grade}"


def triage_reason(trial: PlainTrial) -> Fitted:
    """Why a lead is in triage rather than on an instance (routing's case 3): its email is a public
    mailbox's, its domain is in no account, or its account is known but not pre-qualified."""
    if is_public_domain(trial.domain):
        return Fitted("public mailbox ({domain}): shared by strangers, it can match no account",
                      {"domain": Data(trial.domain)})
    if trial.account_name:
        return Fitted("known account {account}, not pre-qualified", {"account": Data(trial.account_name)})
    return Fitted("unknown domain: {domain} is in no account of accounts.csv", {"domain": Data(trial.domain)})


def account_of(trial: PlainTrial) -> str:
    return trial.account_name or trial.domain


def instance_request_body(trial: PlainTrial, ce_email: str, settings: Settings) -> str:
    tags = ",".join(settings.license_tags)
    return issue_body("\n".join([
        f"### Cloud trial instance request: {code_span(account_of(trial))}",
        "",
        f"- Account: {code_span(account_of(trial))}",
        f"- Domain: {code_span(trial.domain)}",
        f"- Requester: {code_span(trial.name)} {code_span(trial.email)}",
        f"- Assigned CE (needs operator access to create the password-reset link): {ce_email}",
        f"- Opportunity: {trial.opportunity_id or 'n/a'}",
        f"- Trial license: tags `{tags}`, {settings.trial_license_seats:,} users",
        "- trialflow's automation account: create a site-admin user `trialflow-automation` with an access token "
        "(scope `user:all`) and hand the token to trialflow's operators (their `TRIALFLOW_INSTANCE_TOKENS_FILE`, "
        "unless the instance shares `TRIALFLOW_INSTANCE_TOKEN`). With it trialflow creates the lead's account and "
        "emails their password-reset link itself; without it the CE does that by hand.",
        "",
        "When the instance is ready, comment `/ready https://<instance host>` (or comment a line "
        "`Instance: https://<instance host>` and add the label `instance-ready`).",
    ]), f"<!-- trialflow:{trial.id}:instance-request -->")


def domain_change_body(trial: PlainTrial, new_host: str, actor: str, position: int) -> str:
    return issue_body("\n".join([
        f"### Domain name change: {trial.instance_host} → {new_host}",
        "", f"- Account: {code_span(account_of(trial))}", f"- Requested by: {actor}", "",
        "Changing the domain will break, until the admin reconfigures them:",
        "- [ ] the auth provider (SSO): sign-in is broken until it is reconfigured",
        "- [ ] permission syncing: repository permissions are broken until it is reconfigured",
        "- [ ] webhooks pointing at the old domain",
        "- [ ] every hard-coded link to the old domain",
    ]), f"<!-- trialflow:{trial.id}:domain-change:{position} -->")


def pool_replenish_issue(free: int, low_water: int, episode: str) -> dict[str, Any]:
    return {
        "issue_kind": "pool-replenish", "ref": f"pool-replenish:{episode}",
        "title": f"Pre-provision more cloud trial instances ({free} left in the pool)",
        "body": f"The pool of pre-provisioned trial instances is at {free}, below its low-water mark of "
                f"{low_water}. Please pre-provision more and add them to instances.csv with status `pool`.\n\n"
                f"<!-- trialflow:pool-replenish:{episode} -->",
        "labels": ["cloud-trial", "pool-replenish"],
    }
