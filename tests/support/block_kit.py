"""What Slack will take, checked with slack_sdk's own Block Kit models (``Block.parse`` and
``View``; ``validate_json`` checks an object, ``to_dict`` the objects inside it) plus the
documented limits those models leave unchecked (an option's text)."""
from __future__ import annotations

import re
from typing import Any

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

MESSAGE_BLOCKS_MAX = 50
MESSAGE_TEXT_MAX = 40000
OPTION_TEXT_MAX = 75
OPTION_VALUE_MAX = 150
ENTITY = re.compile(r"&(?!(?:amp|lt|gt);)")
CONSTRUCT = re.compile(r"<[^<>]+>")


def assert_valid_block(block: dict[str, Any]) -> None:
    parsed = Block.parse(block)
    assert parsed is not None, f"not a Block Kit block: {block.get('type')}"
    parsed.validate_json()
    parsed.to_dict()
    for option in _options(block):
        assert len(option["text"]["text"]) <= OPTION_TEXT_MAX, option
        assert len(option["value"]) <= OPTION_VALUE_MAX, option


def assert_valid_message(payload: dict[str, Any]) -> None:
    """A chat.postMessage / chat.update payload Slack accepts, with its mrkdwn intact."""
    blocks = payload.get("blocks") or []
    assert len(blocks) <= MESSAGE_BLOCKS_MAX
    assert len(payload.get("text") or "") <= MESSAGE_TEXT_MAX
    for block in blocks:
        assert_valid_block(block)
    for text in [payload.get("text") or "", *_mrkdwn_texts(blocks)]:
        assert_intact_mrkdwn(text)


def assert_valid_view(view: dict[str, Any]) -> None:
    View(**view).validate_json()
    View(**view).to_dict()
    for block in view["blocks"]:
        assert_valid_block(block)
    for text in _mrkdwn_texts(view["blocks"]):
        assert_intact_mrkdwn(text)


def assert_intact_mrkdwn(text: str) -> None:
    """No half escape sequence (a bare ``&``) and no half mention or link (a lone ``<`` or ``>``)."""
    assert not ENTITY.search(text), f"a bare & (a cut escape?) in {text[:200]!r}…"
    rest = CONSTRUCT.sub("", text)
    assert "<" not in rest and ">" not in rest, f"a cut <…> construct in {text[:200]!r}…"


def _mrkdwn_texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts = []
    for block in blocks:
        if block.get("type") == "section":
            texts.append(block["text"]["text"])
        elif block.get("type") == "context":
            texts.extend(e["text"] for e in block["elements"] if e.get("type") == "mrkdwn")
    return texts


def _options(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = list(node["options"]) if isinstance(node.get("options"), list) else []
        for key in ("initial_option",):
            if isinstance(node.get(key), dict):
                found.append(node[key])
        return found + [o for v in node.values() for o in _options(v)]
    if isinstance(node, list):
        return [o for v in node for o in _options(v)]
    return []
