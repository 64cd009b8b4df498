"""Every message the lifecycle's steps can send fits its provider, with the longest data people
can give us: a 253-character domain and host, 200-character names and companies (full of ``&``,
which Slack's escaping makes five times longer), a 254-character email, a 500-character note.

Slack payloads are checked with slack_sdk's Block Kit models (``tests.support.block_kit``);
GitHub titles and bodies against GitHub's 256 and 65,536 characters."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest

from tests.support.block_kit import assert_intact_mrkdwn, assert_valid_message
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import CASE_MANUAL, CASE_NAMED, Event, PlainHistoryEntry, PlainTrial
from trialflow.inert import code_span
from trialflow.services import policies
from trialflow.services import slack_blocks as sb
from trialflow.services.fit import ELLIPSIS, GITHUB_BODY, GITHUB_TITLE, SLACK_CHANNEL_TOPIC, Data, clip, fit
from trialflow.services.messages import EFFECT_MARKER_ROOM
from trialflow.settings import Settings

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
# The longest legal domain: 253 characters in labels of at most 63.
LONGEST_DOMAIN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"])
assert len(LONGEST_DOMAIN) == 253
# An email is at most 254 characters, so its domain at most 252.
EMAIL_DOMAIN = ".".join(["e" * 63, "f" * 63, "g" * 63, "h" * 56, "com"])
LONGEST_EMAIL = "b@" + EMAIL_DOMAIN
assert len(LONGEST_EMAIL) == 254
NAME = ("Bob & Alice " * 20)[:200]           # 200 characters, 34 of them "&"
COMPANY = ("Smith & Sons & Daughters " * 10)[:200]
NOTE = ("Too small & self-funded: <maybe later> " * 15)[:500]
ACTOR_LOGIN = "x" * 39                          # GitHub's longest login


@dataclass(frozen=True)
class Someone:
    email: str
    name: str
    slack_user_id: str | None
    role: str = ""
    away_until: date | None = None
    backup: str | None = None

    def is_away(self, today: date) -> bool:
        return self.away_until is not None and today <= self.away_until


class People:
    """The directory port: the AE is in staff but not in Slack (named by a 200-character name); the CE
    is away, covered by that AE, and twenty inbound SDRs and admins with long names are named in reminders."""

    def __init__(self) -> None:
        self.staff = {"sdr@example.com": Someone("sdr@example.com", "Ivy", "U0SDR0001"),
                      "ce@example.com": Someone("ce@example.com", NAME, "U0CE00001", "ce", date(2026, 12, 8),
                                                LONGEST_EMAIL),
                      LONGEST_EMAIL: Someone(LONGEST_EMAIL, NAME, None)}
        for i in range(20):
            for role in ("inbound_sdr", "admin"):
                email = f"{role}{i}@example.com"
                self.staff[email] = Someone(email, NAME, None, role)

    def in_role(self, role: str) -> list[Someone]:
        return [p for p in self.staff.values() if p.role == role]

    def acting_for(self, email: str | None, today: date, fallback: str | None = None) -> str | None:
        person = self.by_email(email)
        if person is not None and person.is_away(today):
            return person.backup or fallback
        return email or fallback

    def by_email(self, email: str | None) -> Someone | None:
        return self.staff.get(email or "")

    def mention(self, email: str | None) -> str:
        person = self.by_email(email)
        if person is None:
            return sb.escape(email) if email else "_unassigned_"
        return f"<@{person.slack_user_id}>" if person.slack_user_id else sb.escape(person.name)


def longest_trial(case: str) -> PlainTrial:
    trial = PlainTrial("tr_0123456789abcdef", LONGEST_EMAIL, LONGEST_DOMAIN, NOW, name=NAME, company=COMPANY,
                       source="s" * 100)
    trial.case = case
    trial.account_name = COMPANY if case == CASE_NAMED else None
    trial.instance_host = LONGEST_DOMAIN
    trial.sdr, trial.ae, trial.ce = "sdr@example.com", LONGEST_EMAIL, "ce@example.com"
    trial.opportunity_id = "0" * 64
    trial.started_at = NOW
    return trial


def detail_for(trigger: str) -> dict:
    return {
        lc.DISQUALIFY: {"reason": f"Other (see note): {NOTE}"},
        lc.TERMINATE: {"reason": NOTE},
        lc.EXTEND: {"days": 90, "until": (NOW + timedelta(days=120)).isoformat(), "license_change": True,
                    "reason": NOTE[:300]},
        lc.REQUEST_DOMAIN_CHANGE: {"new_host": LONGEST_DOMAIN},
        lc.CONVERT_TO_OPPORTUNITY: {"opportunity_id": "0" * 64},
        lc.MARK_INSTANCE_READY: {"host": LONGEST_DOMAIN},
    }.get(trigger, {})


def every_step():
    """(case, source state, trigger) for every step of the lifecycle table, from every state it leaves."""
    for step in lc.TABLE:
        for source in step.source:
            for case in (CASE_NAMED, CASE_MANUAL):
                yield pytest.param(case, source, step.trigger, id=f"{step.trigger}-from-{source}-{case}")


def effects_of(case: str, source: str, trigger: str, actor: str):
    trial = longest_trial(case)
    step = lc.STEPS[trigger]
    trial.history = [PlainHistoryEntry(source, source, "recorded", "system", NOW)] * 7  # keys carry the history position
    trial.events.append(Event(trial, trigger, source, step.dest or source, actor, NOW, detail_for(trigger)))
    return policies.decide(trial, policies.Context(People(), Settings(_env_file=None))).effects


@pytest.mark.parametrize("case, source, trigger", list(every_step()))
@pytest.mark.parametrize("actor", ["U0SDR0001", ACTOR_LOGIN, LONGEST_EMAIL])
def test_every_message_of_every_step_fits_slack_and_github_with_the_longest_data(case, source, trigger, actor):
    for effect in effects_of(case, source, trigger, actor):
        payload = effect.payload
        if effect.kind in ("slack.message", "slack.update"):
            assert_valid_message(payload)
        elif effect.kind == "slack.channel":
            assert len(payload["name"]) <= 80
            assert len(payload["topic"]) <= SLACK_CHANNEL_TOPIC
        elif effect.kind == "github.issue":
            assert 0 < len(payload["title"]) <= GITHUB_TITLE
            assert len(payload["body"]) <= GITHUB_BODY - EFFECT_MARKER_ROOM
            assert payload["body"].rstrip().endswith("-->")  # trialflow's own marker survives whole
        elif effect.kind == "github.comment":
            assert len(payload["body"]) <= GITHUB_BODY - EFFECT_MARKER_ROOM


def test_a_disqualify_with_a_500_character_note_and_long_names_fits_and_still_says_who_did_what_and_why():
    # Names made of "&" (each escaped to "&amp;") and a 500-character note made a 3,099-character section.
    trial = longest_trial(CASE_MANUAL)
    trial.name, trial.company = "&" * 200, "&" * 200
    trial.events.append(Event(trial, lc.DISQUALIFY, lc.TRIAGE, lc.DISQUALIFIED, "U0SDR0001", NOW,
                              {"reason": f"Other (see note): {NOTE}"}))
    [update, _email, _home] = policies.decide(trial, policies.Context(People(), Settings(_env_file=None))).effects
    text = update.payload["text"]
    assert len(text) <= 3000
    assert_valid_message(update.payload)
    # The longest data (name and company, 1,000 characters each once escaped) gave way; the note,
    # the email link and our words did not.
    assert text.startswith(":no_entry: *&amp;&amp;") and f"&amp;{ELLIPSIS}* (&amp;&amp;" in text
    assert f"&amp;{ELLIPSIS}) <mailto:" in text
    assert f" disqualified by <@U0SDR0001>: Other (see note): {sb.escape(NOTE)}. Self-hosting email sent." in text
    assert f"<mailto:{LONGEST_EMAIL}|{LONGEST_EMAIL}>" in text


def test_an_instance_request_for_a_249_character_domain_gets_a_title_github_accepts():
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 54, "io"])
    assert len(domain) == 249
    trial = longest_trial(CASE_MANUAL)
    trial.domain = domain
    trial.events.append(Event(trial, lc.QUALIFY, lc.TRIAGE, lc.INSTANCE_REQUESTED, "U0SDR0001", NOW, {}))
    effects = policies.decide(trial, policies.Context(People(), Settings(_env_file=None))).effects
    [issue] = [e for e in effects if e.kind == "github.issue"]
    title = issue.payload["title"]
    assert len(title) <= 256  # was 279: GitHub's 422, parked, and the lead never got an instance
    assert title.startswith("Cloud trial instance request: aaaa")
    assert ELLIPSIS in title and title.endswith(domain[-100:])  # cut in the middle: the domain's end still shows
    assert f"- Domain: {code_span(domain)}" in issue.payload["body"]  # the body has room for all of it (inert, as typed text is)


# --- the fitting itself ---------------------------------------------------------------------

def test_data_is_shortened_before_it_is_escaped_so_no_escape_sequence_is_cut():
    for limit in range(40, 90):
        text = fit(limit, "{a} said: {b}", sb.escape, a=Data("Tom & Jerry & co"), b=Data("<b> & " * 20))
        assert len(text) <= limit
        assert_intact_mrkdwn(text)


def test_our_words_mentions_and_links_are_never_cut_only_the_data():
    text = fit(80, "*{name}* by <@U0123ABC> <mailto:{mail}|{mail}>: {note}", sb.escape,
               name=Data("N" * 50), mail="a@b.io", note=Data("x" * 200))
    assert len(text) <= 80
    assert "by <@U0123ABC> <mailto:a@b.io|a@b.io>: " in text
    assert text.startswith("*N") and "…*" in text  # the bold name is shortened inside its markers


def test_the_longest_field_gives_way_first_and_short_ones_stay_whole():
    text = fit(60, "{short} / {long}", short=Data("Acme"), long=Data("y" * 500))
    assert text.startswith("Acme / yyy") and text.endswith(ELLIPSIS) and len(text) == 60


def test_a_host_is_cut_in_the_middle_so_its_domain_still_shows():
    text = fit(30, "host {h}", h=Data("very-long-subdomain-name.acme-corp.com", keep_end=True))
    assert len(text) <= 30 and text.endswith("corp.com") and ELLIPSIS in text


def test_clip_never_cuts_inside_a_mention_or_an_escape():
    text = "x" * 10 + "<@U0123456789>" + "&amp;" * 3
    for limit in range(5, len(text)):
        clipped = clip(text, limit)
        assert len(clipped) <= limit
        assert_intact_mrkdwn(clipped)
