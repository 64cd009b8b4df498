"""Text fitted to a provider's limits where it is built.

A message is a template whose words are ours and whose fields are people's data (a name, a note,
a domain). When the whole would be longer than the provider takes, only the *data* is shortened,
each field marked with an ellipsis where it was cut; our words never are, so the message still
says what happened and who did it ("disqualified by <@U1>: Too small…. Self-hosting email sent.").

- Data is shortened *before* it is escaped, so an escape sequence (``&amp;``) is never cut.
- A field given as a plain ``str`` is ours and is never cut: mentions and links
  (``<@U123>``, ``<mailto:a|a>``, a URL Slack would link) go in that way.
- Markdown around a field (``*{name}*``) stays balanced, because the markers are our words.
- The longest fields are shortened first (and only as far as needed), so a 500-character note
  gives way before a 20-character name does.

``clip`` is the last line of defence for a text built without a template: it cuts at the limit
but never inside an escape sequence or a ``<...>`` construct.
"""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

ELLIPSIS = "…"

# Slack (https://docs.slack.dev/reference/block-kit; the same numbers slack_sdk's models check)
SLACK_SECTION_TEXT = 3000
SLACK_CONTEXT_TEXT = 3000
SLACK_HEADER_TEXT = 150
SLACK_BUTTON_TEXT = 75
SLACK_BUTTON_VALUE = 2000
SLACK_OPTION_TEXT = 75
SLACK_OPTION_VALUE = 150
SLACK_INPUT_LABEL = 2000
SLACK_INPUT_HINT = 2000
SLACK_PLACEHOLDER = 150
SLACK_CONTEXT_ELEMENTS = 10
SLACK_MESSAGE_BLOCKS = 50
SLACK_VIEW_BLOCKS = 100
SLACK_VIEW_TITLE = 24          # also the submit and close buttons of a modal
SLACK_PRIVATE_METADATA = 3000
SLACK_MESSAGE_TEXT = 40000     # chat.postMessage's top-level text (msg_too_long beyond)
SLACK_CHANNEL_TOPIC = 250      # conversations.setTopic (too_long beyond)

# GitHub (REST "create an issue": 422 Validation Failed beyond these)
GITHUB_TITLE = 256
GITHUB_BODY = 65536


@dataclass(frozen=True)
class Data:
    """A field of people's data: escaped by the fitter, and shortened first when space runs out.
    ``keep_end``: cut in the middle, for a host name whose end (its domain) says as much as its start."""
    text: str
    keep_end: bool = False


@dataclass(frozen=True)
class Fitted:
    """A template with its fields, to be fitted as one with the text around it (``lead`` in a message)."""
    template: str
    fields: Mapping[str, Field] = field(default_factory=dict)


Field = str | Data | Fitted
Escape = Callable[[str], str]
_Piece = str | Data


def _same(text: str) -> str:
    return text


def fit(limit: int, template: str, escape: Escape = _same, /, **fields: Field) -> str:
    """``template.format(**fields)`` in at most ``limit`` characters: ``Data`` fields are escaped
    with ``escape`` and, when the whole is too long, shortened (longest first); ``str`` fields and
    the template's own words are kept as they are."""
    pieces = _flatten(Fitted(template, fields))
    data = [p for p in pieces if isinstance(p, Data)]
    lengths = [len(escape(d.text)) for d in data]
    fixed = sum(len(p) for p in pieces if isinstance(p, str))
    allowed = _share(lengths, limit - fixed)
    fitted = iter(_shorten(d, room, escape) for d, room in zip(data, allowed, strict=True))
    return clip("".join(p if isinstance(p, str) else next(fitted) for p in pieces), limit)


def shorten(text: str, limit: int, *, keep_end: bool = False) -> str:
    """One piece of plain text (a GitHub title's host, a button's label) in at most ``limit`` characters."""
    return _shorten(Data(text, keep_end), limit, _same)


def _flatten(fitted: Fitted) -> list[_Piece]:
    pieces: list[_Piece] = []
    for literal, name, spec, conversion in string.Formatter().parse(fitted.template):
        if literal:
            pieces.append(literal)
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"fit templates take plain fields only, not {{{name}!{conversion}:{spec}}}")
        value = fitted.fields[name]
        if isinstance(value, Fitted):
            pieces.extend(_flatten(value))
        elif value != "":
            pieces.append(value)
    return pieces


def _share(lengths: list[int], budget: int) -> list[int]:
    """How much room each field gets: all it needs if everything fits, else the longest are
    brought down to one common length (water-filling), so short fields stay whole."""
    if sum(lengths) <= budget:
        return list(lengths)
    allowed = [0] * len(lengths)
    remaining = max(budget, 0)
    shortest_first = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for n, i in enumerate(shortest_first):
        fair = remaining // (len(lengths) - n)
        allowed[i] = min(lengths[i], fair)
        remaining -= allowed[i]
    return allowed


def _shorten(data: Data, room: int, escape: Escape) -> str:
    whole = escape(data.text)
    if len(whole) <= room:
        return whole
    if room <= 0:
        return ""
    # The longest cut whose escaped form fits (escaping only ever lengthens, so this is monotonic).
    low, high = 0, min(room, len(data.text))
    while low < high:
        width = (low + high + 1) // 2
        if len(_cut(data, width, escape)) <= room:
            low = width
        else:
            high = width - 1
    return _cut(data, low, escape) if low else ELLIPSIS[:room]


def _cut(data: Data, width: int, escape: Escape) -> str:
    """``data`` in ``width`` raw characters, the ellipsis included, then escaped piece by piece."""
    keep = max(width - 1, 0)
    if data.keep_end and keep >= 8:
        head, tail = data.text[: keep - keep // 2], data.text[len(data.text) - keep // 2:]
        return escape(head.rstrip()) + ELLIPSIS + escape(tail.lstrip())
    return escape(data.text[:keep].rstrip()) + ELLIPSIS


# An escape sequence, a <...> construct (mention, link, channel) or any one character: the atoms
# a text may be cut between.
_ATOM = re.compile(r"&[#a-zA-Z0-9]{1,10};|<[^<>\n]{1,3000}>|.", re.DOTALL)


def clip(text: str, limit: int) -> str:
    """``text`` if it fits, else cut before ``limit`` between atoms, with an ellipsis."""
    if len(text) <= limit:
        return text
    kept: list[str] = []
    used = 0
    for atom in _ATOM.finditer(text):
        piece = atom.group(0)
        if used + len(piece) > limit - len(ELLIPSIS):
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept).rstrip() + ELLIPSIS
