"""The seed's journeys with Salesforce as the system of record: the named account read from
Salesforce (2.1), and a qualified lead (3.2) to converted and to terminated, with the Opportunity
looked at in the (fake) Salesforce after each step. simple-salesforce talks HTTPS to it."""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.config import write_config
from tests.support.journey import Journey
from tests.support.signed import issue_comment, post_webhook, signing_settings
from trialflow import cli
from trialflow.crm.salesforce import SalesforceCrm
from trialflow.db import tables
from trialflow.delivery.crm import CrmTransport
from trialflow.services.opportunities import OpportunityRecorder
from trialflow.settings import get_settings

# accounts.csv knows nothing of acme-corp.com: only Salesforce does.
ACCOUNTS = """domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce
globex.com,Globex,true,false,,,
"""
QUALIFIED, STARTED, WON, LOST = "Qualification", "Value Proposition", "Closed Won", "Closed Lost"


@pytest.fixture
def config_dir(tmp_path):
    return write_config(tmp_path / "config", accounts=ACCOUNTS)


@pytest.fixture
def settings(db_url, config_dir, slack, github, smtp, fake_salesforce, salesforce_key):
    return make_settings(db_url, config_dir, **signing_settings(), **slack.settings(), **github.settings(),
                         **smtp.settings(), **fake_salesforce.settings(salesforce_key))


@pytest.fixture
def journey(client, runtime, clock, slack, github, smtp, fake_salesforce):
    j = Journey(client, runtime, clock, slack, github, smtp)
    j.deliverer.transports["crm"] = CrmTransport(SalesforceCrm(runtime.settings), OpportunityRecorder(runtime))
    fake_salesforce.add_user("alice.ae@example.com")
    fake_salesforce.add_user("andy.ae@example.com")
    return j


def stages(fake, trial_id: str) -> list[str]:
    return [change["StageName"] for change in fake.changes.get(trial_id, [])]


def config_load_from_salesforce(settings, monkeypatch, capsys) -> str:
    """``trialflow config load --from salesforce``, as an operator runs it (settings from the environment)."""
    for name in ("database_url", "config_dir", "salesforce_login_url", "salesforce_client_id", "salesforce_username",
                 "salesforce_private_key_file"):
        monkeypatch.setenv(f"TRIALFLOW_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()
    try:
        assert cli.main(["config", "load", "--from", "salesforce"]) == 0
    finally:
        get_settings.cache_clear()
    return capsys.readouterr().out


def test_2_1_a_named_account_only_salesforce_knows_routes_as_2_1_and_converts(journey, settings, slack,
                                                                                 fake_salesforce, monkeypatch, capsys):
    acme = fake_salesforce.add_account("Acme Corp", "https://www.acme-corp.com", named=True,
                                       owner="alice.ae@example.com", named_sdr="nina.named@example.com",
                                       ce="carol.ce@example.com")
    fake_salesforce.add_account("Globex", "globex.com")
    fake_salesforce.add_account("Hooli", "hooli.example", prequalified=False)

    # Globex is in both; from Salesforce it also gets its Salesforce id. Hooli is not pre-qualified.
    assert "accounts: 1 added, 0 removed, 1 changed" in config_load_from_salesforce(settings, monkeypatch, capsys)

    assert journey.sign_up("bob@acme-corp.com", name="Bob")["case"] == "prequalified_named"
    trial = journey.trial()
    assert trial["state"] == "active"
    assert trial["assignees"] == {"sdr": "nina.named@example.com", "ae": "alice.ae@example.com",
                                  "ce": "carol.ce@example.com"}
    assert fake_salesforce.opportunity(journey.trial_id) is None

    journey.press("convert_to_opportunity", "nina.named@example.com")
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert (opp["StageName"], opp["AccountId"], opp["OwnerId"], opp["LeadSource"]) == (
        STARTED, acme, fake_salesforce.users["alice.ae@example.com"], "Cloud Trial")
    assert opp["Name"] == "Acme Corp - Cloud trial" and opp["Trial_Instance_URL__c"] == trial["instance_url"]
    assert journey.trial()["opportunity_id"] == opp["Id"]
    link = f"<{fake_salesforce.url}/lightning/r/Opportunity/{opp['Id']}/view|{opp['Id']}>"
    assert any(link in text for text in journey.channel("cloud-trial-acme-corp"))

    assert "already" in journey.press("convert_to_opportunity", "nina.named@example.com").lower()
    journey.press("convert", "carol.ce@example.com")
    assert journey.state == "converted"
    assert len(fake_salesforce.opportunities) == 1
    assert stages(fake_salesforce, journey.trial_id) == [STARTED, WON]
    assert fake_salesforce.opportunity(journey.trial_id)["CloseDate"] == journey.clock.now().date().isoformat()


def qualified_and_handed_off(journey, fake_salesforce) -> dict:
    journey.sign_up("sam@stark-industries.com", name="Sam", company="Stark Industries")
    journey.press("qualify", "ivy.inbound@example.com")
    # Nobody types the Opportunity's id: Salesforce gives it.
    assert [b.get("block_id") for b in journey.slack.views[-1]["blocks"] if b["type"] == "input"] == []
    journey.submit("ivy.inbound@example.com", {})
    owners = journey.trial()["assignees"]
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert (opp["StageName"], opp["OwnerId"]) == (QUALIFIED, fake_salesforce.users[owners["ae"]])
    assert "AccountId" not in opp  # not an account Salesforce gave trialflow
    assert journey.trial()["opportunity_id"] == opp["Id"]

    payload = issue_comment(journey.request_issue()["number"], journey.request_issue()["body"],
                            "/ready https://stark.sourcegraph.com", "cody-cloud")
    assert post_webhook(journey.client, "issue_comment", payload).json()["status"] == "instance_ready"
    journey.deliver()
    assert stages(fake_salesforce, journey.trial_id) == [QUALIFIED]  # ready is not the trial's start

    journey.press("hand_off", owners["ce"])
    journey.start = journey.clock.now()
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert (opp["StageName"], opp["Trial_Instance_URL__c"]) == (STARTED, "https://stark.sourcegraph.com")
    assert opp["Trial_End_Date__c"] == date.fromordinal(journey.start.date().toordinal() + 15).isoformat()
    return owners


def test_3_2_qualified_started_extended_graded_and_converted(journey, runtime, fake_salesforce):
    owners = qualified_and_handed_off(journey, fake_salesforce)
    journey.day(5)
    journey.report_use()
    journey.deliver()
    opp = fake_salesforce.opportunity(journey.trial_id)
    with runtime.session_factory() as s:
        grade = s.scalar(select(tables.trials.c.pql_grade).where(tables.trials.c.id == journey.trial_id))
    assert opp["Trial_Activated__c"] is True and grade and opp["Trial_PQL_Grade__c"] == grade

    journey.day(15)
    assert journey.state == "extended"
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert opp["Trial_End_Date__c"] == date.fromordinal(journey.start.date().toordinal() + 30).isoformat()
    assert opp["StageName"] == STARTED

    journey.day(30)
    journey.press("convert", owners["ce"])
    assert journey.state == "converted"
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert (opp["StageName"], opp["CloseDate"]) == (WON, journey.clock.now().date().isoformat())
    changes = stages(fake_salesforce, journey.trial_id)
    assert changes[0] == QUALIFIED and changes[-1] == WON and set(changes[1:-1]) == {STARTED}
    assert len(fake_salesforce.opportunities) == 1


def test_3_2_qualified_then_terminated_for_no_use_ends_lost_with_the_reason(journey, runtime, fake_salesforce):
    qualified_and_handed_off(journey, fake_salesforce)
    journey.report_no_use()
    journey.day(12)
    journey.day(15)
    assert journey.state == "terminated"
    opp = fake_salesforce.opportunity(journey.trial_id)
    assert opp["StageName"] == LOST and opp["Loss_Reason__c"]
    # qualified, started, graded (the instance answered: nobody uses it), lost
    assert stages(fake_salesforce, journey.trial_id) == [QUALIFIED, STARTED, STARTED, LOST]
    graded = fake_salesforce.changes[journey.trial_id][2]
    assert graded["Trial_PQL_Grade__c"] and graded["Trial_Activated__c"] is False
    with runtime.session_factory() as s:
        kinds = s.scalars(select(tables.outbox.c.status).where(tables.outbox.c.kind == "crm.opportunity")).all()
    assert kinds == ["delivered"] * 4
