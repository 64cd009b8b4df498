"""Choose each provider's transport from the settings: real when configured, dry-run otherwise."""
from __future__ import annotations

from trialflow.delivery.dryrun import DryRunTransport


def build_transports(settings) -> dict:
    transports: dict = {}
    if settings.slack_bot_token is not None:
        from trialflow.delivery.slack import SlackTransport
        transports["slack"] = SlackTransport(settings)
    else:
        transports["slack"] = DryRunTransport("slack")
    if settings.github_token is not None:
        from trialflow.delivery.github import GitHubTransport
        transports["github"] = GitHubTransport(settings)
    else:
        transports["github"] = DryRunTransport("github")
    if settings.smtp_url:
        from trialflow.delivery.email import EmailTransport
        transports["email"] = EmailTransport(settings)
    else:
        transports["email"] = DryRunTransport("email")
    return transports
