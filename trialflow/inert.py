"""What people type stays text: names, companies, sources and notes rendered so that nothing in
them acts where they are shown.

- GitHub Markdown (issue bodies, comments): inside a code span, nothing is a mention, a link, an
  image, HTML or a hidden comment. The fence is one backtick longer than any run of backticks in
  the text, so the text cannot close it.
- Plain-text email: mail clients turn URLs and domain names into links by themselves, so the dots
  and the ``://`` of anything that looks like one are written the way security teams write
  hostile addresses (``evil[.]example``, ``https[:]//``): readable, and not a link. Email
  addresses stay as they are: at most they open the reader's own mail program.
"""
from __future__ import annotations

import re

_BACKTICKS = re.compile(r"`+")
_SCHEME = re.compile(r"://")
_DOT_IN_NAME = re.compile(r"(?<=\w)\.(?=\w)")
_EMAIL = re.compile(r"([\w.+-]+@[\w-]+(?:\.[\w-]+)+)")


def code_span(text: str | None, empty: str = "(not given)") -> str:
    """``text`` as an inline Markdown code span, on one line."""
    flat = " ".join((text or "").split())
    if not flat:
        return empty
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(flat)), default=0) + 1)
    # The spaces inside the fence are removed by the renderer; they let the text start or end with a backtick.
    return f"{fence} {flat} {fence}"


def plain(text: str | None, one_line: bool = True) -> str:
    """``text`` for a plain-text email: no address or URL a mail client would link (and, unless
    told otherwise, on one line)."""
    flat = " ".join((text or "").split()) if one_line else (text or "")
    # re.split with a group: the odd pieces are the email addresses, left whole.
    pieces = _EMAIL.split(flat)
    return "".join(piece if i % 2 else _DOT_IN_NAME.sub("[.]", _SCHEME.sub("[:]//", piece))
                   for i, piece in enumerate(pieces))
