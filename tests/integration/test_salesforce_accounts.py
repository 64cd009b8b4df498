"""Named and pre-qualified accounts read from the (fake) Salesforce: ``config load --from salesforce``,
the hourly refresh, all or nothing, and what an account that loses its pre-qualification keeps."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from trialflow import cli
from trialflow.crm.salesforce import SalesforceCrm
from trialflow.db import tables
from trialflow.errors import RetryLater
from trialflow.services import crm_accounts
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.settings import get_settings


@pytest.fixture
def settings(db_url, config_dir, fake_salesforce, salesforce_key):
    return make_settings(db_url, config_dir, **fake_salesforce.settings(salesforce_key))


@pytest.fixture
def acme(fake_salesforce) -> str:
    fake_salesforce.add_account("Acme Corp", "https://www.acme-corp.com", named=True, owner="alice.ae@example.com",
                                named_sdr="nina.named@example.com", ce="carol.ce@example.com")
    fake_salesforce.add_account("Globex", "globex.com")
    return fake_salesforce.add_account("Hooli", "hooli.example")


def _accounts(runtime) -> dict[str, dict]:
    with runtime.session_factory() as s:
        return {r.domain: r._asdict() for r in s.execute(select(tables.accounts))}


def test_config_load_from_salesforce_prints_progress_and_what_changed(runtime, acme, fake_salesforce, salesforce_key,
                                                                      config_dir, monkeypatch, capsys):
    for name, value in {**fake_salesforce.settings(salesforce_key), "database_url": runtime.settings.database_url,
                        "config_dir": config_dir}.items():
        monkeypatch.setenv(f"TRIALFLOW_{name.upper()}", str(value))
    get_settings.cache_clear()
    try:
        assert cli.main(["config", "load", "--from", "salesforce"]) == 0
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert "Salesforce accounts read" in err and "3/3" in err
    # accounts.csv had acme-corp.com, globex.com, initech.com, bücher: Salesforce has acme, globex, hooli.
    assert "accounts: 1 added, 2 removed, 2 changed" in out
    assert set(_accounts(runtime)) == {"acme-corp.com", "globex.com", "hooli.example"}


def test_without_salesforce_config_load_from_salesforce_says_so(runtime, monkeypatch, capsys, config_dir):
    monkeypatch.setenv("TRIALFLOW_DATABASE_URL", runtime.settings.database_url)
    get_settings.cache_clear()
    try:
        assert cli.main(["config", "load", "--from", "salesforce", "--dir", str(config_dir)]) == 2
    finally:
        get_settings.cache_clear()
    assert "Salesforce is not configured" in capsys.readouterr().err


def test_a_load_that_fails_half_way_changes_nothing(runtime, acme, fake_salesforce):
    before = _accounts(runtime)

    def fail_the_next_page(what: str, done: int, total: int) -> None:
        fake_salesforce.fail_next("error.request_limit.403.json")

    with pytest.raises(RetryLater, match="REQUEST_LIMIT_EXCEEDED"):
        crm_accounts.load_from_crm(runtime, SalesforceCrm(runtime.settings), fail_the_next_page)
    assert _accounts(runtime) == before


def test_an_account_that_loses_its_prequalification_keeps_its_live_trial_and_claim(runtime, clock, acme,
                                                                                   fake_salesforce):
    crm_accounts.load_from_crm(runtime, SalesforceCrm(runtime.settings))
    bob = submit_signup(runtime.uow, runtime.settings, runtime.clock, SignupInput("bob@acme-corp.com"))
    assert bob.case == "prequalified_named"
    fake_salesforce.accounts[0].update(Trial_Prequalified__c=False, Named_Account__c=False)

    clock.advance(hours=1)
    report = crm_accounts.refresh_accounts(runtime)
    assert report is not None and report.removed == ["acme-corp.com"]
    with runtime.session_factory() as s:
        assert s.scalar(select(tables.trials.c.state).where(tables.trials.c.id == bob.trial_id)) == "active"
        assert s.scalar(select(tables.domain_claims.c.trial_id).where(
            tables.domain_claims.c.domain == "acme-corp.com")) == bob.trial_id
    amy = submit_signup(runtime.uow, runtime.settings, runtime.clock, SignupInput("amy@acme-corp.com"))
    assert amy.case == "existing_instance"


def test_the_hourly_refresh_reads_salesforce_once_an_hour(runtime, clock, acme, fake_salesforce):
    assert crm_accounts.refresh_accounts(runtime) is not None
    logins = len(fake_salesforce.logins)
    clock.advance(minutes=59)
    assert crm_accounts.refresh_accounts(runtime) is None
    assert len(fake_salesforce.logins) == logins
    clock.advance(minutes=1)
    assert crm_accounts.refresh_accounts(runtime) is not None


def test_without_salesforce_the_schedule_reads_nothing(db_url, config_dir, clock):
    from trialflow.runtime import Runtime
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    assert crm_accounts.refresh_accounts(rt) is None
    rt.close()


def test_celery_beat_runs_the_accounts_task():
    from workers.celery_app import make_celery_app
    schedule = make_celery_app("redis://127.0.0.1:6379/0").conf.beat_schedule
    assert schedule["crm-accounts"]["task"] == "trialflow.crm_accounts"


@pytest.mark.parametrize("missing", ["salesforce_client_id", "salesforce_username", "salesforce_private_key_file"])
def test_salesforce_settings_are_all_or_none(db_url, config_dir, fake_salesforce, salesforce_key, missing):
    values = {**fake_salesforce.settings(salesforce_key), missing: None}
    with pytest.raises(ValueError, match=f"TRIALFLOW_{missing.upper()}"):
        make_settings(db_url, config_dir, **values)


def test_serve_starting_again_keeps_the_accounts_salesforce_gave(runtime, acme):
    crm_accounts.load_from_crm(runtime, SalesforceCrm(runtime.settings))
    from_salesforce = _accounts(runtime)
    cli.prepare_database(runtime)  # what serve does first: staff.csv and instances.csv, not accounts.csv
    assert _accounts(runtime) == from_salesforce and "hooli.example" in from_salesforce


def test_serve_s_scheduler_reads_the_accounts_without_anyone_asking(runtime, acme):
    import time

    from trialflow.delivery.wiring import start_delivery
    stop = start_delivery(runtime)
    try:
        deadline = time.monotonic() + 10
        while "hooli.example" not in _accounts(runtime) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop()
    assert "hooli.example" in _accounts(runtime)
