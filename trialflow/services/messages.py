"""The words of trialflow's messages: how a lead, the people on a trial and its score read in
Slack, and the bodies of the cloud team's GitHub issues. Pure text building, shared by the
policies that decide when each is sent."""
from __future__ import annotations

import re
import unicodedata
from typing import Protocol

from trialflow.domain.trial import PlainTrial
from trialflow.scoring import is_mql
from trialflow.services import slack_blocks as sb
from trialflow.settings import Settings


class People(Protocol):
    """Who is who, for the words of a message (``services.directory.Directory``)."""

    def mention(self, email: str | None) -> str: ...


def channel_name(account: str) -> str:
    """Slack channel names: lower case, at most 80 chars, letters, digits, - and _ only."""
    ascii_name = unicodedata.normalize("NFKD", account).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_name).strip("-_") or "account"
    return ("cloud-trial-" + slug)[:80].rstrip("-_")


def who(people: People, trial: PlainTrial) -> str:
    m = people.mention
    return f"SDR {m(trial.sdr)} · AE {m(trial.ae)} · CE {m(trial.ce)}"


def lead(trial: PlainTrial) -> str:
    name = sb.escape(trial.name) if trial.name else trial.email
    company = f" ({sb.escape(trial.company)})" if trial.company else ""
    return f"*{name}*{company} <mailto:{trial.email}|{trial.email}>"


def score(trial: PlainTrial) -> str:
    grade = trial.pql_grade or "-"
    points = trial.mql_points or 0
    return f"lead score: MQL {points} pts{' (MQL)' if is_mql(points) else ''} · PQL grade {grade}"


def account_of(trial: PlainTrial) -> str:
    return trial.account_name or trial.domain


def instance_request_body(trial: PlainTrial, ce_email: str, settings: Settings) -> str:
    tags = ",".join(settings.license_tags)
    return "\n".join([
        f"### Cloud trial instance request: {account_of(trial)}",
        "",
        f"- Account: {account_of(trial)}",
        f"- Domain: {trial.domain}",
        f"- Requester: {trial.name or ''} <{trial.email}>",
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
        "",
        f"<!-- trialflow:{trial.id}:instance-request -->",
    ])


def domain_change_body(trial: PlainTrial, new_host: str, actor: str, position: int) -> str:
    return "\n".join([
        f"### Domain name change: {trial.instance_host} → {new_host}",
        "", f"- Account: {account_of(trial)}", f"- Requested by: {actor}", "",
        "Changing the domain will break, until the admin reconfigures them:",
        "- [ ] the auth provider (SSO): sign-in is broken until it is reconfigured",
        "- [ ] permission syncing: repository permissions are broken until it is reconfigured",
        "- [ ] webhooks pointing at the old domain",
        "- [ ] every hard-coded link to the old domain",
        "", f"<!-- trialflow:{trial.id}:domain-change:{position} -->",
    ])


def pool_replenish_issue(free: int, low_water: int, episode: str) -> dict:
    return {
        "issue_kind": "pool-replenish", "ref": f"pool-replenish:{episode}",
        "title": f"Pre-provision more cloud trial instances ({free} left in the pool)",
        "body": f"The pool of pre-provisioned trial instances is at {free}, below its low-water mark of "
                f"{low_water}. Please pre-provision more and add them to instances.csv with status `pool`.\n\n"
                f"<!-- trialflow:pool-replenish:{episode} -->",
        "labels": ["cloud-trial", "pool-replenish"],
    }
