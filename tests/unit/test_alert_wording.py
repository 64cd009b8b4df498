"""Alerts ask people only for what trialflow has not done itself, and say why a lead is in triage."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support.block_kit import assert_valid_message
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import CASE_MANUAL, CASE_NAMED, CASE_UNNAMED, SYSTEM, PlainTrial
from trialflow.services import policies
from trialflow.settings import Settings

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class People:
    slack = {"nina.named@example.com": "U0SDR0002", "alice.ae@example.com": "U0AE00001",
             "carol.ce@example.com": "U0CE00001"}

    def by_email(self, email):
        return None

    def acting_for(self, email, today, fallback=None):
        return email or fallback       # nobody here is away

    def mention(self, email):
        return f"<@{self.slack[email]}>" if email in self.slack else (email or "_unassigned_")


def alert_of(trial: PlainTrial) -> dict:
    decided = policies.decide(trial, policies.Context(People(), Settings(_env_file=None)))
    [alert] = [e.payload for e in decided.effects if e.kind == "slack.message" and e.payload.get("ref", "").startswith("alert:")]
    assert_valid_message(alert)
    return alert


def text_of(message: dict) -> str:
    return "\n".join(b["text"]["text"] if b["type"] == "section" else b["elements"][0].get("text", "")
                     for b in message["blocks"] if b["type"] in ("section", "context"))


def claimed(case: str) -> PlainTrial:
    trial = PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", NOW, name="Bob")
    trial.case, trial.account_name, trial.instance_host = case, "Acme Corp", "pool-a.sourcegraph.com"
    trial.sdr = "nina.named@example.com" if case == CASE_NAMED else None
    trial.ae, trial.ce = "alice.ae@example.com", "carol.ce@example.com"
    trial.fire(lc.CLAIM_POOL_INSTANCE, actor=SYSTEM, at=NOW)
    return trial


def test_a_named_account_alert_does_not_ask_the_inbound_sdr_to_route_what_trialflow_routed():
    text = text_of(alert_of(claimed(CASE_NAMED)))
    assert "routes to" not in text and "inbound SDR" not in text
    assert "Next: named SDR <@U0SDR0002> converts to Opp" in text
    assert "trialflow routed the lead to them and is inviting the AE and CE to #cloud-trial-acme-corp" in text


def test_a_pre_qualified_account_alert_says_the_round_robin_is_done():
    text = text_of(alert_of(claimed(CASE_UNNAMED)))
    assert "Next: inbound SDR converts to Opp" in text
    assert "trialflow assigned the AE and CE by round robin" in text


@pytest.mark.parametrize("email, account, reason", [
    ("bob@gmail.com", None, "public mailbox (gmail.com)"),
    ("bob@initech.com", "Initech", "known account Initech, not pre-qualified"),
    ("bob@unheard-of.example", None, "unknown domain: unheard-of.example is in no account"),
])
def test_the_triage_alert_says_why_the_lead_is_there(email, account, reason):
    trial = PlainTrial("tr_0123456789abcdef", email, email.split("@")[1], NOW, name="Bob")
    trial.case, trial.account_name = CASE_MANUAL, account
    trial.fire(lc.SEND_TO_TRIAGE, actor=SYSTEM, at=NOW)
    text = text_of(alert_of(trial))
    assert f"*Why triage:* {reason}" in text
