"""Journeys on real trial instances: trialflow holds the automation account's token and talks to a
local server that answers like the GraphQL API of many Sourcegraph instances
(``tests/support/fake_sourcegraph.py``, through ``TRIALFLOW_INSTANCE_API_URL``'s ``{host}``).
Accounts are created there, the links people get are the ones it returned, usage is asked of it,
and the cloud team's closed issues come back as signed webhooks.

After every test: the reset links the instances handed out were emailed (the positive control),
and appear nowhere else: not in a log record, a database row, a Slack or GitHub request, nor an
answer of the API.
"""
from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from tests.conftest import make_settings
from tests.support.journey import SLACK, Journey, buttons_in
from tests.support.signed import (
    issue_closed,
    issue_comment,
    post_activity,
    post_command,
    post_webhook,
    signing_settings,
    slash_command,
)
from trialflow.db import tables
from trialflow.db.tables import metadata
from trialflow.services.policies import PROSPECT_STEPS
from trialflow.services.sweep import sweep


@pytest.fixture
def cap() -> int:
    return 100


@pytest.fixture
def settings(db_url, config_dir, slack, github, smtp, sourcegraph, cap):
    return make_settings(db_url, config_dir, instance_cap=cap, **signing_settings(), **slack.settings(),
                         **github.settings(), **smtp.settings(), **sourcegraph.settings())


@pytest.fixture
def journey(client, runtime, clock, slack, github, smtp, sourcegraph, caplog):
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    real_get = client.get

    def get(url, *args, **kwargs):  # every answer the staff API gives, for the grep below
        response = real_get(url, *args, **kwargs)
        answers.append(response.text)
        return response

    client.get = get
    journey = Journey(client, runtime, clock, slack, github, smtp, sourcegraph)
    yield journey
    client.get = real_get
    links = list(sourcegraph.reset_links)
    if not links:
        return
    emailed = "\n".join(m.get_content() for m in smtp.messages if not m.is_multipart())
    assert any(link in emailed for link in links), "the links the instances made reach people by email"
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    with runtime.engine.connect() as conn:
        stored = "\n".join(str(row) for table in metadata.sorted_tables for row in conn.execute(select(table)))
    slack_traffic = "\n".join(str(r.args) for r in slack.requests)
    github_traffic = "\n".join(str(r.body) for r in github.requests)
    for link in links:
        code = re.search(r"code=([^&]+)", link).group(1)
        for where, haystack in (("the logs", logged), ("the database", stored), ("Slack", slack_traffic),
                                ("GitHub", github_traffic), ("the API's answers", "\n".join(answers))):
            assert code not in haystack, f"a reset link's code is in {where}"


def posted(slack) -> list[str]:
    """Every message as trialflow posted it (before later updates replaced its buttons)."""
    return [str(r.args) for r in slack.requests if r.method == "chat.postMessage"]


def link_in(message) -> str:
    return re.search(r"https://\S+/password-reset\?\S+", message.get_content()).group(0)


# --- 2.1 and 2.2: a pool instance claimed, its account made there ------------------------------

def test_2_1_a_named_account_gets_an_instance_at_once_and_is_converted(journey, slack, github, sourcegraph):
    answer = journey.sign_up("bob@acme-corp.com", name="Bob", company="Acme Corp")
    assert answer["case"] == "prequalified_named" and answer["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    [reset] = journey.emails_to("bob@acme-corp.com")
    assert "ready" in reset["Subject"] and "https://pool-a.sourcegraph.com/password-reset?code=" in reset.get_content()
    [account] = sourcegraph.users("pool-a.sourcegraph.com")
    assert (account.username, account.email, account.site_admin) == ("bob", "bob@acme-corp.com", True)
    assert link_in(reset) == sourcegraph.reset_links[-1], "the link is the one the instance returned"
    assert any("named account *Acme Corp*" in t for t in journey.channel("cloud-trial-alerts"))
    assert slack.channel_named("cloud-trial-acme-corp").members >= {"U0CE00001", "U0AE00001"}

    assert "Converted to Opp" in journey.press("convert_to_opportunity", "nina.named@example.com")
    assert any("Opportunity" in t for t in journey.channel("cloud-trial-acme-corp"))
    journey.day(3)
    journey.report_use()
    journey.day(15)
    assert journey.state == "extended"
    assert any(i["title"].startswith("Trial extend: pool-a.sourcegraph.com") for i in github.issues)
    journey.day(30)
    assert "trial:convert" in buttons_in(slack, "cloud-trial-acme-corp", journey.trial_id)
    assert "Convert" in journey.press("convert", "carol.ce@example.com")
    assert journey.state == "converted"
    assert any("converted to paid" in t for t in journey.channel("cloud-trial-acme-corp"))
    assert any(":tada:" in u["text"] for u in slack.updates), "the alert shows the outcome"


def test_2_2_the_account_is_made_on_the_claimed_instance_and_its_link_emailed(journey, sourcegraph):
    journey.sign_up("gina@globex.com", name="Gina")
    [email] = journey.emails_to("gina@globex.com")
    assert link_in(email) in sourcegraph.reset_links
    assert [u.email for u in sourcegraph.users(journey.host)] == ["gina@globex.com"]
    assert sourcegraph.operations(journey.host)[:2] == ["CreateUser", "SetUserIsSiteAdmin"]


def test_a_taken_username_gets_the_next_one_and_an_account_that_exists_gets_a_fresh_link(journey, sourcegraph, runtime):
    sourcegraph.add_user("pool-a.sourcegraph.com", "bob", "bob@elsewhere.example")   # someone else's "bob"
    sourcegraph.add_user("pool-a.sourcegraph.com", "dana", "dana@acme-corp.com")     # dana already has one
    journey.sign_up("bob@acme-corp.com", name="Bob")
    created = sourcegraph.user("pool-a.sourcegraph.com", "bob@acme-corp.com")
    assert created is not None and created.username == "bob-acme-corp"
    [email] = journey.emails_to("bob@acme-corp.com")
    assert link_in(email) == sourcegraph.reset_links[-1]
    journey.sign_up("dana@acme-corp.com", name="Dana")                                # a colleague, already there
    [dana] = journey.emails_to("dana@acme-corp.com")
    assert link_in(dana) == sourcegraph.reset_links[-1]
    assert sourcegraph.operations("pool-a.sourcegraph.com")[-4:] == [
        "CreateUser", "UserByEmail", "RandomizeUserPassword", "SetUserIsSiteAdmin"]
    with runtime.session_factory() as s:
        results = s.scalars(select(tables.outbox.c.result).where(tables.outbox.c.kind == "instance.account")
                            .order_by(tables.outbox.c.id)).all()
    assert [(r["account"], r["username"], r["link"]) for r in results] == [
        ("created", "bob-acme-corp", "emailed"), ("existing", "dana", "emailed")]


def test_an_instance_with_password_reset_turned_off_gets_the_account_and_the_ce_hears_why_no_link(
        journey, sourcegraph, smtp):
    sourcegraph.disable_reset("pool-a.sourcegraph.com")
    journey.sign_up("bob@acme-corp.com", name="Bob")
    assert sourcegraph.user("pool-a.sourcegraph.com", "bob@acme-corp.com") is not None
    assert sourcegraph.reset_links == [] and journey.emails_to("bob@acme-corp.com") == []
    [told] = [t for t in journey.channel("cloud-trial-acme-corp") if "password reset turned off" in t]
    assert "<@U0CE00001>" in told and "`bob`" in told


# --- 3.2: the cloud team's instance, the account and the CE's introduction -----------------------

def qualified_and_ready(journey, slack, github, host: str = "stark.sourcegraph.com") -> dict:
    journey.sign_up("sam@stark-industries.com", name="Sam", company="Stark Industries")
    journey.press("qualify", "ivy.inbound@example.com")
    journey.submit("ivy.inbound@example.com", {"opportunity_id": "0065g00000XyZ12"})
    assert journey.state == "instance_requested"
    issue = journey.request_issue()
    assert "automation account" in issue["body"], "the cloud team is asked for the automation account"
    payload = issue_comment(issue["number"], issue["body"], f"/ready https://{host}", "cody-cloud")
    assert post_webhook(journey.client, "issue_comment", payload).json()["status"] == "instance_ready"
    journey.deliver()
    return journey.trial()["assignees"]


def test_3_2_ready_then_the_account_then_the_ces_introduction_with_the_link_and_the_hand_off_recorded(
        journey, slack, github, sourcegraph):
    owners = qualified_and_ready(journey, slack, github)
    assert journey.state == "active", "the hand-off is recorded without a click"
    history = journey.trial()["history"]
    assert [h["trigger"] for h in history][-2:] == ["mark_instance_ready", "hand_off"]
    assert history[-1]["actor"] == "system"
    welcome, intro = journey.emails_to("sam@stark-industries.com")
    assert "meet" in welcome["Subject"] and "password-reset" not in welcome.get_content()
    assert intro["From"] == owners["ce"] and owners["ae"] in intro["Cc"]
    assert link_in(intro) == sourcegraph.reset_links[-1] and link_in(intro).startswith("https://stark.sourcegraph.com/")
    account = sourcegraph.user("stark.sourcegraph.com", "sam@stark-industries.com")
    assert account is not None and account.site_admin
    ce = f"<@{SLACK[owners['ce']]}>"
    assert any("introduction email" in t and ce in t for t in journey.channel("cloud-trial-stark-industries-com"))


# --- errors: a refused token, a rate limit ------------------------------------------------------

def test_a_refused_token_parks_the_account_with_a_clear_alert_and_nothing_is_invented(journey, sourcegraph, runtime):
    sourcegraph.revoke("pool-a.sourcegraph.com")
    response = journey.client.post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})
    assert response.status_code == 201
    outcome = journey.deliverer.drain_all()
    assert outcome.get("failed") == 1, outcome
    journey.deliver()                                  # the alert about it
    [alert] = [t for t in journey.channel("cloud-trial-alerts") if "could not deliver `instance.account`" in t]
    assert "401 Invalid access token." in alert and "TRIALFLOW_INSTANCE_TOKEN" in alert
    assert sourcegraph.token not in alert
    assert journey.emails_to("bob@acme-corp.com") == [] and sourcegraph.reset_links == []


def test_a_rate_limited_instance_is_asked_again_after_its_retry_after(journey, sourcegraph, clock):
    sourcegraph.rate_limit("pool-a.sourcegraph.com", retry_after=30)
    response = journey.client.post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})
    assert response.status_code == 201
    first = journey.deliverer.drain_all()
    assert first.get("retry") == 1 and journey.emails_to("bob@acme-corp.com") == []
    clock.advance(seconds=10)
    assert journey.deliverer.drain_all().get("delivered", 0) == 0, "not before the instance said"
    clock.advance(seconds=25)
    journey.deliver()
    [email] = journey.emails_to("bob@acme-corp.com")
    assert link_in(email) == sourcegraph.reset_links[-1]
    assert sourcegraph.operations("pool-a.sourcegraph.com").count("CreateUser") == 2


# --- day 15: used, unused, no data -----------------------------------------------------------------

def test_day_15_asks_the_instance_first_and_its_use_extends_the_trial(journey, sourcegraph, github):
    journey.sign_up("gina@globex.com", name="Gina")
    host = journey.host
    sourcegraph.sign_in(host, "gina@globex.com")
    journey.day(12)                                   # polled: nobody has searched yet
    assert "warn_termination" in [h["trigger"] for h in journey.trial()["history"]]
    journey.clock.set(journey.start + timedelta(days=14))
    sourcegraph.use(host, "gina@globex.com", searches=12, code_intel=3)
    journey.day(15)
    assert journey.state == "extended"
    triggers = [h["trigger"] for h in journey.trial()["history"]]
    assert triggers[-1] == "extend" and triggers.index("warn_termination") < triggers.index("check_usage"), \
        "asked right before the decision"
    assert any(i["title"].startswith(f"Trial extend: {host}") for i in github.issues)


def test_day_15_terminates_an_instance_that_answers_and_shows_no_use(journey, sourcegraph, github, runtime):
    journey.sign_up("gina@globex.com", name="Gina")
    journey.day(12)
    journey.day(15)
    assert journey.state == "terminated"
    assert [h["trigger"] for h in journey.trial()["history"] if h["trigger"] not in PROSPECT_STEPS][-3:] == [
        "warn_termination", "check_usage", "terminate"]
    assert any(i["title"] == f"Terminate cloud trial instance {journey.host}" for i in github.issues)
    with runtime.session_factory() as s:
        polls = s.scalars(select(tables.instance_activity.c.active_users).where(
            tables.instance_activity.c.host == journey.host)).all()
    assert polls and set(polls) == {0}, "the automation account's own calls are not use"


def test_day_15_with_no_data_never_terminates_and_asks_the_ce(journey, sourcegraph, slack):
    journey.sign_up("gina@globex.com", name="Gina")
    host = journey.host
    sourcegraph.down(host)
    for day in (12, 15, 17, 30):
        journey.clock.set(journey.start + timedelta(days=day, minutes=5))
        for _ in range(2):
            sweep(journey.rt)
            journey.deliverer.drain_all()
            journey.clock.advance(minutes=16)
    assert journey.state == "active", "no data is never a reason to terminate"
    triggers = [h["trigger"] for h in journey.trial()["history"]]
    assert "terminate" not in triggers and triggers.count("ask_decision") >= 2
    ce = journey.trial()["assignees"]["ce"]
    asked = [m for m in slack.messages_in("cloud-trial-globex") if "no usage data" in m["text"]]
    assert asked and f"<@{SLACK[ce]}>" in asked[0]["text"]
    assert buttons_in(slack, "cloud-trial-globex", journey.trial_id)[-3:] == \
        ["trial:extend", "trial:keep", "trial:terminate"]


# --- the cloud team closes the loop -----------------------------------------------------------------

@pytest.mark.parametrize("cap", [1])
def test_a_termination_frees_capacity_only_once_the_cloud_team_closes_its_issue(journey, github, sourcegraph):
    journey.sign_up("gina@globex.com", name="Gina")
    gina = journey.trial_id
    journey.sign_up("sam@stark-industries.com", name="Sam", company="Stark Industries")
    journey.press("qualify", "ivy.inbound@example.com")
    journey.submit("ivy.inbound@example.com", {"opportunity_id": "006W"})
    sam = journey.trial_id
    assert journey.state == "waiting_for_capacity"
    journey.day(12)
    journey.day(15)
    assert journey.trial(gina)["state"] == "terminated"
    journey.day(16)
    assert journey.trial(sam)["state"] == "waiting_for_capacity", "terminating is not terminated"
    [issue] = [i for i in github.issues if i["title"].startswith("Terminate cloud trial instance")]
    refused = post_webhook(journey.client, "issues", issue_closed(issue["number"], issue["body"], "carol-ce"))
    assert refused.json()["status"] == "refused", refused.json()
    done = post_webhook(journey.client, "issues", issue_closed(issue["number"], issue["body"], "cody-cloud"))
    assert done.json()["status"] == "request_done"
    assert journey.trial(gina)["history"][-1]["trigger"] == "confirm_request_done"
    journey.day(17)
    assert journey.trial(sam)["state"] == "instance_requested"


def test_a_domain_change_completed_by_a_done_comment_moves_the_trial_to_its_new_host(
        journey, github, sourcegraph, clock):
    journey.sign_up("bob@acme-corp.com", name="Bob")
    old = journey.host
    answer = post_command(journey.client, slash_command("domain bob@acme-corp.com acme-corp", "U0CE00001"), clock.now())
    assert answer.status_code == 200
    journey.deliver()
    [issue] = [i for i in github.issues if i["title"].startswith("Domain name change")]
    new_host = "acme-corp.sourcegraph.com"
    assert post_activity(journey.client, new_host, {"active_users": 1}, clock.now()).status_code == 404
    done = post_webhook(journey.client, "issue_comment",
                        issue_comment(issue["number"], issue["body"], "/done", "cody-cloud"))
    assert done.json()["status"] == "request_done"
    journey.deliver()
    assert journey.trial()["instance_url"] == "https://acme-corp.sourcegraph.com"
    assert post_activity(journey.client, new_host, {"active_users": 1}, clock.now()).status_code == 201
    colleague = journey.client.post("/api/signups", json={"email": "alice@acme-corp.com"}).json()
    assert colleague["redirect_url"] == "https://acme-corp.sourcegraph.com/sign-in"
    journey.day(1)
    assert "InstanceActivity" in sourcegraph.operations("acme-corp.sourcegraph.com"), "usage is polled at the new host"
    with journey.rt.session_factory() as s:
        assert s.scalar(select(tables.instances.c.status).where(tables.instances.c.host == old)) == "moved"
        assert s.execute(text("SELECT instance_host FROM domain_claims WHERE domain = 'acme-corp.com'")).scalar() \
            == "acme-corp.sourcegraph.com"


# --- case 1: colleagues join; a squatter blocks nobody -----------------------------------------------

def test_case_1_a_colleague_on_a_trial_instance_gets_an_account_and_their_own_link(journey, sourcegraph, slack):
    journey.sign_up("bob@acme-corp.com", name="Bob")
    host = journey.host
    sourcegraph.sign_in(host, "bob@acme-corp.com")
    journey.day(1)                                     # polled: bob signed in, the claim is his
    bob = journey.trial_id
    assert journey.trial()["history"][-1]["trigger"] == "confirm_admin"
    journey.sign_up("carol@acme-corp.com", name="Carol")
    assert journey.state == "joined", "added without the AE's click"
    assert [h["trigger"] for h in journey.trial()["history"]] == ["route_to_existing", "confirm_user_added"]
    carol = sourcegraph.user(host, "carol@acme-corp.com")
    assert carol is not None and not carol.site_admin
    [email] = journey.emails_to("carol@acme-corp.com")
    assert "Acme Corp" in email["Subject"] and link_in(email) == sourcegraph.reset_links[-1]
    assert any("carol@acme-corp.com" in p and "trialflow is adding them" in p for p in posted(slack))
    assert journey.trial(bob)["state"] == "active"


def test_case_1_on_a_converted_instance_the_admin_of_record_is_asked_and_the_ae_told(journey, sourcegraph, slack, smtp):
    journey.sign_up("bob@acme-corp.com", name="Bob")
    sourcegraph.sign_in(journey.host, "bob@acme-corp.com")
    journey.day(1)
    journey.press("convert", "carol.ce@example.com")
    journey.sign_up("dana@acme-corp.com", name="Dana")
    assert journey.state == "joining_existing"
    assert sourcegraph.user(journey.host, "dana@acme-corp.com") is None
    [request] = journey.emails_to("bob@acme-corp.com")[-1:]
    assert "Dana asks to join" in request["Subject"] and "alice.ae@example.com" in request["Cc"]
    assert "dana@acme-corp.com" in request.get_content()
    assert any("dana@acme-corp.com" in p and "bob@acme-corp.com was emailed a request naming them" in p
               and "<@U0AE00001>" in p for p in posted(slack))


def test_case_1_with_auto_add_turned_off_for_the_account_the_admin_is_asked(
        journey, sourcegraph, runtime, config_dir, clock):
    from tests.support.config import ACCOUNTS
    from trialflow.services.reference import load_reference_data
    accounts = ACCOUNTS.replace("domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce",
                                "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce,auto_add_colleagues")
    accounts = accounts.replace("globex.com,Globex,true,false,,,", "globex.com,Globex,true,false,,,,false")
    (config_dir / "accounts.csv").write_text(accounts)
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    journey.sign_up("gina@globex.com", name="Gina")
    sourcegraph.sign_in(journey.host, "gina@globex.com")
    journey.day(1)
    journey.sign_up("hank@globex.com", name="Hank")
    assert journey.state == "joining_existing" and sourcegraph.user(journey.host, "hank@globex.com") is None
    assert any("Hank asks to join" in m["Subject"] for m in journey.emails_to("gina@globex.com"))


def test_a_squatters_claim_never_blocks_the_real_person_who_becomes_admin_once_seen_signed_in(
        journey, sourcegraph, slack):
    journey.sign_up("nobody@acme-corp.com")           # a made-up address at a pre-qualified domain
    squatter = journey.trial_id
    host = journey.host
    journey.sign_up("bob@acme-corp.com", name="Bob")
    bob = sourcegraph.user(host, "bob@acme-corp.com")
    assert bob is not None and bob.site_admin, "while the claim is provisional, a colleague gets an admin account"
    [email] = journey.emails_to("bob@acme-corp.com")
    assert link_in(email) == sourcegraph.reset_links[-1]
    assert journey.state == "joined"
    sourcegraph.sign_in(host, "bob@acme-corp.com")
    journey.day(1)
    [confirmed] = [h for h in journey.trial(squatter)["history"] if h["trigger"] == "confirm_admin"]
    assert confirmed["detail"]["admin"] == "bob@acme-corp.com"
    assert confirmed["detail"]["claimed_by"] == "nobody@acme-corp.com"
    assert any("bob@acme-corp.com signed in" in t and "nobody@acme-corp.com" in t
               for t in journey.channel("cloud-trial-acme-corp"))
    journey.sign_up("carol@acme-corp.com", name="Carol")
    carol = sourcegraph.user(host, "carol@acme-corp.com")
    assert carol is not None and not carol.site_admin, "the claim is real now: colleagues get ordinary accounts"
    with journey.rt.session_factory() as s:
        admin = s.execute(select(tables.instances.c.admin_email, tables.instances.c.admin_seen_at)
                          .where(tables.instances.c.host == host)).one()
    assert admin.admin_email == "bob@acme-corp.com" and admin.admin_seen_at is not None
