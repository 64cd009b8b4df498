"""POST /api/signups through HTTP, on SQLite and PostgreSQL: every routing case of the seed,
normalisation, idempotency, capacity, bad input and the failsafe."""
from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.conftest import EVENTS_AUTH, LOOPBACK_CLIENT, make_settings
from tests.support.config import ACCOUNTS, INSTANCES, STAFF, write_config
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data
from trialflow.services.spooled_signups import replay, spool_of

NO_POOL = "host,admin_email,status\ninitech.sourcegraph.com,peter@initech.com,live\n"


@pytest.fixture
def custom_client(db_url, tmp_path, clock):
    """A client on a fresh database whose reference data or settings the test chooses."""
    made: list[Runtime] = []

    @contextmanager
    def build(accounts: str = ACCOUNTS, staff: str = STAFF, instances: str = INSTANCES, **overrides):
        config = write_config(tmp_path / f"config-{len(made)}", accounts, staff, instances)
        rt = Runtime(make_settings(db_url, config, **overrides), clock=clock)
        made.append(rt)
        load_reference_data(rt.session_factory, config, clock.now())
        with TestClient(create_app(rt), client=LOOPBACK_CLIENT, raise_server_exceptions=False) as c:
            c.runtime = rt
            yield c

    yield build
    for rt in made:
        rt.close()


def signup(client, email, **extra):
    return client.post("/api/signups", json={"email": email, **extra})


def detail(client, trial_id):
    r = client.get(f"/api/trials/{trial_id}")
    assert r.status_code == 200, r.text
    return r.json()


def count(runtime, table, *where) -> int:
    with runtime.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(*where))


def instance_status(runtime, host) -> str:
    with runtime.engine.connect() as conn:
        return conn.scalar(select(tables.instances.c.status).where(tables.instances.c.host == host))


# --- case 1: the domain already has a live instance ---------------------------------------

def test_a_colleague_of_a_live_instances_admin_is_redirected_to_that_instance(client, runtime):
    r = signup(client, "samir@initech.com", name="Samir")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["case"] == "existing_instance"
    assert body["state"] == "joining_existing"
    assert body["redirect_url"] == "https://initech.sourcegraph.com/sign-in"
    assert "initech.com already has" in body["message"]

    trial = detail(client, body["trial_id"])
    assert trial["instance_url"] == "https://initech.sourcegraph.com"
    assert [h["trigger"] for h in trial["history"]] == ["route_to_existing"]
    assert set(trial["deadlines"]) == {"user_added_reminder"}
    assert count(runtime, tables.instances, tables.instances.c.status == "pool") == 5


def test_a_domain_that_claimed_a_pool_instance_earlier_sends_later_signups_there(client, runtime):
    first = signup(client, "bob@acme-corp.com").json()
    later = signup(client, "dana@acme-corp.com")

    assert later.status_code == 201
    assert later.json()["case"] == "existing_instance"
    assert later.json()["state"] == "joining_existing"
    assert later.json()["redirect_url"] == first["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    dana = detail(client, later.json()["trial_id"])
    assert dana["assignees"]["ae"] == "alice.ae@example.com"
    assert dana["assignees"]["ce"] == "carol.ce@example.com"
    assert dana["account_name"] == "Acme Corp"
    # One instance for the domain, not one per person.
    assert count(runtime, tables.instances, tables.instances.c.status == "live") == 2


# --- case 2: pre-qualified accounts claim a pool instance -----------------------------------

def test_a_named_accounts_signup_claims_a_pool_instance_with_the_accounts_owners(client, runtime):
    r = signup(client, "bob@acme-corp.com", name="Bob", company="Acme", source="website")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["case"] == "prequalified_named"
    assert body["state"] == "active"
    assert body["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    assert "bob@acme-corp.com" in body["message"]

    trial = detail(client, body["trial_id"])
    assert trial["assignees"] == {"sdr": "nina.named@example.com", "ae": "alice.ae@example.com",
                                  "ce": "carol.ce@example.com"}
    assert trial["account_name"] == "Acme Corp"
    assert trial["started_at"] is not None
    assert [h["trigger"] for h in trial["history"]] == ["claim_pool_instance"]
    assert set(trial["deadlines"]) == {"termination_heads_up", "day15_review"}
    assert instance_status(runtime, "pool-a.sourcegraph.com") == "live"


def test_an_unnamed_prequalified_account_gets_its_ae_and_ce_by_round_robin(client):
    globex = detail(client, signup(client, "gina@globex.com").json()["trial_id"])
    buecher = detail(client, signup(client, "anna@bücher.example").json()["trial_id"])

    assert globex["case"] == buecher["case"] == "prequalified_unnamed"
    assert globex["state"] == buecher["state"] == "active"
    assert globex["assignees"] == {"sdr": None, "ae": "alice.ae@example.com", "ce": "carol.ce@example.com"}
    assert buecher["assignees"] == {"sdr": None, "ae": "andy.ae@example.com", "ce": "chris.ce@example.com"}
    assert globex["instance_url"] != buecher["instance_url"]


# --- case 3: everything else is triaged ----------------------------------------------------

def test_an_unknown_domain_goes_to_the_inbound_sdrs_triage(client, runtime):
    r = signup(client, "lee@tiny-startup.io")
    assert r.status_code == 201
    body = r.json()
    assert (body["case"], body["state"], body["redirect_url"]) == ("manual_qualification", "triage", None)
    assert "reviewing your request" in body["message"]
    assert count(runtime, tables.outbox, tables.outbox.c.trial_id == body["trial_id"],
                 tables.outbox.c.kind == "slack.message") == 1
    assert count(runtime, tables.instances, tables.instances.c.status == "pool") == 5


def test_a_listed_account_that_is_not_prequalified_is_triaged_under_its_account_name(custom_client):
    accounts = ACCOUNTS + "umbrella.com,Umbrella Corp,false,false,,,\n"
    with custom_client(accounts=accounts) as client:
        body = signup(client, "alice@eu.umbrella.com").json()
        assert (body["case"], body["state"]) == ("manual_qualification", "triage")
        trial = detail(client, body["trial_id"])
        assert trial["account_name"] == "Umbrella Corp"
        assert trial["domain"] == "umbrella.com"


def test_marketing_actions_seen_before_the_signup_count_in_the_triage_alert(client, runtime):
    for kind in ("demo_request", "pricing_page_view"):
        assert client.post("/api/events", json={"email": "Lee@Tiny-Startup.io", "kind": kind},
                           headers=EVENTS_AUTH).status_code == 201

    body = signup(client, "lee@tiny-startup.io").json()

    assert detail(client, body["trial_id"])["lead_score"]["mql_points"] == 20
    with runtime.engine.connect() as conn:
        alert = conn.execute(select(tables.outbox.c.payload).where(tables.outbox.c.trial_id == body["trial_id"],
                                                                   tables.outbox.c.kind == "slack.message")).scalar_one()
    assert "MQL 20 pts (MQL)" in json.dumps(alert)


# --- public mailbox domains ---------------------------------------------------------------

@pytest.mark.parametrize("email", ["someone@gmail.com", "someone@Outlook.com.", "someone@eu.gmail.com"])
def test_a_public_mailbox_domain_never_matches_or_claims_even_when_an_instance_lists_it(custom_client, email):
    # instances.csv lists a live instance whose admin used a gmail address: it must not become
    # "the gmail.com instance" that every gmail user is sent to.
    instances = INSTANCES + "personal.sourcegraph.com,someone.else@gmail.com,live\n" \
                            "hotmail-co.sourcegraph.com,x@outlook.com,live\n"
    with custom_client(instances=instances) as client:
        r = signup(client, email)
        assert r.status_code == 201
        body = r.json()
        assert (body["case"], body["state"], body["redirect_url"]) == ("manual_qualification", "triage", None)
        assert count(client.runtime, tables.instances, tables.instances.c.status == "pool") == 5


# --- normalisation ------------------------------------------------------------------------

def test_case_and_the_trailing_dot_do_not_make_a_second_trial(client):
    first = signup(client, "bob@acme-corp.com").json()
    again = signup(client, "  BOB@Acme-Corp.COM.  ")
    assert again.status_code == 200
    assert again.json()["trial_id"] == first["trial_id"]
    assert detail(client, first["trial_id"])["email"] == "bob@acme-corp.com"


def test_an_internationalised_domain_is_the_same_domain_in_unicode_and_punycode(client):
    unicode_first = signup(client, "anna@bücher.example").json()
    punycode_later = signup(client, "ben@xn--bcher-kva.example").json()

    assert unicode_first["case"] == "prequalified_unnamed"
    assert detail(client, unicode_first["trial_id"])["domain"] == "xn--bcher-kva.example"
    assert punycode_later["case"] == "existing_instance"
    assert punycode_later["redirect_url"] == unicode_first["redirect_url"]
    assert signup(client, "anna@xn--BCHER-kva.example").json()["trial_id"] == unicode_first["trial_id"]


def test_a_sub_domain_email_belongs_to_its_listed_parent_account(client):
    body = signup(client, "bob@eu.acme-corp.com").json()
    assert body["case"] == "prequalified_named"
    trial = detail(client, body["trial_id"])
    assert trial["domain"] == "acme-corp.com"
    assert trial["email"] == "bob@eu.acme-corp.com"
    # and the parent's later signups join the instance the sub-domain claimed
    assert signup(client, "carl@acme-corp.com").json()["redirect_url"] == body["redirect_url"]


# --- idempotency --------------------------------------------------------------------------

def test_signing_up_again_answers_200_with_the_same_trial_and_changes_nothing(client, runtime):
    first = signup(client, "lee@tiny-startup.io", name="Lee")
    effects = count(runtime, tables.outbox)
    again = signup(client, "lee@tiny-startup.io", name="Lee again")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert count(runtime, tables.trials) == 1
    assert count(runtime, tables.outbox) == effects
    assert detail(client, first.json()["trial_id"])["name"] == "Lee"


# --- capacity -----------------------------------------------------------------------------

def test_an_empty_pool_puts_a_prequalified_signup_in_the_capacity_queue(custom_client):
    with custom_client(instances=NO_POOL) as client:
        r = signup(client, "gina@globex.com")
        assert r.status_code == 201
        body = r.json()
        assert (body["case"], body["state"], body["redirect_url"]) == ("prequalified_unnamed", "waiting_for_capacity", None)
        history = detail(client, body["trial_id"])["history"]
        assert [(h["trigger"], h["detail"]["reason"]) for h in history] == [("wait_for_capacity", "pool empty")]
        # nothing was claimed, so a colleague waits too instead of being sent to a phantom instance
        assert signup(client, "gus@globex.com").json()["state"] == "waiting_for_capacity"


def test_at_the_instance_cap_a_prequalified_signup_waits_even_with_pool_instances_free(custom_client):
    with custom_client(instance_cap=1) as client:
        assert signup(client, "bob@acme-corp.com").json()["state"] == "active"
        body = signup(client, "gina@globex.com").json()
        assert (body["state"], body["redirect_url"]) == ("waiting_for_capacity", None)
        history = detail(client, body["trial_id"])["history"]
        assert history[0]["detail"]["reason"] == "instance cap reached"
        assert count(client.runtime, tables.instances, tables.instances.c.status == "pool") == 4


def test_with_no_instance_cap_left_at_all_nothing_is_claimed(custom_client):
    with custom_client(instance_cap=0) as client:
        assert signup(client, "bob@acme-corp.com").json()["state"] == "waiting_for_capacity"
        assert count(client.runtime, tables.instances, tables.instances.c.status == "pool") == 5


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("payload,status,field,says", [
    ({"email": "not-an-email"}, 422, "email", "not an email address"),
    ({"email": "bob@localhost"}, 422, "email", "full domain name"),
    ({"email": ""}, 422, "email", "Please give an email address"),
    ({"name": "Bob"}, 422, "email", "email is required"),
    ({"email": 42}, 422, "email", "must be text"),
    ({"email": None}, 422, "email", "must be text"),
    ({"email": ["bob@acme-corp.com"]}, 422, "email", "must be text"),
    ({"email": "bob@acme-corp.com", "name": 7}, 422, "name", "name must be text"),
    ({"email": "bob@acme-corp.com", "company": {"x": 1}}, 422, "company", "company must be text"),
    ({"email": "bob@acme-corp.com", "name": "x" * 201}, 422, "name", "too long"),
    ({"email": "bob@acme-corp.com", "admin": True}, 422, "admin", "Unknown field(s): admin"),
])
def test_a_bad_signup_is_refused_with_a_message_a_person_can_read(client, runtime, payload, status, field, says):
    r = client.post("/api/signups", json=payload)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert says in r.json()["error"]
    assert r.json()["field"] == field
    assert count(runtime, tables.trials) == 0


@pytest.mark.parametrize("raw,says", [
    (b"email=bob@acme-corp.com", "must be JSON"),
    (b'{"email": "bob@acme-corp.com"', "must be JSON"),
    (b"\xff\xfe\x00", "must be JSON"),
    (b"", "must be JSON"),
    (b'["bob@acme-corp.com"]', "JSON object"),
    (b'"bob@acme-corp.com"', "JSON object"),
    (b"null", "JSON object"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(client, runtime, raw, says):
    r = client.post("/api/signups", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]
    assert count(runtime, tables.trials) == 0


def test_a_huge_body_is_refused_with_413_before_it_is_read(client, runtime):
    huge = json.dumps({"email": "bob@acme-corp.com", "name": "x" * 100_000})
    r = client.post("/api/signups", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["error"]
    assert count(runtime, tables.trials) == 0


def test_a_huge_body_without_a_content_length_is_cut_off_with_413(client, runtime):
    def chunks():
        yield b'{"email": "bob@acme-corp.com", "name": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/api/signups", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert count(runtime, tables.trials) == 0



def test_mounted_under_a_path_the_signup_route_answers_the_same_and_refuses_a_huge_body(runtime):
    from fastapi import FastAPI
    site = FastAPI()
    site.mount("/trials", create_app(runtime))
    with TestClient(site, client=LOOPBACK_CLIENT) as c:
        huge = json.dumps({"email": "bob@acme-corp.com", "name": "x" * 100_000})
        refused = c.post("/trials/api/signups", content=huge, headers={"content-type": "application/json"})
        created = c.post("/trials/api/signups", json={"email": "lee@tiny-startup.io"})
    assert refused.status_code == 413
    assert refused.json() == {"error": f"The request body is too large ({runtime.settings.max_body_bytes} bytes at most)."}
    assert created.status_code == 201 and created.json()["state"] == "triage"
    assert count(runtime, tables.trials) == 1

# --- the failsafe -------------------------------------------------------------------------

@contextmanager
def accounts_table_missing(runtime):
    """A real fault, not a patched function: the accounts table is renamed away under the
    running service, as a botched manual migration would. Every signup that needs routing
    reads accounts, so routing itself fails with the database's own error."""
    with runtime.engine.begin() as conn:
        conn.execute(text("ALTER TABLE accounts RENAME TO accounts_gone"))
    try:
        yield
    finally:
        runtime.engine.dispose()  # PostgreSQL: no pooled connection keeps a plan for the old table
        with runtime.engine.begin() as conn:
            conn.execute(text("ALTER TABLE accounts_gone RENAME TO accounts"))


def test_when_routing_fails_the_signup_is_kept_support_is_emailed_and_the_caller_gets_a_calm_202(client, runtime):
    with accounts_table_missing(runtime):
        r = client.post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})

    assert r.status_code == 202, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["trial_id"] is None and body["redirect_url"] is None
    assert "get back to you by email" in body["message"]
    assert "Traceback" not in r.text and "accounts" not in r.text

    with runtime.engine.connect() as conn:
        kept = conn.execute(select(tables.failed_signups)).all()
        effects = conn.execute(select(tables.outbox)).all()
    assert len(kept) == 1
    assert json.loads(kept[0].body) == {"email": "bob@acme-corp.com", "name": "Bob"}
    assert "accounts" in kept[0].error  # the database's own complaint, for support
    assert len(effects) == 1
    email = effects[0]
    assert email.kind == "email" and email.status == "pending"
    assert email.payload["template"] == "support_failsafe"
    assert email.payload["to"] == runtime.settings.support_email
    assert email.payload["context"]["failed_signup_id"] == kept[0].id
    assert "bob@acme-corp.com" in email.payload["context"]["signup"]
    # the half-routed trial was rolled back: nothing half-exists
    assert count(runtime, tables.trials) == 0
    assert count(runtime, tables.instances, tables.instances.c.status == "pool") == 5


def test_after_the_fault_is_repaired_the_same_person_can_sign_up_normally(client, runtime):
    with accounts_table_missing(runtime):
        assert signup(client, "bob@acme-corp.com").status_code == 202
    r = signup(client, "bob@acme-corp.com")
    assert r.status_code == 201
    assert r.json()["state"] == "active"


# --- reading trials -----------------------------------------------------------------------

def test_an_unknown_trial_id_is_a_404_in_json(client):
    r = client.get("/api/trials/tr_doesnotexist00")
    assert r.status_code == 404
    assert "tr_doesnotexist00" in r.json()["error"]


@pytest.mark.parametrize("field, value", [
    ("name", "Bob\n- Assigned CE: mallory@evil.example"),
    ("name", "<!channel> urgent"),
    ("company", "Acme <https://evil.example|Corp>"),
    ("company", "Acme <!-- trialflow:tr_0000000000000000:instance-request -->"),
    ("source", "ads\r\nInstance: https://evil.example"),
])
def test_text_that_could_forge_lines_mentions_or_links_in_slack_and_github_is_refused(client, field, value):
    r = client.post("/api/signups", json={"email": "bob@acme-corp.com", field: value})
    assert r.status_code == 422
    assert r.json()["field"] == field and "one line of plain text" in r.json()["error"]
    assert client.get("/api/trials").json()["trials"] == []


def test_an_ampersand_in_a_company_name_reaches_slack_escaped(client, runtime):
    body = signup(client, "lee@tiny-startup.io", name="Lee", company="Smith & Sons").json()
    with runtime.engine.connect() as conn:
        alert = conn.execute(select(tables.outbox.c.payload).where(tables.outbox.c.trial_id == body["trial_id"],
                                                                   tables.outbox.c.kind == "slack.message")).scalar_one()
    assert "(Smith &amp; Sons)" in alert["text"]


def test_a_repeat_signup_from_someone_whose_trial_went_on_is_still_sent_to_the_instance(client, runtime):
    from trialflow.services.directory import Directory
    from trialflow.services.trials import Command, run
    first = signup(client, "bob@acme-corp.com").json()
    with runtime.session_factory() as s:
        carol = Directory(s).by_slack_id("U0CE00001")
    run(runtime, Command(first["trial_id"], "extend", carol.slack_user_id, carol, {}))
    again = signup(client, "bob@acme-corp.com")
    assert again.status_code == 200
    assert again.json()["state"] == "extended"
    assert again.json()["redirect_url"] == first["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    run(runtime, Command(first["trial_id"], "convert", carol.slack_user_id, carol, {}))
    assert signup(client, "bob@acme-corp.com").json()["redirect_url"] == first["redirect_url"]


# --- who a colleague's alert names (read with the signup on PostgreSQL) ---------------------

def alert_of(runtime, trial_id) -> dict:
    with runtime.engine.connect() as conn:
        return conn.execute(select(tables.outbox.c.payload).where(
            tables.outbox.c.trial_id == trial_id, tables.outbox.c.key.like("%:alert"))).scalar_one()


def test_a_colleagues_alert_asks_the_instances_ae_by_their_slack_mention(client, runtime):
    signup(client, "bob@acme-corp.com")
    dana = signup(client, "dana@acme-corp.com").json()
    assert dana["case"] == "existing_instance"
    assert "AE <@U0AE00001>: make sure the admin adds them" in json.dumps(alert_of(runtime, dana["trial_id"]))


def test_an_ae_missing_from_staff_is_named_by_email_in_a_colleagues_alert(custom_client):
    staff = "".join(line + "\n" for line in STAFF.splitlines() if not line.startswith("alice.ae@"))
    with custom_client(staff=staff) as c:
        signup(c, "bob@acme-corp.com")
        dana = signup(c, "dana@acme-corp.com").json()
        assert dana["case"] == "existing_instance"
        assert "AE alice.ae@example.com: make sure" in json.dumps(alert_of(c.runtime, dana["trial_id"]))


@pytest.mark.postgres
def test_after_the_database_drops_the_apis_connections_no_signup_is_lost_and_the_next_one_is_routed(pg_url, tmp_path, clock):
    import psycopg
    config = write_config(tmp_path / "config")
    rt = Runtime(make_settings(pg_url, config), clock=clock)
    load_reference_data(rt.session_factory, config, clock.now())
    try:
        with TestClient(create_app(rt), client=LOOPBACK_CLIENT, raise_server_exceptions=False) as c:
            assert signup(c, "lee@tiny-startup.io").status_code == 201  # leaves its connections open
            with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            # Every pooled connection is dead (the event loop's and the threads'): the signup that
            # finds out is kept, on disk (a dropped connection is an outage, not a fault for
            # support); the next one is routed on new ones.
            assert signup(c, "kim@tiny-startup.io").status_code == 202
            assert signup(c, "max@tiny-startup.io").status_code == 201
            routed = {t["email"] for t in c.get("/api/trials").json()["trials"]}
            spooled = [r.signup["email"] for r in spool_of(rt.settings).records()]
            assert len(replay(rt).routed) == 1  # what serve's background loop does a second later
            replayed = {t["email"] for t in c.get("/api/trials").json()["trials"]}
        with rt.engine.connect() as conn:
            kept = [json.loads(body)["email"] for body in conn.execute(select(tables.failed_signups.c.body)).scalars()]
        assert routed == {"lee@tiny-startup.io", "max@tiny-startup.io"} and spooled == ["kim@tiny-startup.io"]
        assert replayed == routed | {"kim@tiny-startup.io"} and kept == []
    finally:
        rt.close()


class DropsAfterTheWrite:
    """The API's event-loop connections (our LoopConnections port) in front of the real ones:
    the one statement that writes a trial commits, then the connection fails before its answer
    comes back, so the API cannot know whether it committed."""

    def __init__(self, real):
        self.real = real

    async def acquire(self):
        return _DroppingConnection(await self.real.acquire())

    def release(self, conn) -> None:
        self.real.release(conn.real)

    async def close(self) -> None:
        await self.real.close()


class _DroppingConnection:
    def __init__(self, real):
        self.real = real

    def cursor(self):
        return _DroppingCursor(self.real.cursor())


class _DroppingCursor:
    def __init__(self, real):
        self.real = real

    async def execute(self, sql, params=None):
        import psycopg
        await self.real.execute(sql, params)
        if "INSERT INTO trials" in sql:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    async def fetchone(self):
        return await self.real.fetchone()

    async def fetchall(self):
        return await self.real.fetchall()


@pytest.mark.postgres
def test_a_signup_whose_write_committed_before_its_connection_failed_is_answered_as_created(pg_url, tmp_path, clock):
    config = write_config(tmp_path / "config")
    rt = Runtime(make_settings(pg_url, config), clock=clock)
    load_reference_data(rt.session_factory, config, clock.now())
    app = create_app(rt)
    app.loop_connections = DropsAfterTheWrite(app.loop_connections)
    try:
        with TestClient(app, client=LOOPBACK_CLIENT, raise_server_exceptions=False) as c:
            first = signup(c, "lee@tiny-startup.io")
            # Routed again in a thread, it finds the trial its own write made: created (201), not
            # a repeat (200), and nothing written twice.
            assert first.status_code == 201
            again = signup(c, "lee@tiny-startup.io")
            assert again.status_code == 200 and again.json()["trial_id"] == first.json()["trial_id"]
        with rt.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(tables.trials)).scalar() == 1
            assert conn.execute(select(func.count()).select_from(tables.failed_signups)).scalar() == 0
            keys = conn.execute(select(tables.outbox.c.key)).scalars().all()
        assert len(keys) == len(set(keys)) >= 1
    finally:
        rt.close()


def test_a_caller_that_leaves_before_sending_its_body_gets_nothing_and_nothing_is_logged_as_an_error(runtime,
                                                                                                    caplog):
    import asyncio
    app = create_app(runtime)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/signups", "headers": [(b"content-type", b"application/json")],
             "query_string": b"", "root_path": ""}
    asyncio.run(app(scope, receive, send))

    assert sent == []
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.trials)).scalar() == 0
