"""GET /api/trials and /api/trials/{id}: the contract the BRIEF promises, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime

import pytest

CONTRACT_KEYS = {"trial_id", "email", "domain", "case", "state", "instance_url", "assignees", "deadlines", "history"}


@pytest.fixture
def four_trials(client, clock):
    ids = {}
    for email in ("bob@acme-corp.com", "dana@acme-corp.com", "lee@tiny-startup.io", "gina@globex.com"):
        r = client.post("/api/signups", json={"email": email})
        assert r.status_code == 201, r.text
        ids[email] = r.json()["trial_id"]
        clock.advance(minutes=1)
    return ids


def listed(client, **params):
    r = client.get("/api/trials", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_trials_detail_carries_every_field_of_the_contract(client, four_trials, clock):
    trial = client.get(f"/api/trials/{four_trials['bob@acme-corp.com']}").json()
    assert set(trial) >= CONTRACT_KEYS
    assert set(trial["assignees"]) == {"sdr", "ae", "ce"}
    assert trial["email"] == "bob@acme-corp.com" and trial["domain"] == "acme-corp.com"
    (entry,) = trial["history"]
    assert set(entry) >= {"from_state", "to_state", "trigger", "actor", "at"}
    assert (entry["from_state"], entry["to_state"], entry["actor"]) == ("new", "active", "system")
    assert datetime.fromisoformat(entry["at"]).tzinfo is not None
    for due in trial["deadlines"].values():
        assert datetime.fromisoformat(due) > datetime.fromisoformat(entry["at"])


def test_the_list_is_newest_first(client, four_trials):
    emails = [t["email"] for t in listed(client)["trials"]]
    assert emails == ["gina@globex.com", "lee@tiny-startup.io", "dana@acme-corp.com", "bob@acme-corp.com"]


def test_the_list_filters_by_state(client, four_trials):
    active = listed(client, state="active")
    assert {t["email"] for t in active["trials"]} == {"bob@acme-corp.com", "gina@globex.com"}
    assert active["count"] == 2
    assert [t["email"] for t in listed(client, state="triage")["trials"]] == ["lee@tiny-startup.io"]
    assert listed(client, state="converted")["trials"] == []


def test_the_list_filters_by_domain_written_any_way_a_person_would(client, four_trials):
    for written in ("acme-corp.com", "ACME-CORP.com", "acme-corp.com."):
        assert {t["email"] for t in listed(client, domain=written)["trials"]} == {"bob@acme-corp.com", "dana@acme-corp.com"}
    assert listed(client, domain="nobody.example")["trials"] == []


def test_the_list_filters_by_state_and_domain_together(client, four_trials):
    only = listed(client, state="joining_existing", domain="acme-corp.com")["trials"]
    assert [t["trial_id"] for t in only] == [four_trials["dana@acme-corp.com"]]


def test_the_list_finds_an_internationalised_domain_by_its_unicode_name(client):
    client.post("/api/signups", json={"email": "anna@bücher.example"})
    assert [t["email"] for t in listed(client, domain="BÜCHER.example")["trials"]] == ["anna@xn--bcher-kva.example"]


def test_the_list_pages_with_limit_and_offset(client, four_trials):
    first = listed(client, limit=3)["trials"]
    rest = listed(client, limit=3, offset=3)["trials"]
    assert len(first) == 3 and len(rest) == 1
    assert {t["trial_id"] for t in first + rest} == set(four_trials.values())


def test_an_unknown_state_is_a_422_naming_the_states_there_are(client):
    r = client.get("/api/trials", params={"state": "finished"})
    assert r.status_code == 422
    assert "finished" in r.json()["error"] and "waiting_for_capacity" in r.json()["error"]


def test_a_domain_filter_that_is_no_domain_is_a_422(client):
    r = client.get("/api/trials", params={"domain": "not a domain"})
    assert r.status_code == 422
    assert r.json()["field"] == "domain"


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"limit": "many"}])
def test_an_out_of_range_page_is_a_422(client, params):
    assert client.get("/api/trials", params=params).status_code == 422


def test_an_unknown_trial_is_a_404(client):
    r = client.get("/api/trials/tr_0000000000000000")
    assert r.status_code == 404
    assert r.json() == {"error": "No trial tr_0000000000000000."}


def test_empty_filters_as_a_form_sends_them_mean_no_filter(client, four_trials):
    everything = listed(client)["trials"]
    assert listed(client, state="", domain="")["trials"] == everything
    assert len(everything) == 4
