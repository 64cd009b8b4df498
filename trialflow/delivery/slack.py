"""Slack effects through slack_sdk's WebClient: messages, in-place updates, per-account channels.

Exactly once: every message carries Slack message metadata naming the effect
(``{"event_type": "trialflow_effect", "event_payload": {"key": <effect key>}}``). When an earlier
attempt may have reached Slack before its worker died (``effect.maybe_delivered``), the channel
history (or the thread) is read back to the moment that first attempt started (less a margin for
clock skew), every page of it however many messages were posted since, and the message found is
returned instead of posting a second one. Updates and channel set-up are idempotent by nature.

Rate limits are the Deliverer's business: slack_sdk's retry handlers are switched off, so a 429
surfaces here at once and becomes ``RetryLater(retry_after=<Retry-After>)`` instead of a sleep
inside a worker.

``slack.home`` publishes people's App Home tabs (``views.publish``), built when delivered
(``services.app_home``).

The scopes the bot token needs are ``trialflow.slack_app.SCOPES_BY_METHOD``: each method called
here has its entry there (a test checks), and ``trialflow slack-manifest`` asks Slack for them.

Not every call to Slack is an effect: a button that opens a form must call ``views.open`` while
the person waits (the trigger id is good for 3 seconds), and a confirmation goes back on the
button's ``response_url``. ``slack_web`` gives the entry point the client for those two calls
(``LiveSlackWeb``, or ``DryRunSlackWeb`` without a bot token), which implements the
``SlackWeb`` port of ``trialflow.services.slack_interactions``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from datetime import datetime
from typing import Any, Protocol
from urllib.error import URLError
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from trialflow.errors import PayloadRefused, PermanentFailure, RetryLater, SlackCallFailed

log = logging.getLogger("trialflow.delivery.slack")

EFFECT_EVENT_TYPE = "trialflow_effect"
TIMEOUT_SECONDS = 15
HISTORY_PAGE = 200           # Slack's advice for conversations.history: no more than 200 a page
# Our clock and Slack's may disagree: the look-back for an earlier attempt starts this much earlier.
CLOCK_SKEW_SECONDS = 300
LIST_PAGE = 200
# Slack errors worth another try later; everything else it answers with ok=false is a refusal.
TRANSIENT_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout", "team_added_to_org"})
# Slack errors about the content of what was sent: the same payload would be refused again.
PAYLOAD_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long",
                            "no_text", "too_many_attachments", "invalid_attachments", "invalid_metadata_format",
                            "invalid_metadata_schema", "metadata_too_large", "too_long", "invalid_arguments"})
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
VIEWS_OPEN_TIMEOUT_SECONDS = 2.5   # views.open must land inside the trigger's 3 s
RESPONSE_URL_TIMEOUT_SECONDS = 5


class HomeViews(Protocol):
    """The App Home views a ``slack.home`` effect asks for, built as the database is now
    (``services.app_home.HomeViews``): (Slack user id, view) per person."""

    def views_for(self, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...


class SlackTransport:
    def __init__(self, settings, client: WebClient | None = None, homes: HomeViews | None = None):
        if client is None:
            base_url = settings.slack_api_url if settings.slack_api_url.endswith("/") else settings.slack_api_url + "/"
            client = WebClient(token=settings.slack_bot_token.get_secret_value(), base_url=base_url,
                               timeout=TIMEOUT_SECONDS, retry_handlers=[])
        self.client = client
        self.homes = homes
        self._channel_ids: dict[str, str] = {}
        # The digest of the Home view last published per Slack user: a burst of changes publishes once.
        self._published: dict[str, str] = {}
        self._lock = threading.Lock()

    def deliver(self, effect) -> dict[str, Any]:
        handlers = {"slack.message": self._message, "slack.update": self._update, "slack.channel": self._channel,
                    "slack.home": self._home}
        handler = handlers.get(effect.kind)
        if handler is None:
            raise PermanentFailure(f"the Slack transport does not know effect kind {effect.kind}")
        try:
            return handler(effect)
        except SlackApiError as exc:
            raise _translate(exc) from None
        except (URLError, TimeoutError, ConnectionError) as exc:
            raise RetryLater(f"Slack unreachable: {type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    # --- slack.message -------------------------------------------------------------------------

    def _message(self, effect) -> dict[str, Any]:
        payload = effect.payload
        thread_ts = None
        if payload.get("thread_ref"):
            parent = _delivered_message(effect, payload["thread_ref"])
            channel_id, thread_ts = parent["channel"], parent["ts"]
        else:
            channel_id = self.channel_id(payload["channel"])
        if effect.maybe_delivered:
            earlier = self._find_posted(effect.key, channel_id, thread_ts, effect.first_attempt_at)
            if earlier is not None:
                log.info("effect %s was already posted (ts %s): not posting it again", effect.key, earlier["ts"],
                         extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
                return earlier
        args = dict(channel=channel_id, text=payload.get("text") or "", blocks=payload.get("blocks") or None,
                    metadata={"event_type": EFFECT_EVENT_TYPE, "event_payload": {"key": effect.key}},
                    unfurl_links=False, unfurl_media=False)
        if thread_ts:
            args["thread_ts"] = thread_ts
        try:
            response = self.client.chat_postMessage(**args)
        except SlackApiError as exc:
            error = _error(exc)
            if error == "not_in_channel":
                self.client.conversations_join(channel=channel_id)
                response = self.client.chat_postMessage(**args)
            elif error in ("channel_not_found", "is_archived"):
                self._forget(channel_id)  # a stale cached id: resolve the name afresh next time
                raise
            else:
                raise
        return {"channel": response["channel"], "ts": response["ts"]}

    def _find_posted(self, key: str, channel_id: str, thread_ts: str | None,
                     since: datetime | None) -> dict[str, Any] | None:
        """The message an earlier attempt posted for ``key``, read back from Slack: every message
        of the channel (or thread) from ``since`` on, one page after another."""
        oldest = f"{since.timestamp() - CLOCK_SKEW_SECONDS:.6f}" if since is not None else None
        cursor = None
        while True:
            if thread_ts:
                page = self.client.conversations_replies(channel=channel_id, ts=thread_ts, include_all_metadata=True,
                                                         limit=HISTORY_PAGE, cursor=cursor, oldest=oldest)
            else:
                page = self.client.conversations_history(channel=channel_id, include_all_metadata=True,
                                                         limit=HISTORY_PAGE, cursor=cursor, oldest=oldest)
            for msg in page.get("messages") or []:
                meta = msg.get("metadata") or {}
                if meta.get("event_type") == EFFECT_EVENT_TYPE and (meta.get("event_payload") or {}).get("key") == key:
                    return {"channel": channel_id, "ts": msg["ts"]}
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None

    # --- slack.update --------------------------------------------------------------------------

    def _update(self, effect) -> dict[str, Any]:
        payload = effect.payload
        target = _delivered_message(effect, payload["ref"])
        self.client.chat_update(channel=target["channel"], ts=target["ts"], text=payload.get("text") or "",
                                blocks=payload.get("blocks") or [])
        return {"channel": target["channel"], "ts": target["ts"]}

    # --- slack.channel -------------------------------------------------------------------------

    def _channel(self, effect) -> dict[str, Any]:
        payload = effect.payload
        name = _channel_name(payload["name"])
        channel, created = self._create_or_find(name)
        channel_id = channel["id"]
        has_topic = bool((channel.get("topic") or {}).get("value"))
        if payload.get("topic") and (created or not has_topic):  # never overwrite a topic people set
            self.client.conversations_setTopic(channel=channel_id, topic=payload["topic"])
        invited, already, not_in_slack = [], [], []
        for email in payload.get("invite") or []:
            try:
                user_id = self.client.users_lookupByEmail(email=email)["user"]["id"]
            except SlackApiError as exc:
                if _error(exc) != "users_not_found":
                    raise
                # One missing person must not keep the others out of the channel.
                not_in_slack.append(email)
                log.warning("#%s: %s has no Slack account (users_not_found); invite them by hand", name, email,
                            extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
                continue
            try:
                self.client.conversations_invite(channel=channel_id, users=user_id)
                invited.append(user_id)
            except SlackApiError as exc:
                if _error(exc) not in ("already_in_channel", "cant_invite_self"):
                    raise
                already.append(user_id)
        return {"channel": channel_id, "name": name, "created": created, "invited": invited,
                "already_in_channel": already, "not_in_slack": not_in_slack}

    # --- slack.home ----------------------------------------------------------------------------

    def _home(self, effect) -> dict[str, Any]:
        """Publish each named person's App Home tab (views.publish), unless it is what this
        transport published for them last: a retry, or the rest of a burst, publishes nothing."""
        if self.homes is None:
            # A transport built for messages only (delivery.wiring always gives it the views): nothing to publish.
            log.warning("effect %s: no App Home views to publish with (this Slack transport was built without them)",
                        effect.key, extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
            return {"published": [], "unchanged": [], "without_views": True}
        published, unchanged, unknown = [], [], []
        for user_id, view in self.homes.views_for(effect.payload):
            digest = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()
            with self._lock:
                if self._published.get(user_id) == digest:
                    unchanged.append(user_id)
                    continue
            try:
                self.client.views_publish(user_id=user_id, view=view)
            except SlackApiError as exc:
                if _error(exc) != "user_not_found":
                    raise
                # A slack_user_id in staff.csv that Slack does not know: the others still get theirs.
                log.warning("App Home for %s: Slack does not know this user (check slack_user_id in staff.csv)",
                            user_id, extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
                unknown.append(user_id)
                continue
            with self._lock:
                self._published[user_id] = digest
            published.append(user_id)
        return {"published": published, "unchanged": unchanged, "user_not_found": unknown}

    # --- channels by name ----------------------------------------------------------------------

    def channel_id(self, channel: str) -> str:
        """The id of a channel given as an id, ``name`` or ``#name``; created if it does not exist yet."""
        if _CHANNEL_ID.match(channel):
            return channel
        name = _channel_name(channel)
        with self._lock:
            known = self._channel_ids.get(name)
        if known:
            return known
        found, _ = self._create_or_find(name)
        return found["id"]

    def _create_or_find(self, name: str) -> tuple[dict[str, Any], bool]:
        try:
            channel = self.client.conversations_create(name=name, is_private=False)["channel"]
            created = True
        except SlackApiError as exc:
            if _error(exc) != "name_taken":
                raise
            channel, created = self.find_channel(name), False
            if channel is None:
                raise PermanentFailure(f"Slack says #{name} exists, but trialflow's bot cannot see it "
                                       f"(a private channel without the bot?): invite the bot to #{name}") from None
            if channel.get("is_archived"):
                raise PermanentFailure(f"#{name} exists but is archived: unarchive it (or rename it) and retry") from None
            if not channel.get("is_member"):
                self.client.conversations_join(channel=channel["id"])
        with self._lock:
            self._channel_ids[name] = channel["id"]
        return channel, created

    def find_channel(self, name: str) -> dict[str, Any] | None:
        """The channel called ``name`` (public, or private with the bot in it), or None. Reads only."""
        cursor = None
        while True:
            page = self.client.conversations_list(types="public_channel,private_channel", exclude_archived=False,
                                                  limit=LIST_PAGE, cursor=cursor)
            for channel in page.get("channels") or []:
                if channel.get("name") == name:
                    return channel
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None

    def _forget(self, channel_id: str) -> None:
        with self._lock:
            for name, known in list(self._channel_ids.items()):
                if known == channel_id:
                    del self._channel_ids[name]


def _channel_name(channel: str) -> str:
    return channel.strip().lstrip("#").lower()


def _delivered_message(effect, ref: str) -> dict[str, Any]:
    """The channel and ts of the message an earlier effect posted under ``ref``."""
    result = effect.results.result_for_ref(ref)
    if result is None:
        raise RetryLater(f"the Slack message {ref} is not posted yet")
    if not result.get("ts") or not result.get("channel"):
        raise PermanentFailure(f"the Slack message {ref} was never posted to Slack (delivered by the dry-run sink)")
    return result


def _error(exc: SlackApiError) -> str | None:
    data = exc.response.data if exc.response is not None else None
    return data.get("error") if isinstance(data, dict) else None


def _translate(exc: SlackApiError) -> Exception:
    response = exc.response
    method = urlsplit(str(response.api_url)).path.rsplit("/", 1)[-1] if response is not None else "?"
    status = response.status_code if response is not None else 0
    error = _error(exc) or f"HTTP {status}"
    if status == 429 or error == "ratelimited":
        retry_after = _retry_after(response.headers if response is not None else {})
        return RetryLater(f"Slack rate-limited {method}" + (f"; retry after {retry_after:g}s" if retry_after else ""),
                          retry_after)
    if status >= 500 or error in TRANSIENT_ERRORS:
        return RetryLater(f"Slack {method} failed for now: {error}")
    if error in PAYLOAD_ERRORS:
        data = response.data if response is not None and isinstance(response.data, dict) else {}
        details = [str(e) for e in data.get("errors") or (data.get("response_metadata") or {}).get("messages") or []]
        return PayloadRefused(f"Slack refused {method}: {error}" + (f" ({'; '.join(details[:3])})" if details else "")
                              + " (Slack rejected the content trialflow built: the same content would be rejected again)")
    return PermanentFailure(f"Slack refused {method}: {error}")


def _retry_after(headers) -> float | None:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None


# --- answering a person while they wait: views.open and response_url ------------------------------

class LiveSlackWeb:
    """The real slack_sdk clients (``settings.slack_api_url`` lets tests point them at a local server)."""

    def __init__(self, settings):
        self._client = WebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url,
                                 # slack_sdk annotates timeout as int; it goes to urllib, which takes seconds as a float.
                                 timeout=VIEWS_OPEN_TIMEOUT_SECONDS)  # type: ignore[arg-type]

    def open_view(self, trigger_id: str, view: dict) -> None:
        try:
            self._client.views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as exc:
            raise SlackCallFailed(_error(exc) or "error") from None
        except (SlackClientError, OSError) as exc:
            raise SlackCallFailed(type(exc).__name__) from None

    def respond(self, response_url: str, text: str) -> None:
        try:
            result = WebhookClient(response_url, timeout=RESPONSE_URL_TIMEOUT_SECONDS).send(
                text=text, response_type="ephemeral", replace_original=False)
            if result.status_code >= 400:
                log.warning("Slack response_url answered %s", result.status_code)
        except OSError as exc:
            log.warning("could not answer on the Slack response_url: %s", type(exc).__name__)


class DryRunSlackWeb:
    """No bot token: say what would have been shown."""

    def open_view(self, trigger_id: str, view: dict) -> None:
        log.info("dry-run views.open: %s (%s)", view.get("callback_id"), view.get("title", {}).get("text"))

    def respond(self, response_url: str, text: str) -> None:
        log.info("dry-run ephemeral answer: %s", text[:200])


def slack_web(settings) -> LiveSlackWeb | DryRunSlackWeb:
    return LiveSlackWeb(settings) if settings.slack_bot_token is not None else DryRunSlackWeb()
