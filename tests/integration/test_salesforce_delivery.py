"""``crm.opportunity`` effects delivered to the (fake) Salesforce by the Deliverer: exactly one
Opportunity whatever happens to the worker or the answer, updates in order, and failures parked and
announced like every other effect's."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.outbox import DiesAfterTheCall, WorkerKilled
from trialflow.crm.salesforce import REQUEST_LIMIT_BACKOFF, SalesforceCrm
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.crm import CrmTransport
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.domain import lifecycle as lc
from trialflow.scoring import DEFAULT_PQL_CSV
from trialflow.services.activity import ActivityReport, record_activity
from trialflow.services.directory import Directory
from trialflow.services.opportunities import OpportunityRecorder
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.trials import Command, run

STARTED, WON = "Value Proposition", "Closed Won"


@pytest.fixture
def settings(db_url, config_dir, fake_salesforce, salesforce_key):
    return make_settings(db_url, config_dir, **fake_salesforce.settings(salesforce_key))


def _transports(runtime, crm=None) -> dict:
    crm = crm or CrmTransport(SalesforceCrm(runtime.settings), OpportunityRecorder(runtime))
    return {"crm": crm, "slack": DryRunTransport("slack"), "github": DryRunTransport("github"),
            "email": DryRunTransport("email"), "instance": DryRunTransport("instance")}


def _act(runtime, trial_id: str, trigger: str, slack_id: str) -> None:
    with runtime.session_factory() as s:
        person = Directory(s).by_slack_id(slack_id)
    run(runtime, Command(trial_id, trigger, slack_id, person))


@pytest.fixture
def converted_to_opp(runtime, fake_salesforce) -> str:
    """bob@acme-corp.com (2.1), "Converted to Opp" pressed by the named SDR; nothing delivered yet."""
    fake_salesforce.add_user("alice.ae@example.com")
    trial_id = submit_signup(runtime.uow, runtime.settings, runtime.clock, SignupInput("bob@acme-corp.com")).trial_id
    Deliverer(runtime, _transports(runtime)).drain_all()
    _act(runtime, trial_id, lc.CONVERT_TO_OPPORTUNITY, "U0SDR0002")
    return trial_id


def _crm_effects(runtime) -> list:
    with runtime.session_factory() as s:
        return s.execute(select(tables.outbox).where(tables.outbox.c.kind == "crm.opportunity")
                         .order_by(tables.outbox.c.id)).all()


def _trial(runtime, trial_id: str):
    with runtime.session_factory() as s:
        return s.execute(select(tables.trials).where(tables.trials.c.id == trial_id)).one()


def _links(runtime, trial_id: str) -> list[str]:
    with runtime.session_factory() as s:
        return list(s.scalars(select(tables.outbox.c.key).where(tables.outbox.c.key.like(f"{trial_id}:opportunity:%"))))


def test_a_retry_after_an_answer_lost_on_the_way_back_updates_the_one_opportunity(runtime, clock, fake_salesforce,
                                                                                 converted_to_opp):
    fake_salesforce.lose_next_answer()
    deliverer = Deliverer(runtime, _transports(runtime))
    assert deliverer.drain().get("retry") == 1
    assert fake_salesforce.opportunity(converted_to_opp) is not None  # made, but trialflow never heard
    assert _trial(runtime, converted_to_opp).opportunity_id is None

    clock.advance(seconds=60)
    deliverer.drain_all()
    [effect] = _crm_effects(runtime)
    assert effect.status == "delivered" and effect.result["created"] is False
    assert len(fake_salesforce.opportunities) == 1 and len(fake_salesforce.changes[converted_to_opp]) == 2
    assert _trial(runtime, converted_to_opp).opportunity_id == effect.result["id"]
    assert len(_links(runtime, converted_to_opp)) == 1


def test_a_worker_killed_after_the_call_leaves_one_opportunity_and_one_link(runtime, clock, fake_salesforce,
                                                                           converted_to_opp):
    crm = CrmTransport(SalesforceCrm(runtime.settings), OpportunityRecorder(runtime))
    with pytest.raises(WorkerKilled):
        Deliverer(runtime, _transports(runtime, DiesAfterTheCall(crm))).drain()
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)  # its lease runs out
    Deliverer(runtime, _transports(runtime)).drain_all()

    [effect] = _crm_effects(runtime)
    assert (effect.status, effect.attempts) == ("delivered", 2)
    assert len(fake_salesforce.opportunities) == 1
    assert len(_links(runtime, converted_to_opp)) == 1


def test_a_later_update_waits_for_an_earlier_one_that_is_retrying(runtime, clock, fake_salesforce, converted_to_opp):
    _act(runtime, converted_to_opp, lc.CONVERT, "U0CE00001")
    fake_salesforce.lose_next_answer()  # the first upsert happens, its answer is lost: it is tried again
    deliverer = Deliverer(runtime, _transports(runtime))
    deliverer.drain()
    first, second = _crm_effects(runtime)
    assert (first.status, second.status) == ("pending", "pending")
    assert "waits for effect" in second.last_error
    assert fake_salesforce.changes[converted_to_opp] and \
        [c["StageName"] for c in fake_salesforce.changes[converted_to_opp]] == [STARTED]

    for _ in range(5):
        clock.advance(seconds=30)
        deliverer.drain_all()
    assert [c["StageName"] for c in fake_salesforce.changes[converted_to_opp]] == [STARTED, STARTED, WON]
    assert fake_salesforce.opportunity(converted_to_opp)["StageName"] == WON


def test_the_request_limit_backs_off_through_the_outbox_schedule(runtime, clock, fake_salesforce, converted_to_opp):
    fake_salesforce.fail_next("error.request_limit.403.json", method="PATCH")
    deliverer = Deliverer(runtime, _transports(runtime))
    assert deliverer.drain().get("retry") == 1
    [effect] = _crm_effects(runtime)
    waited = (effect.next_attempt_at - clock.now()).total_seconds()
    assert effect.status == "pending" and effect.attempts == 0  # waiting is not failing
    assert REQUEST_LIMIT_BACKOFF <= waited <= REQUEST_LIMIT_BACKOFF + 1
    clock.advance(seconds=REQUEST_LIMIT_BACKOFF + 1)
    deliverer.drain_all()
    assert _crm_effects(runtime)[0].status == "delivered"


def test_a_duplicate_value_is_parked_and_announced_and_holds_the_later_updates(runtime, clock, fake_salesforce,
                                                                                converted_to_opp):
    _act(runtime, converted_to_opp, lc.CONVERT, "U0CE00001")
    fake_salesforce.fail_next("error.duplicate_value.400.json", method="PATCH")
    Deliverer(runtime, _transports(runtime)).drain_all()
    first, second = _crm_effects(runtime)
    assert first.status == "failed" and "DUPLICATE_VALUE" in first.last_error
    assert second.status == "failed" and f"outbox retry {first.id}" in second.last_error
    with runtime.session_factory() as s:
        notices = s.execute(select(tables.outbox.c.payload).where(tables.outbox.c.key.like("delivery-failed:%"))).all()
    assert len(notices) == 2 and "crm.opportunity" in notices[0].payload["text"]
    assert fake_salesforce.opportunities == {}


def test_without_salesforce_no_opportunity_effect_is_decided(db_url, config_dir, clock):
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    trial_id = submit_signup(rt.uow, rt.settings, rt.clock, SignupInput("bob@acme-corp.com")).trial_id
    with rt.session_factory() as s:
        person = Directory(s).by_slack_id("U0SDR0002")
    run(rt, Command(trial_id, lc.CONVERT_TO_OPPORTUNITY, "U0SDR0002", person, {"opportunity_id": "006TYPED"}))
    assert _crm_effects(rt) == []
    assert _trial(rt, trial_id).opportunity_id == "006TYPED"
    rt.close()



def test_converted_and_terminated_trials_end_in_the_configured_stages(db_url, config_dir, clock, fake_salesforce,
                                                                      salesforce_key):
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    stages = {"salesforce_stage_qualified": "Trial requested", "salesforce_stage_started": "Trial running",
              "salesforce_stage_won": "Won (cloud trial)", "salesforce_stage_lost": "Lost (cloud trial)"}
    rt = Runtime(make_settings(db_url, config_dir, **fake_salesforce.settings(salesforce_key), **stages), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    won, lost = (submit_signup(rt.uow, rt.settings, rt.clock, SignupInput(email)).trial_id
                 for email in ("bob@acme-corp.com", "gina@globex.com"))
    for trial_id in (won, lost):
        _act(rt, trial_id, lc.CONVERT_TO_OPPORTUNITY, "U0ADMIN01")
    Deliverer(rt, _transports(rt)).drain_all()
    assert {fake_salesforce.opportunity(t)["StageName"] for t in (won, lost)} == {"Trial running"}
    _act(rt, won, lc.CONVERT, "U0ADMIN01")
    with rt.session_factory() as s:
        person = Directory(s).by_slack_id("U0ADMIN01")
    run(rt, Command(lost, lc.TERMINATE, "U0ADMIN01", person, {"reason": "chose another vendor"}))
    Deliverer(rt, _transports(rt)).drain_all()
    assert fake_salesforce.opportunity(won)["StageName"] == "Won (cloud trial)"
    lost_opp = fake_salesforce.opportunity(lost)
    assert (lost_opp["StageName"], lost_opp["Loss_Reason__c"]) == ("Lost (cloud trial)", "chose another vendor")
    rt.close()


def test_a_new_ae_becomes_the_opportunity_s_owner(runtime, fake_salesforce, converted_to_opp):
    andy = fake_salesforce.add_user("andy.ae@example.com")
    with runtime.session_factory() as s:
        person = Directory(s).by_slack_id("U0SDR0002")
    run(runtime, Command(converted_to_opp, lc.REASSIGN, "U0SDR0002", person, {"ae": "andy.ae@example.com"}))
    Deliverer(runtime, _transports(runtime)).drain_all()
    owners = [c.get("OwnerId") for c in fake_salesforce.changes[converted_to_opp]]
    assert owners == [fake_salesforce.users["alice.ae@example.com"], andy]


def test_each_pql_grade_change_reaches_the_opportunity_once_even_back_to_an_earlier_grade(
        runtime, clock, config_dir, fake_salesforce, converted_to_opp):
    """pql.csv reworded between reports moves the grade B, then C, then back to B with no step in
    between: Salesforce hears each change, once and in order, and ends on the trial's grade."""
    deliver = Deliverer(runtime, _transports(runtime)).drain_all
    deliver()
    with runtime.session_factory() as s:
        host = s.scalar(select(tables.trials.c.instance_host).where(tables.trials.c.id == converted_to_opp))
    pql = config_dir / "pql.csv"
    strict = DEFAULT_PQL_CSV.replace("B,2,20,1,1", "B,2,1000,1,1")
    for text in (DEFAULT_PQL_CSV, strict, DEFAULT_PQL_CSV):
        pql.write_text(text)
        clock.advance(hours=1)
        record_activity(runtime, host, ActivityReport(clock.now(), 2, 20, 1, 1))
        record_activity(runtime, host, ActivityReport(clock.now(), 2, 20, 1, 1))   # the same report again
        deliver()
    grades = [c["Trial_PQL_Grade__c"] for c in fake_salesforce.changes[converted_to_opp] if "Trial_PQL_Grade__c" in c]
    assert grades == ["B", "C", "B"]    # 20 searches, then 40 (short of the stricter B), then 60
    assert _trial(runtime, converted_to_opp).pql_grade == "B"
    assert fake_salesforce.opportunity(converted_to_opp)["Trial_PQL_Grade__c"] == "B"
