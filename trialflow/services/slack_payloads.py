"""The parts of Slack's interaction payloads trialflow reads, as types (the rest is kept, unread).

The route validates a payload into ``Interaction`` before anything runs, so a signed payload of
the wrong shape (``actions`` an object, ``view`` a list, a ``response_url`` that is not a URL) is
refused at the door with a 400 naming the field, instead of failing half-way through a step.
Types are strict: Slack sends strings as strings, and so must anything that signs like Slack.
Field names and shapes are Slack's (docs.slack.dev, "block_actions" and "view_submission" payloads).
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from trialflow.domain.normalize import bad_text

MAX_URL = 2048


def check_url(url: str) -> str:
    """``url`` if trialflow can post to it (http or https, a host, nothing a client would refuse)."""
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url) or not url.isascii():
        raise ValueError("must be an http(s) URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        raise ValueError("must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, like https://hooks.slack.com/actions/...")
    return url


class _Slack(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class SlackUser(_Slack):
    id: str | None = None


class SlackAction(_Slack):
    action_id: str | None = None
    value: str | None = None
    action_ts: str | None = None


class SelectedOption(_Slack):
    value: str | None = None


class StateValue(_Slack):
    """One input's state: ``value`` for text inputs, ``selected_option`` for a static select."""
    type: str | None = None
    value: str | None = None
    selected_option: SelectedOption | None = None


class ViewState(_Slack):
    values: dict[str, dict[str, StateValue]] = Field(default_factory=dict)


class SlackView(_Slack):
    """A submitted modal. For trialflow's own (``callback_id`` ``trial:<action>``),
    ``private_metadata`` is the JSON trialflow wrote, ``{"trial_id", "response_url"}``, or a bare trial id."""
    id: str | None = None
    callback_id: str | None = None
    private_metadata: str | None = None
    state: ViewState | None = None
    _trial_id: str = PrivateAttr(default="")
    _response_url: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read_metadata(self) -> SlackView:
        if not (self.callback_id or "").startswith("trial:"):
            return self
        raw = self.private_metadata or ""
        if not raw.startswith("{"):
            self._trial_id = raw
            return self
        try:
            metadata: Any = json.loads(raw)
        except ValueError:
            raise ValueError("private_metadata is not the JSON trialflow wrote") from None
        if not isinstance(metadata, dict):
            raise ValueError("private_metadata must be a JSON object")
        problem = bad_text(metadata)
        if problem:
            raise ValueError(f"private_metadata: {problem}")
        trial_id, response_url = metadata.get("trial_id"), metadata.get("response_url")
        if not isinstance(trial_id, (str, type(None))) or not isinstance(response_url, (str, type(None))):
            raise ValueError("private_metadata's trial_id and response_url must be strings")
        self._trial_id = trial_id or ""
        try:
            self._response_url = check_url(response_url) if response_url else None
        except ValueError as exc:
            raise ValueError(f"private_metadata's response_url {exc}") from None
        return self

    @property
    def trial_id(self) -> str:
        return self._trial_id

    @property
    def response_url(self) -> str | None:
        return self._response_url

    def values(self) -> dict[str, dict[str, StateValue]]:
        return self.state.values if self.state else {}


class Interaction(_Slack):
    """A ``block_actions`` or ``view_submission`` payload (other types are acknowledged, unread)."""
    type: str | None = None
    user: SlackUser | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    actions: list[SlackAction] = Field(default_factory=list)
    view: SlackView | None = None

    @field_validator("response_url")
    @classmethod
    def _postable(cls, url: str | None) -> str | None:
        return check_url(url) if url else None

    @property
    def user_id(self) -> str:
        return (self.user.id if self.user else None) or ""
