"""Round robin of AEs and CEs for pre-qualified accounts that do not name them (case 2.2):
fair, kept in the database across restarts, and never handing a lead to someone inactive."""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.block_kit import assert_valid_message
from tests.support.config import STAFF, write_config
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.db.engine import make_engine
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

DOMAINS = [f"company{i:02d}.example" for i in range(12)]
ACCOUNTS = "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\n" + \
    "acme-corp.com,Acme Corp,true,true,nina.named@example.com,alice.ae@example.com,carol.ce@example.com\n" + \
    "halfnamed.example,Half Named,true,true,nina.named@example.com,alice.ae@example.com,\n" + \
    "".join(f"{d},Company {i},true,false,,,\n" for i, d in enumerate(DOMAINS))
INSTANCES = "host,admin_email,status\n" + "".join(f"pool-{i:02d}.sourcegraph.com,,pool\n" for i in range(20))
ACTIVE_AES = ["alice.ae@example.com", "andy.ae@example.com"]
ACTIVE_CES = ["carol.ce@example.com", "chris.ce@example.com"]


@pytest.fixture
def service(db_url, tmp_path, clock):
    """Start (or restart) trialflow on the test's database: each call is a new Runtime and app."""
    runtimes: list[Runtime] = []

    @contextmanager
    def start(staff: str = STAFF, load: bool = True, pairs: str | None = None, **overrides):
        config = write_config(tmp_path / f"config-{len(runtimes)}", ACCOUNTS, staff, INSTANCES)
        if pairs is not None:
            (config / "pairs.csv").write_text(pairs)
        rt = Runtime(make_settings(db_url, config, **overrides), clock=clock)
        runtimes.append(rt)
        if load:
            load_reference_data(rt.session_factory, config, clock.now())
        try:
            with TestClient(create_app(rt), client=LOOPBACK_CLIENT, raise_server_exceptions=False) as client:
                yield client
        finally:
            rt.close()

    return start


def assignees(client, email):
    r = client.post("/api/signups", json={"email": email})
    assert r.status_code == 201, r.text
    trial = client.get(f"/api/trials/{r.json()['trial_id']}").json()
    return trial["assignees"]["ae"], trial["assignees"]["ce"]


def test_the_rotation_takes_turns_evenly(service):
    with service() as client:
        picks = [assignees(client, f"lead@{d}") for d in DOMAINS[:8]]

    assert [ae for ae, _ in picks] == ACTIVE_AES * 4
    assert [ce for _, ce in picks] == ACTIVE_CES * 4
    assert Counter(ae for ae, _ in picks) == {a: 4 for a in ACTIVE_AES}


def test_an_inactive_staff_member_is_never_assigned(service):
    with service() as client:
        picks = [assignees(client, f"lead@{d}") for d in DOMAINS[:6]]
    assert "old.ae@example.com" not in {ae for ae, _ in picks}
    assert {ae for ae, _ in picks} == set(ACTIVE_AES)


def test_someone_deactivated_in_staff_csv_drops_out_of_the_rotation(service):
    with service() as client:
        assert assignees(client, f"lead@{DOMAINS[0]}")[0] == "alice.ae@example.com"
    andy_leaves = STAFF.replace("andy.ae@example.com,Andy AE,ae,U0AE00002,,true",
                                "andy.ae@example.com,Andy AE,ae,U0AE00002,,false")
    assert andy_leaves != STAFF
    with service(staff=andy_leaves) as client:
        later = [assignees(client, f"lead@{d}") for d in DOMAINS[1:5]]
    assert {ae for ae, _ in later} == {"alice.ae@example.com"}
    assert [ce for _, ce in later] == ["chris.ce@example.com", "carol.ce@example.com"] * 2


def test_the_rotation_continues_where_it_was_after_a_restart(service):
    with service() as client:
        before = [assignees(client, f"lead@{d}") for d in DOMAINS[:3]]
    # A new Runtime (new engine, new app) on the same database, as after a deploy; the
    # reference data is not even reloaded, so nothing but the stored position can carry the turn.
    with service(load=False) as client:
        after = [assignees(client, f"lead@{d}") for d in DOMAINS[3:6]]

    assert [ae for ae, _ in before + after] == ACTIVE_AES * 3
    assert [ce for _, ce in before + after] == ACTIVE_CES * 3


def test_a_named_account_with_its_own_people_does_not_take_a_turn(service):
    with service() as client:
        first = assignees(client, f"lead@{DOMAINS[0]}")
        named = assignees(client, "bob@acme-corp.com")
        second = assignees(client, f"lead@{DOMAINS[1]}")
    assert named == ("alice.ae@example.com", "carol.ce@example.com")
    assert (first[0], second[0]) == ("alice.ae@example.com", "andy.ae@example.com")


def test_a_named_account_missing_its_ce_gets_one_from_the_rotation(service):
    with service() as client:
        ae, ce = assignees(client, "bob@halfnamed.example")
        next_ae, next_ce = assignees(client, f"lead@{DOMAINS[0]}")
    assert ae == "alice.ae@example.com"  # the account's own AE
    assert ce == "carol.ce@example.com"  # the CE rotation's first turn
    assert (next_ae, next_ce) == ("alice.ae@example.com", "chris.ce@example.com")


def test_with_nobody_active_in_a_role_the_trial_is_unassigned_but_still_routed(service):
    no_ces = "\n".join(line for line in STAFF.splitlines() if ",ce," not in line) + "\n"
    with service(staff=no_ces) as client:
        r = client.post("/api/signups", json={"email": f"lead@{DOMAINS[0]}"})
        assert r.status_code == 201 and r.json()["state"] == "active"
        trial = client.get(f"/api/trials/{r.json()['trial_id']}").json()
    assert trial["assignees"]["ae"] == "alice.ae@example.com"
    assert trial["assignees"]["ce"] is None


# --- weights, caps and absences (staff.csv's optional columns), and why each pick was made ---

def with_columns(**people: str) -> str:
    """STAFF with away_until,backup,weight,max_open_trials: ``people`` maps an email's local part to its four cells."""
    lines = STAFF.strip().splitlines()
    out = [lines[0] + ",away_until,backup,weight,max_open_trials"]
    for line in lines[1:]:
        out.append(line + "," + people.get(line.split("@", 1)[0], ",,,"))
    return "\n".join(out) + "\n"


def history_of(client, email):
    r = client.post("/api/signups", json={"email": email})
    return client.get(f"/api/trials/{r.json()['trial_id']}").json()


def test_someone_away_is_skipped_and_the_history_and_the_alert_say_why(service, db_url):
    staff = with_columns(**{"carol.ce": "2026-12-08,,,"})
    with service(staff=staff) as client:
        trials = [history_of(client, f"lead@{d}") for d in DOMAINS[:3]]
    assert {t["assignees"]["ce"] for t in trials} == {"chris.ce@example.com"}
    claim = next(h for h in trials[0]["history"] if h["trigger"] == "claim_pool_instance")
    assert claim["detail"]["routing"]["ce"] == "Chris CE: next in rotation; Carol CE skipped: away until 12-08"
    assert claim["detail"]["routing"]["ae"] == "Alice AE: next in rotation"
    engine = make_engine(db_url)
    with engine.connect() as conn:
        payload = conn.execute(select(tables.outbox.c.payload).where(
            tables.outbox.c.trial_id == trials[0]["trial_id"], tables.outbox.c.key.like("%:alert"))).scalar_one()
    engine.dispose()
    assert_valid_message(payload)
    context = [e["text"] for b in payload["blocks"] if b["type"] == "context" for e in b["elements"]]
    assert any("CE Chris CE: next in rotation; Carol CE skipped: away until 12-08" in text for text in context)


def test_weights_share_the_turns_and_a_cap_stops_them(service):
    staff = with_columns(**{"alice.ae": ",,2,", "chris.ce": ",,,1"})
    with service(staff=staff) as client:
        trials = [history_of(client, f"lead@{d}") for d in DOMAINS[:6]]
    assert Counter(t["assignees"]["ae"] for t in trials) == {"alice.ae@example.com": 4, "andy.ae@example.com": 2}
    assert [t["assignees"]["ce"] for t in trials] == ["carol.ce@example.com", "chris.ce@example.com"] + \
        ["carol.ce@example.com"] * 4
    later = next(h for h in trials[3]["history"] if h["trigger"] == "claim_pool_instance")
    assert later["detail"]["routing"]["ce"] == \
        "Carol CE: next in rotation; Chris CE skipped: at their cap of 1 open trial"


def test_with_pairing_on_an_aes_trials_go_to_their_paired_ce_while_they_can_take_them(service):
    pairs = "ae,ce\nandy.ae@example.com,chris.ce@example.com\n"
    with service(staff=with_columns(**{"chris.ce": ",,,2"}), pairs=pairs, routing_pairs=True) as client:
        trials = [history_of(client, f"lead@{d}") for d in DOMAINS[:6]]
    picks = [(t["assignees"]["ae"], t["assignees"]["ce"]) for t in trials]
    assert picks[:4] == [("alice.ae@example.com", "carol.ce@example.com"), ("andy.ae@example.com", "chris.ce@example.com"),
                         ("alice.ae@example.com", "carol.ce@example.com"), ("andy.ae@example.com", "chris.ce@example.com")]
    # Chris reached his cap of 2: Andy's next trial goes to the rotation.
    assert picks[5] == ("andy.ae@example.com", "carol.ce@example.com")
    paired = next(h for h in trials[1]["history"] if h["trigger"] == "claim_pool_instance")
    assert paired["detail"]["routing"]["ce"] == "Chris CE: paired with AE andy.ae@example.com"
