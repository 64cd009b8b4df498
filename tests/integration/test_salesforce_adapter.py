"""The Salesforce adapter with the real simple-salesforce, over HTTPS, against the fake built from the fixtures."""
from __future__ import annotations

import socket
from datetime import date

import pytest

from tests.conftest import make_settings
from tests.support.fake_salesforce import private_key_pem
from trialflow.crm.port import OpportunityFields
from trialflow.crm.salesforce import REQUEST_LIMIT_BACKOFF, SalesforceCrm, check
from trialflow.errors import PayloadRefused, PermanentFailure, RetryLater


@pytest.fixture
def crm(fake_salesforce, salesforce_key, tmp_path):
    settings = make_settings("sqlite://", tmp_path, **fake_salesforce.settings(salesforce_key))
    return SalesforceCrm(settings)


def _fields(trial_id: str = "tr_0123456789abcdef", stage: str = "Qualification") -> OpportunityFields:
    return OpportunityFields(trial_id=trial_id, name="acme-corp.com - Cloud trial", stage=stage,
                             close_date=date(2026, 6, 30), lead_source="Cloud Trial",
                             instance_url="https://pool-a.sourcegraph.com")


def test_accounts_are_read_page_after_page_with_their_people(fake_salesforce, crm):
    fake_salesforce.add_account("Acme Corp", "https://www.acme-corp.com/about", named=True,
                                owner="alice.ae@example.com", named_sdr="nina.named@example.com",
                                ce="carol.ce@example.com")
    fake_salesforce.add_account("Globex", "globex.com", owner="andy.ae@example.com")
    fake_salesforce.add_account("No site", None)
    fake_salesforce.add_account("Not qualified", "initech.com", prequalified=False)
    fake_salesforce.add_account("Hooli", "http://hooli.example")
    seen: list[tuple[int, int]] = []

    read = crm.accounts(lambda what, done, total: seen.append((done, total)))

    assert seen == [(2, 4), (4, 4)]  # two pages of two (the fake's page size), every record read
    assert sum(1 for method, path in fake_salesforce.calls if path.startswith("/services/data/v59.0/query/")) == 2
    assert [a["domain"] for a in read.accounts] == ["acme-corp.com", "globex.com", "hooli.example"]
    acme = read.accounts[0]
    assert (acme["named_account"], acme["prequalified"], acme["named_sdr"], acme["owner_ae"], acme["owner_ce"]) == (
        True, True, "nina.named@example.com", "alice.ae@example.com", "carol.ce@example.com")
    assert acme["crm_account_id"].startswith("001")
    assert read.skipped == ["No site: no usable domain in Website"]


def test_the_login_is_a_signed_jwt_for_the_integration_user(fake_salesforce, crm):
    crm.login()
    claims = fake_salesforce.logins[0]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (crm.settings.salesforce_client_id,
                                                             crm.settings.salesforce_username, fake_salesforce.url)


def test_an_expired_session_logs_in_again_once(fake_salesforce, crm):
    fake_salesforce.add_account("Globex", "globex.com")
    crm.accounts()
    fake_salesforce.expire_sessions()

    assert [a["domain"] for a in crm.accounts().accounts] == ["globex.com"]
    assert crm.logins == 2


def test_a_session_refused_even_after_a_fresh_login_is_not_retried_without_end(fake_salesforce, crm):
    fake_salesforce.keep_refusing_sessions()
    with pytest.raises(RetryLater, match="right after a fresh login"):
        crm.upsert_opportunity(_fields())
    assert crm.logins == 2
    assert [c for c in fake_salesforce.calls if c[0] == "PATCH"] == [
        ("PATCH", "/services/data/v59.0/sobjects/Opportunity/Trial_Id__c/tr_0123456789abcdef")] * 2


def test_upsert_creates_with_201_then_updates_with_200_the_same_record(fake_salesforce, crm):
    first = crm.upsert_opportunity(_fields())
    second = crm.upsert_opportunity(_fields(stage="Closed Won"))

    assert first.created and not second.created
    assert first.id == second.id and first.id.startswith("006")
    assert first.url == f"{fake_salesforce.url}/lightning/r/Opportunity/{first.id}/view"
    opp = fake_salesforce.opportunity("tr_0123456789abcdef")
    assert (opp["StageName"], opp["LeadSource"], opp["Trial_Instance_URL__c"]) == (
        "Closed Won", "Cloud Trial", "https://pool-a.sourcegraph.com")


def test_the_owner_is_the_ae_user_when_salesforce_knows_them(fake_salesforce, crm):
    user = fake_salesforce.add_user("alice.ae@example.com")
    fields = _fields()
    crm.upsert_opportunity(OpportunityFields(**{**fields.__dict__, "owner_email": "alice.ae@example.com"}))
    crm.upsert_opportunity(OpportunityFields(**{**fields.__dict__, "owner_email": "nobody@example.com"}))
    assert fake_salesforce.changes[fields.trial_id][0]["OwnerId"] == user
    assert "OwnerId" not in fake_salesforce.changes[fields.trial_id][1]


def test_a_duplicate_value_is_refused_for_good(fake_salesforce, crm):
    fake_salesforce.fail_next("error.duplicate_value.400.json")
    with pytest.raises(PayloadRefused, match="DUPLICATE_VALUE: duplicate value found: Trial_Id__c"):
        crm.upsert_opportunity(_fields())


def test_the_request_limit_backs_off_instead_of_failing(fake_salesforce, crm):
    fake_salesforce.fail_next("error.request_limit.403.json")
    with pytest.raises(RetryLater) as raised:
        crm.upsert_opportunity(_fields())
    assert raised.value.retry_after == REQUEST_LIMIT_BACKOFF
    assert "REQUEST_LIMIT_EXCEEDED" in str(raised.value)


def test_a_wrong_user_is_invalid_grant_and_names_the_settings(fake_salesforce, salesforce_key, tmp_path):
    settings = make_settings("sqlite://", tmp_path, **{**fake_salesforce.settings(salesforce_key),
                                                       "salesforce_username": "someone@else.example"})
    with pytest.raises(PermanentFailure, match="invalid_grant.*TRIALFLOW_SALESFORCE_USERNAME"):
        SalesforceCrm(settings).login()


def test_a_key_that_is_not_the_certificate_s_is_invalid_grant(fake_salesforce, salesforce_key, tmp_path):
    other = tmp_path / "other.key"
    other.write_bytes(private_key_pem())
    settings = make_settings("sqlite://", tmp_path, **{**fake_salesforce.settings(salesforce_key),
                                                       "salesforce_private_key_file": other})
    with pytest.raises(PermanentFailure, match="invalid_grant"):
        SalesforceCrm(settings).login()
    assert fake_salesforce.logins == []  # refused: no session was handed out


def test_check_logs_in_and_queries_read_only(fake_salesforce, salesforce_key, tmp_path):
    fake_salesforce.add_account("Globex", "globex.com")
    settings = make_settings("sqlite://", tmp_path, **fake_salesforce.settings(salesforce_key))
    assert check(settings).ok
    assert {method for method, _ in fake_salesforce.calls} == {"POST", "GET"}
    assert not check(settings.model_copy(update={"salesforce_username": "x@else.example"})).ok
    down = check(settings.model_copy(update={"salesforce_login_url": "https://127.0.0.1:9"}))
    assert not down.ok and "unreachable" in down.detail


# --- trialflow doctor ----------------------------------------------------------------------------

def test_doctor_says_salesforce_works_and_how_it_is_broken(fake_salesforce, salesforce_key, tmp_path):
    from trialflow import doctor

    settings = make_settings("sqlite://", tmp_path, **fake_salesforce.settings(salesforce_key))
    [working] = doctor.run(settings, only=["salesforce"])
    assert working.ok is True and "logged in as integration@acme.example" in working.line()

    other = tmp_path / "other.key"
    other.write_bytes(private_key_pem())
    for wrong in ({"salesforce_private_key_file": other}, {"salesforce_username": "nobody@acme.example"}):
        [refused] = doctor.run(settings.model_copy(update=wrong), only=["salesforce"])
        assert refused.ok is False and "invalid_grant" in refused.text and "\n" not in refused.line()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    [unreachable] = doctor.run(settings.model_copy(update={"salesforce_login_url": f"https://127.0.0.1:{closed}"}),
                               only=["salesforce"])
    assert unreachable.ok is False and "unreachable" in unreachable.text
    writes = [(m, p) for m, p in fake_salesforce.calls if m not in ("GET",) and p != "/services/oauth2/token"]
    assert writes == []  # a login and a query: nothing written


def test_doctor_says_salesforce_is_not_configured(tmp_path):
    from trialflow import doctor

    [line] = doctor.run(make_settings("sqlite://", tmp_path), only=["salesforce"])
    assert line.ok is None and "accounts.csv" in line.text
