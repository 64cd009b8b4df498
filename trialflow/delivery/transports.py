"""Choose each provider's transport from the settings: real when configured, dry-run otherwise."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from trialflow.crm import crm_for
from trialflow.delivery.crm import CrmTransport, OpportunityFacts
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.instance import InstanceFacts, InstanceTransport
from trialflow.delivery.slack import HomeViews, SlackTransport
from trialflow.delivery.sourcegraph import SourcegraphAdmin


def build_transports(settings, facts: InstanceFacts | None = None, now: Callable[[], datetime] | None = None,
                     homes: HomeViews | None = None, opportunities: OpportunityFacts | None = None) -> dict:
    """``facts`` and ``now``: where the instance transport records what instances answer, and the
    clock (``services.instance_sync.InstanceRecorder``); without them there is no instance transport.
    ``homes``: the App Home views Slack publishes (``services.app_home.HomeViews``).
    ``opportunities``: where the CRM transport records the Opportunity's id
    (``services.opportunities.OpportunityRecorder``); without it there is no CRM transport."""
    transports: dict = {}
    if settings.slack_bot_token is not None:
        transports["slack"] = SlackTransport(settings, homes=homes)
    else:
        transports["slack"] = DryRunTransport("slack")
    if settings.github_token is not None:
        transports["github"] = GitHubTransport(settings)
    else:
        transports["github"] = DryRunTransport("github")
    if settings.smtp_url:
        transports["email"] = EmailTransport(settings)
    else:
        transports["email"] = DryRunTransport("email")
    if facts is not None and now is not None:
        # With no token for a host its effects are never decided (the policies take the manual
        # path), so the adapter only meets hosts it may administer.
        transports["instance"] = InstanceTransport(SourcegraphAdmin(settings), transports["email"], facts, now)
    if opportunities is not None:
        transports["crm"] = CrmTransport(crm_for(settings), opportunities)
    return transports
