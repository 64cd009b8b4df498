"""Choose each provider's transport from the settings: real when configured, dry-run otherwise."""
from __future__ import annotations

from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.slack import SlackTransport


def build_transports(settings) -> dict:
    transports: dict = {}
    if settings.slack_bot_token is not None:
        transports["slack"] = SlackTransport(settings)
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
    return transports
