"""Hypothesis strategies that take a real request (a fixture payload, a valid signup) and break it.

A generated request stays close to what a real sender sends: most of it is the real payload, and
one to three places in it are replaced by something else (another JSON type, a huge number, a
string no sender would put there), deleted, or joined by an unknown key. Strings are chosen from
the ones that broke trialflow before (NUL, lone surrogates, dates out of range, non-ASCII digits,
things that are not URLs) as well as drawn at random.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

# Strings that have found bugs somewhere: keep them likely.
NASTY_STRINGS = (
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "١٢٣", "²³", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z", "NaN", "-1", "1e400", "9223372036854775808",
    "not a url", "https://", "http://[::1", "javascript:alert(1)", "mailto:a@b", "https://example.com/\x00",
    "trial:", "trial:qualify", "trial:nonsense", "tr_", "tr_0000000000000000", "{", "{}", "[]", '{"trial_id": 1}',
    '{"trial_id": "tr_0000000000000000", "response_url": "not a url"}', "<script>", "x" * 5000, "@", "a@", "@b",
    "bob@", "bob@acme-corp.com", "bob@-.com", "bob@xn--.com", "bob@" + "a" * 300 + ".com", "%ff", "\u202e",
)
BIG_INTS = (2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -1)


def text() -> st.SearchStrategy[str]:
    # Surrogates included: JSON can carry them escaped (\\ud800), and they cannot be encoded.
    anything = st.text(st.characters(exclude_categories=()), max_size=40)
    return st.one_of(st.sampled_from(NASTY_STRINGS), anything)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(BIG_INTS),
    st.floats(allow_nan=True, allow_infinity=True), text())

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(text(), children, max_size=3)),
    max_leaves=6)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: dict keys and list positions, depth first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(paths(item, prefix + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(paths(item, prefix + (index,)))
    return found


def _parent(document: Any, path: tuple) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


def apply(document: Any, path: tuple, how: str, value: Any) -> Any:
    """``document`` changed at ``path``: replaced by ``value``, deleted, or given an extra key."""
    if not path:
        return value if how == "replace" else document
    parent = _parent(document, path)
    key = path[-1]
    if how == "replace":
        parent[key] = value
    elif how == "delete":
        del parent[key]
    elif how == "extra" and isinstance(parent, dict):
        parent[f"unexpected_{len(parent)}"] = value
    return document


@st.composite
def mutated(draw, base: Any, max_changes: int = 3, keep_root: bool = False) -> Any:
    """``base`` (deep-copied) with one to ``max_changes`` places broken."""
    document = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(min_value=1, max_value=max_changes))):
        places = paths(document)
        if keep_root and len(places) > 1:
            places = places[1:]
        path = draw(st.sampled_from(places))
        how = draw(st.sampled_from(("replace", "replace", "delete", "extra")))
        try:
            document = apply(document, path, how, draw(json_values))
        except (KeyError, IndexError, TypeError):  # an earlier change removed or retyped this place
            continue
    return document


def dumps(document: Any) -> bytes:
    """JSON as a sender would write it (NaN and Infinity too: Python's json reads them)."""
    return json.dumps(document, ensure_ascii=True).encode()


raw_bytes = st.one_of(st.binary(max_size=200), st.sampled_from((b"", b"\xff\xfe", b"null", b"[]", b"{", b"NaN",
                                                                  b'"text"', b"payload=", b"payload=%ff", b"a=b&c")))


def quoted(value: str) -> str:
    return quote_from_bytes(value.encode("utf-8", "surrogatepass"), safe="")


def form_body(fields: list[tuple[str, str]]) -> bytes:
    """A form body as Slack encodes it; strings that are not valid UTF-8 stay percent-escaped bytes."""
    return "&".join(f"{quoted(k)}={quoted(v)}" for k, v in fields).encode()


def header_value(value: str) -> bytes:
    """What can travel in an HTTP header: printable Latin-1 (a server refuses CR, LF and NUL)."""
    encoded = value.encode("utf-8", "surrogatepass").decode("latin-1")
    return "".join(c for c in encoded if c == "\t" or " " <= c <= "~" or c >= "\xa0").encode("latin-1")
