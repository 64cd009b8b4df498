"""trialflow's Slack app, as data: the Web API methods trialflow calls and the bot scope each needs,
the events it subscribes to, its slash command; and the app manifest built from them
(``trialflow slack-manifest``), which Slack's "Create an app → From a manifest" accepts.

``SCOPES_BY_METHOD`` is the one list of what the bot token must be granted: the manifest asks for
it and ``trialflow doctor`` checks a token against it. A test scans the code for every slack_sdk
``WebClient`` call and fails when one is missing here, so a new call cannot ship without its scope.
Scopes are Slack's documented bot-token scopes for each method (docs.slack.dev/reference/methods).
"""
from __future__ import annotations

import json
from typing import Any

# Web API method -> the bot scopes it needs (all of them). Empty: any bot token may call it.
SCOPES_BY_METHOD: dict[str, tuple[str, ...]] = {
    "auth.test": (),                                   # doctor: who the token is, and its scopes
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "conversations.create": ("channels:manage",),
    "conversations.join": ("channels:join",),
    "conversations.invite": ("channels:manage",),
    "conversations.setTopic": ("channels:manage",),
    # Channels are looked for among public and private ones (types=public_channel,private_channel).
    "conversations.list": ("channels:read", "groups:read"),
    "conversations.info": ("channels:read", "groups:read"),
    "conversations.history": ("channels:history",),    # the look-back before posting a retry again
    "conversations.replies": ("channels:history",),
    # users.lookupByEmail needs users:read.email, which Slack grants only beside users:read.
    "users.lookupByEmail": ("users:read", "users:read.email"),
    "views.open": (),
    "views.publish": (),                               # the App Home tab
}
SLASH_COMMAND = "/trial"
SLASH_COMMAND_PATH = "/slack/commands"
INTERACTIONS_PATH = "/slack/interactions"
EVENTS_PATH = "/slack/events"
BOT_EVENTS = ("app_home_opened",)
# A slash command is a feature of the app, not a Web API call: its scope comes with it.
FEATURE_SCOPES = ("commands",)


def needed_scopes() -> tuple[str, ...]:
    return tuple(sorted({scope for scopes in SCOPES_BY_METHOD.values() for scope in scopes} | set(FEATURE_SCOPES)))


def manifest(url: str, name: str = "trialflow") -> dict[str, Any]:
    base = url.rstrip("/")
    return {
        "display_information": {
            "name": name,
            "description": "Cloud trials: signups, instances, hand-offs and decisions",
            "background_color": "#1d1c1d",
        },
        "features": {
            "app_home": {"home_tab_enabled": True, "messages_tab_enabled": False,
                         "messages_tab_read_only_enabled": False},
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [{
                "command": SLASH_COMMAND, "url": base + SLASH_COMMAND_PATH,
                "description": "A trial's status, your trials, the triage queue, a vanity domain",
                "usage_hint": "status <email|domain> | mine | queue | domain <trial> <subdomain> | help",
                "should_escape": False,
            }],
        },
        "oauth_config": {"scopes": {"bot": list(needed_scopes())}},
        "settings": {
            "event_subscriptions": {"request_url": base + EVENTS_PATH, "bot_events": list(BOT_EVENTS)},
            "interactivity": {"is_enabled": True, "request_url": base + INTERACTIONS_PATH},
            "org_deploy_enabled": False,
            "socket_mode_enabled": False,
            "token_rotation_enabled": False,
        },
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; strings as JSON strings (valid YAML scalars),
    so no value can be misread as another type or break the layout."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = to_yaml(item, indent + 2).splitlines()
                lines.append(f"{pad}- {first.lstrip()}" + "".join(f"\n{line}" for line in rest))
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value), ensure_ascii=False)
