"""A local HTTP server that answers like Slack's Web API, for the real ``slack_sdk.WebClient``.

Responses are built from Slack's documented examples in ``../shared/fixtures/slack/web_api``
(only ids, names, text and timestamps are filled in). Every request is recorded; state is kept
behind one lock, so the server may be hit from many threads and from other processes (a Celery
worker started by a test reaches it over HTTP at ``.url``; the test then reads ``.messages``).

Use it from any test module::

    from tests.support.fake_slack import fake_slack  # noqa: F401  (the pytest fixture)

    def test_...(fake_slack):
        settings = make_settings(db_url, config_dir, **fake_slack.settings())
        # or, for a subprocess: trialflow_env(**fake_slack.settings())
        ...
        assert fake_slack.deliveries()[effect_key] == 1

or without pytest: ``with FakeSlack() as slack: ...``; or from a shell:
``python -m tests.support.fake_slack --port 9001`` (state at ``GET /_fake/state``).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from trialflow.slack_app import manifest

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "slack" / "web_api"
DEFAULT_TOKEN = "xoxb-1111-2222-trialflowtests"
BOT_USER = "U0BOTTFLOW"
BOT_ID = "B0TRIALFLW"
# Slack's documented limits on what it is sent (the block limits are slack_sdk's models' own checks).
MESSAGE_TEXT_MAX = 40000
MESSAGE_BLOCKS_MAX = 50
TOPIC_MAX = 250


@dataclass
class SlackRequest:
    method: str                     # "chat.postMessage"
    args: dict[str, Any]            # query string, form and JSON body merged
    headers: dict[str, str]
    status: int = 200
    error: str | None = None        # Slack's "error" when ok=false


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    is_archived: bool = False
    is_member: bool = True
    members: set[str] = field(default_factory=set)
    topic: str = ""
    created: int = 0


class FakeSlack:
    def __init__(self, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.lock = threading.RLock()
        self.requests: list[SlackRequest] = []
        self.channels: dict[str, Channel] = {}
        self.messages: list[dict[str, Any]] = []      # every message chat.postMessage accepted
        self.updates: list[dict[str, Any]] = []       # every chat.update accepted
        self.invites: list[tuple[str, str]] = []      # (channel id, user id)
        self.home_views: dict[str, list[dict[str, Any]]] = {}   # user id -> every App Home view published
        self.users: dict[str, str] = {}               # email -> user id
        # The bot token's scopes, sent back in x-oauth-scopes as Slack does: by default those of an
        # app created from trialflow's manifest (`trialflow slack-manifest`).
        self.scopes: set[str] = set(manifest("https://trialflow.example.com")["oauth_config"]["scopes"]["bot"])
        self.team = "Acme Cloud"
        self._rate_limits: dict[str, deque[float]] = {}
        self._failures: dict[str, deque[str]] = {}
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)
        self._examples = {p.stem: json.loads(p.read_text()) for p in FIXTURES.glob("*.json")}
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/"

    def settings(self) -> dict[str, str]:
        """Settings overrides pointing trialflow here: ``make_settings(..., **s)`` or ``trialflow_env(**s)``."""
        return {"slack_bot_token": self.token, "slack_api_url": self.url}

    def start(self) -> FakeSlack:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- arranging -----------------------------------------------------------------------------

    def add_user(self, email: str, user_id: str | None = None) -> str:
        with self.lock:
            user_id = user_id or f"U{next(self._ids):08d}"
            self.users[email.lower()] = user_id
            return user_id

    def add_channel(self, name: str, *, is_member: bool = True, is_private: bool = False,
                    is_archived: bool = False, members: tuple[str, ...] = (), topic: str = "") -> str:
        with self.lock:
            channel = Channel(id=f"C{next(self._ids):08d}", name=name, is_private=is_private, is_archived=is_archived,
                              is_member=is_member, members=set(members) | ({BOT_USER} if is_member else set()),
                              topic=topic, created=int(time.time()))
            self.channels[channel.id] = channel
            return channel.id

    def add_message(self, channel: str, text: str, at: float | None = None) -> str:
        """A message someone posted to ``channel`` (a name or id) at unix time ``at`` (default now),
        not through trialflow; its ts."""
        with self.lock:
            target = self._channel(channel)
            if target is None:
                raise KeyError(channel)
            ts = f"{int(at if at is not None else time.time())}.{next(self._ts):06d}"
            self.messages.append({"type": "message", "user": "U0SOMEONE", "channel": target.id, "ts": ts,
                                  "text": text, "blocks": []})
            return ts

    def rate_limit(self, method: str, retry_after: float = 30, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer 429 ``ratelimited`` with this Retry-After."""
        with self.lock:
            self._rate_limits.setdefault(method, deque()).extend([retry_after] * times)

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        with self.lock:
            self._failures.setdefault(method, deque()).extend([error] * times)

    # --- inspecting ----------------------------------------------------------------------------

    def channel_named(self, name: str) -> Channel | None:
        with self.lock:
            return next((c for c in self.channels.values() if c.name == name.lstrip("#")), None)

    def messages_in(self, name: str) -> list[dict[str, Any]]:
        channel = self.channel_named(name)
        with self.lock:
            return [m for m in self.messages if channel and m["channel"] == channel.id]

    def calls(self, method: str) -> list[SlackRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method]

    def deliveries(self) -> Counter:
        """How many messages were posted per trialflow effect key (from the message metadata)."""
        with self.lock:
            return Counter(((m.get("metadata") or {}).get("event_payload") or {}).get("key") for m in self.messages)

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"messages": copy.deepcopy(self.messages), "updates": copy.deepcopy(self.updates),
                    "invites": list(self.invites),
                    "channels": [{"id": c.id, "name": c.name, "members": sorted(c.members), "topic": c.topic}
                                 for c in self.channels.values()],
                    "requests": [{"method": r.method, "status": r.status, "error": r.error} for r in self.requests]}

    # --- answering -----------------------------------------------------------------------------

    def handle(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], dict]:
        with self.lock:
            record = SlackRequest(method, args, headers)
            self.requests.append(record)
            status, extra_headers, body = self._answer(method, args, headers)
            record.status = status
            record.error = None if body.get("ok") else body.get("error")
            return status, extra_headers, body

    def _answer(self, method, args, headers):
        limits = self._rate_limits.get(method)
        if limits:
            example = self._examples["ratelimited.429"]
            retry_after = limits.popleft()
            hdrs = {k: v for k, v in example["headers"].items() if k != "connection"}
            hdrs["retry-after"] = f"{retry_after:g}"
            return example["status"], hdrs, copy.deepcopy(example["body"])
        if headers.get("authorization") != f"Bearer {self.token}":
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        failures = self._failures.get(method)
        if failures:
            return 200, {}, {"ok": False, "error": failures.popleft()}
        answer = getattr(self, "_" + method.replace(".", "_"), None)
        if answer is None:
            return 200, {}, {"ok": False, "error": "unknown_method"}
        return 200, {"x-oauth-scopes": ",".join(sorted(self.scopes))}, answer(args)

    def _error(self, example: str | None = None, error: str | None = None) -> dict:
        return copy.deepcopy(self._examples[example]) if example else {"ok": False, "error": error}

    def _channel(self, ref: str | None) -> Channel | None:
        if not ref:
            return None
        if ref in self.channels:
            return self.channels[ref]
        return next((c for c in self.channels.values() if c.name == ref.lstrip("#")), None)

    def _channel_object(self, channel: Channel, example: str = "conversations.create") -> dict:
        obj = copy.deepcopy(self._examples[example]["channel"])
        obj.update(id=channel.id, name=channel.name, name_normalized=channel.name, created=channel.created,
                   creator=BOT_USER, is_private=channel.is_private, is_archived=channel.is_archived,
                   is_member=channel.is_member, is_general=False, previous_names=[])
        obj["topic"] = {"value": channel.topic, "creator": BOT_USER if channel.topic else "", "last_set": 0}
        if "num_members" in obj:
            obj["num_members"] = len(channel.members)
        return obj

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _chat_postMessage(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        if channel.is_archived:
            return self._error(error="is_archived")
        if not channel.is_member:
            return self._error(error="not_in_channel")
        if not args.get("text") and not args.get("blocks"):
            return self._error(error="no_text")
        refused = _refused_content(args)
        if refused:
            return refused
        thread_ts = args.get("thread_ts")
        if thread_ts and not any(m["ts"] == thread_ts and m["channel"] == channel.id for m in self.messages):
            return self._error(error="thread_not_found")
        message = {"type": "message", "subtype": "bot_message", "bot_id": BOT_ID, "user": BOT_USER,
                   "channel": channel.id, "ts": self._next_ts(), "text": args.get("text", ""),
                   "blocks": _json_arg(args.get("blocks")) or []}
        if thread_ts:
            message["thread_ts"] = thread_ts
        metadata = _json_arg(args.get("metadata"))
        if metadata:
            message["metadata"] = metadata
        self.messages.append(message)
        body = copy.deepcopy(self._examples["chat.postMessage"])
        body["channel"], body["ts"] = channel.id, message["ts"]
        body["message"].pop("attachments", None)
        body["message"].update(text=message["text"], ts=message["ts"], blocks=message["blocks"], bot_id=BOT_ID)
        if thread_ts:
            body["message"]["thread_ts"] = thread_ts
        if metadata:
            body["message"]["metadata"] = metadata
        return body

    def _chat_update(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        target = next((m for m in self.messages if m["channel"] == channel.id and m["ts"] == args.get("ts")), None)
        if target is None:
            return self._error(error="message_not_found")
        refused = _refused_content(args)
        if refused:
            return refused
        target["text"] = args.get("text", target["text"])
        target["blocks"] = _json_arg(args.get("blocks")) or target["blocks"]
        self.updates.append({"channel": channel.id, "ts": target["ts"], "text": target["text"],
                             "blocks": target["blocks"]})
        body = copy.deepcopy(self._examples["chat.update"])
        body.update(channel=channel.id, ts=target["ts"], text=target["text"])
        body["message"] = {"text": target["text"], "user": BOT_USER, "blocks": target["blocks"]}
        return body

    def _views_publish(self, args):
        """App Home: the user must exist; the view must be a ``home`` view slack_sdk's models accept
        (at most 100 blocks)."""
        user_id, view = args.get("user_id"), _json_arg(args.get("view"))
        if user_id not in self.users.values():
            return self._error(error="user_not_found")
        if not isinstance(view, dict) or view.get("type") != "home":
            return self._error(error="invalid_arguments")
        try:
            View(**view).validate_json()
            View(**view).to_dict()
        except (SlackObjectFormationError, TypeError) as exc:
            return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": [f"[ERROR] {exc}"]}}
        refused = _refused_content({"blocks": (view.get("blocks") or [])[:MESSAGE_BLOCKS_MAX]})
        if refused:
            return refused
        published = {"id": f"V{next(self._ids):08d}", "hash": f"{next(self._ts)}.home", **view}
        self.home_views.setdefault(user_id, []).append(published)
        return {"ok": True, "view": published}

    def _conversations_create(self, args):
        name = (args.get("name") or "").lower()
        if not name or len(name) > 80 or any(not (ch.isalnum() or ch in "-_") for ch in name):
            return self._error(error="invalid_name_specials")
        if self._channel(name) is not None:
            return self._error("conversations.create.name_taken")
        channel_id = self.add_channel(name, is_private=_truthy(args.get("is_private")))
        return {"ok": True, "channel": self._channel_object(self.channels[channel_id])}

    def _auth_test(self, args):
        return {"ok": True, "url": "https://acme-cloud.slack.com/", "team": self.team, "user": "trialflow",
                "team_id": "T0ACMECLD", "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _conversations_list(self, args):
        types = set((args.get("types") or "public_channel").split(","))
        channels = [c for c in self.channels.values()
                    if ("private_channel" in types and c.is_private and c.is_member)
                    or ("public_channel" in types and not c.is_private)]
        if _truthy(args.get("exclude_archived")):
            channels = [c for c in channels if not c.is_archived]
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 100)
        page = channels[start:start + limit]
        more = start + limit < len(channels)
        return {"ok": True, "channels": [self._channel_object(c) for c in page],
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_join(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None or channel.is_private and not channel.is_member:
            return self._error(error="channel_not_found")
        if channel.is_archived:
            return self._error(error="is_archived")
        channel.is_member = True
        channel.members.add(BOT_USER)
        return {"ok": True, "channel": self._channel_object(channel)}

    def _conversations_setTopic(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        if len(args.get("topic") or "") > TOPIC_MAX:
            return self._error(error="too_long")
        channel.topic = args.get("topic", "")
        return {"ok": True, "channel": self._channel_object(channel)}

    def _conversations_invite(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        if not channel.is_member:
            return self._error(error="not_in_channel")
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if not users:
            return self._error(error="no_user")
        known = set(self.users.values())
        for user in users:
            if user not in known:
                return self._error(error="user_not_found")
            if user in channel.members:
                return self._error("conversations.invite.already_in_channel")
        for user in users:
            channel.members.add(user)
            self.invites.append((channel.id, user))
        body = copy.deepcopy(self._examples["conversations.invite"])
        body["channel"] = self._channel_object(channel, "conversations.invite")
        return body

    def _users_lookupByEmail(self, args):
        email = (args.get("email") or "").lower()
        user_id = self.users.get(email)
        if user_id is None:
            return self._error("users.lookupByEmail.users_not_found")
        body = copy.deepcopy(self._examples["users.lookupByEmail"])
        local = email.split("@")[0]
        body["user"].update(id=user_id, name=local, real_name=local)
        body["user"]["profile"].update(email=email, display_name=local, display_name_normalized=local,
                                       real_name=local, real_name_normalized=local)
        return body

    def _history_message(self, message: dict, with_metadata: bool) -> dict:
        shown = {k: v for k, v in message.items() if k not in ("channel", "metadata")}
        if with_metadata and "metadata" in message:
            shown["metadata"] = message["metadata"]
        return shown

    def _paged(self, messages: list[dict], args) -> dict:
        """One page, as Slack pages history: ``oldest``/``latest`` bound the window (exclusive
        unless ``inclusive``), ``limit`` sizes the page, ``next_cursor`` leads to the next one."""
        messages = [m for m in messages if _in_window(m["ts"], args)]
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 100)
        page = messages[start:start + limit]
        more = start + limit < len(messages)
        with_metadata = _truthy(args.get("include_all_metadata"))
        return {"ok": True, "messages": [self._history_message(m, with_metadata) for m in page], "has_more": more,
                "pin_count": 0, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_history(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        if not channel.is_member and channel.is_private:
            return self._error(error="not_in_channel")
        # Newest first; thread replies stay in their thread.
        top = [m for m in reversed(self.messages) if m["channel"] == channel.id and "thread_ts" not in m]
        return self._paged(top, args)

    def _conversations_replies(self, args):
        channel = self._channel(args.get("channel"))
        if channel is None:
            return self._error(error="channel_not_found")
        ts = args.get("ts")
        thread = [m for m in self.messages if m["channel"] == channel.id and (m["ts"] == ts or m.get("thread_ts") == ts)]
        if not thread:
            return self._error(error="thread_not_found")
        return self._paged(thread, args)  # oldest first, the parent leading


def _in_window(ts: str, args: dict[str, Any]) -> bool:
    at, inclusive = float(ts), _truthy(args.get("inclusive"))
    oldest, latest = args.get("oldest"), args.get("latest")
    if oldest not in (None, "") and (at < float(oldest) or at == float(oldest) and not inclusive):
        return False
    return latest in (None, "") or at < float(latest) or at == float(latest) and inclusive


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def _refused_content(args: dict[str, Any]) -> dict | None:
    """Slack's answer to a message it will not take: text over 40,000 characters, more than 50
    blocks, or a block past Block Kit's limits (``invalid_blocks``, with its reasons)."""
    if len(args.get("text") or "") > MESSAGE_TEXT_MAX:
        return {"ok": False, "error": "msg_too_long"}
    blocks = _json_arg(args.get("blocks")) or []
    errors = [f"no more than {MESSAGE_BLOCKS_MAX} items allowed [json-pointer:/blocks]"] \
        if len(blocks) > MESSAGE_BLOCKS_MAX else []
    for i, block in enumerate(blocks):
        try:
            parsed = Block.parse(block)
            parsed.validate_json()
            parsed.to_dict()  # validates the elements inside too
        except SlackObjectFormationError as exc:
            errors.append(f"{exc} [json-pointer:/blocks/{i}]")
    if errors:
        return {"ok": False, "error": "invalid_blocks", "errors": errors,
                "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
    return None


def _json_arg(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value


def _handler_for(fake: FakeSlack):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-slack/1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _args(self) -> dict[str, Any]:
            parts = urlsplit(self.path)
            args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
            if raw and ctype == "application/json":
                args.update(json.loads(raw))
            elif raw:
                args.update({k: v[-1] for k, v in parse_qs(raw.decode("utf-8")).items()})
            return args

        def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=utf-8")
            for k, v in headers.items():
                if k.lower() != "content-type":
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/_fake/state":
                self._send(200, {}, fake.state())
            else:
                self.do_POST()

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if not path.startswith("/api/"):
                self._send(404, {}, {"ok": False, "error": "unknown_method"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = fake.handle(path[len("/api/"):], self._args(), headers)
            self._send(status, extra, body)

    return Handler


def add_test_staff(slack: FakeSlack) -> FakeSlack:
    """The staff of tests/support/config.py become Slack users (with their slack_user_id), and
    #cloud-trial-alerts exists with the bot in it."""
    from tests.support.config import STAFF

    for line in STAFF.strip().splitlines()[1:]:
        email, _name, _role, slack_user_id, *_ = line.split(",")
        slack.add_user(email, slack_user_id)
    slack.add_channel("cloud-trial-alerts")
    return slack


@pytest.fixture
def fake_slack():
    """A running FakeSlack for one test, with the test staff as users and #cloud-trial-alerts."""
    with FakeSlack() as slack:
        yield add_test_staff(slack)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve a fake Slack Web API (state at /_fake/state).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    cli = parser.parse_args()
    server = add_test_staff(FakeSlack(token=cli.token, port=cli.port))
    print(f"TRIALFLOW_SLACK_API_URL={server.url} TRIALFLOW_SLACK_BOT_TOKEN={server.token}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._server.serve_forever()
