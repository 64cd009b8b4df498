"""What people type stays text: a lead whose name and company are Markdown that would mention,
link and embed is qualified; the cloud team's issue (at the GitHub server, rendered as Markdown)
and the emails (at the SMTP server) show the words and act on none of them."""
from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from tests.e2e.test_journeys import journey, settings  # noqa: F401  (fixtures; the servers are in conftest.py)

HOSTILE = "@octocat ![x](https://evil.example/p.png) [click](https://evil.example/x)"
_CODE = re.compile(r"<code>.*?</code>", re.DOTALL)


def acting_parts(markdown: str) -> str:
    """The issue body as GitHub would render it, less what is inside code spans (shown as typed)."""
    return _CODE.sub("", MarkdownIt("commonmark").render(markdown))


def test_a_qualified_lead_named_in_markdown_mentions_links_and_embeds_nothing(journey, github, smtp):  # noqa: F811
    journey.sign_up("sam@stark-industries.com", name=HOSTILE, company=f"Stark {HOSTILE}", source=HOSTILE)
    journey.press("qualify", "ivy.inbound@example.com")
    journey.submit("ivy.inbound@example.com", {"opportunity_id": "0065g00000XyZ12"})
    issue = journey.request_issue()
    html = MarkdownIt("commonmark").render(issue["body"])
    assert "<code>@octocat ![x](https://evil.example/p.png) [click](https://evil.example/x)</code>" in html
    rest = acting_parts(issue["body"])
    for acting in ("<img", "<a ", "@octocat", "evil.example", "https://"):
        assert acting not in rest, acting
    assert "@octocat" not in issue["title"] and "evil" not in issue["title"]

    [welcome] = journey.emails_to("sam@stark-industries.com")
    assert welcome.get_content_type() == "text/plain" and not welcome.is_multipart()
    body = welcome.get_content()
    assert "Hi @octocat ![x](https[:]//evil[.]example/p[.]png) [click](https[:]//evil[.]example/x)," in body
    for linkable in ("https://", "evil.example", "p.png"):
        assert linkable not in body


def test_markdown_that_tries_to_close_its_code_span_stays_inside_it(journey, github):  # noqa: F811
    journey.sign_up("sam@stark-industries.com", name="x` @octocat `` [a](https://evil.example) ```")
    journey.press("qualify", "ivy.inbound@example.com")
    journey.submit("ivy.inbound@example.com", {"opportunity_id": "0065g00000XyZ12"})
    rest = acting_parts(journey.request_issue()["body"])
    assert "@octocat" not in rest and "evil.example" not in rest


@pytest.mark.parametrize("sneaky", ["Bob\u202eevil", "Bob\u2066x\u2069", "Bob\u2028Second line", "Bob\u2029P2"])
def test_direction_changing_and_line_separator_characters_are_refused(client, sneaky):
    answer = client.post("/api/signups", json={"email": "bob@tiny-startup.io", "name": sneaky})
    assert answer.status_code == 422 and answer.json()["field"] == "name"
    assert "direction-changing" in answer.json()["error"]
    assert client.get("/api/trials").json()["count"] == 0
