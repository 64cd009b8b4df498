"""The Slack app manifest: it parses, asks for the scopes of the Web API calls the code makes (found
by reading the code, not from a second list), points at the URL given and has /trial and the Home tab."""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from slack_sdk import WebClient

from trialflow import cli
from trialflow.slack_app import BOT_EVENTS, SCOPES_BY_METHOD, manifest, needed_scopes, to_yaml

ROOT = Path(__file__).resolve().parents[2]
URL = "https://trialflow.example.com"
_CALL = re.compile(r"\.([a-z]+(?:_[A-Za-z]+)+)\(")
_API_CALL = re.compile(r"""\.api_call\(\s*["']([\w.]+)["']""")


def slack_calls(text: str) -> set[str]:
    """The Web API methods a module's text calls on a slack_sdk WebClient (``client.chat_postMessage(``
    is chat.postMessage), and through ``api_call("...")``."""
    methods = {name.replace("_", ".") for name in _CALL.findall(text)
               if not name.startswith("_") and callable(getattr(WebClient, name, None)) and name != "api_call"}
    return methods | set(_API_CALL.findall(text))


def calls_in_the_code() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "trialflow").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        text = path.read_text()
        if "slack_sdk" in text or "WebClient" in text or "SlackTransport" in text:
            for method in slack_calls(text):
                found.setdefault(method, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_scanner_finds_calls_and_only_slack_s():
    sample = ("self.client.chat_postMessage(**args)\nclient.users_lookupByEmail(email=e)\n"
              "client.api_call('team.info')\nrepo.get_issue(3)\nself.client.search_issues(q)\n")
    assert slack_calls(sample) == {"chat.postMessage", "users.lookupByEmail", "team.info"}


def test_every_slack_call_the_code_makes_has_its_scopes_in_the_table():
    found = calls_in_the_code()
    assert {"chat.postMessage", "chat.update", "conversations.create", "users.lookupByEmail", "views.open",
            "auth.test", "conversations.list"} <= set(found), found   # the scan does see the adapter's calls
    missing = {method: where for method, where in found.items() if method not in SCOPES_BY_METHOD}
    assert missing == {}, "add these methods and their bot scopes to trialflow.slack_app.SCOPES_BY_METHOD"


def test_the_manifest_parses_and_holds_the_scopes_urls_command_and_home_tab(capsys):
    assert cli.main(["slack-manifest", "--url", URL + "/"]) == 0
    app = yaml.safe_load(capsys.readouterr().out)
    assert app == manifest(URL)
    bot_scopes = app["oauth_config"]["scopes"]["bot"]
    for method in calls_in_the_code():
        assert set(SCOPES_BY_METHOD[method]) <= set(bot_scopes), method
    assert bot_scopes == list(needed_scopes()) and "commands" in bot_scopes
    assert {"chat:write", "channels:manage", "users:read.email", "channels:history"} <= set(bot_scopes)
    [command] = app["features"]["slash_commands"]
    assert (command["command"], command["url"]) == ("/trial", URL + "/slack/commands")
    assert app["settings"]["interactivity"] == {"is_enabled": True, "request_url": URL + "/slack/interactions"}
    assert app["settings"]["event_subscriptions"] == {"request_url": URL + "/slack/events",
                                                      "bot_events": list(BOT_EVENTS)}
    assert "app_home_opened" in BOT_EVENTS and app["features"]["app_home"]["home_tab_enabled"] is True


def test_the_manifest_url_must_be_https(capsys):
    assert cli.main(["slack-manifest", "--url", "http://trialflow.example.com"]) == 2
    assert "https:// URLs only" in capsys.readouterr().err


def test_the_yaml_writer_keeps_awkward_strings_intact():
    value = {"a": "yes", "b": "#1: x", "c": ["- not a list", "null"], "d": [{"e": 'say "hi"', "f": False}],
             "g": [], "h": 3}
    assert yaml.safe_load(to_yaml(value)) == value
