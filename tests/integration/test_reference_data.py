"""Reference data from the config directory: errors name the file and line, a load is
all-or-nothing, and a reload keeps what happened at run time (claimed instances)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from tests.support.config import ACCOUNTS, INSTANCES, STAFF, write_config
from trialflow.db import tables
from trialflow.errors import ConfigError
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup

HEADER = "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\n"


def load(runtime, directory, clock):
    return load_reference_data(runtime.session_factory, directory, clock.now())


def table(runtime, t, order_by):
    with runtime.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t).order_by(order_by))]


def everything(runtime):
    return (table(runtime, tables.accounts, tables.accounts.c.domain),
            table(runtime, tables.staff, tables.staff.c.email),
            table(runtime, tables.instances, tables.instances.c.host),
            table(runtime, tables.domain_claims, tables.domain_claims.c.domain))


def config_error(runtime, tmp_path, clock, **files) -> ConfigError:
    directory = write_config(tmp_path / "bad", files.get("accounts", ACCOUNTS), files.get("staff", STAFF),
                             files.get("instances", INSTANCES))
    with pytest.raises(ConfigError) as raised:
        load(runtime, directory, clock)
    return raised.value


@pytest.mark.parametrize("files,where,says", [
    ({"accounts": HEADER + "acme-corp.com,Acme,true,true,,,\nglobex.com,Globex,maybe,false,,,\n"},
     ("accounts.csv", 3), "prequalified must be true or false, not 'maybe'"),
    ({"accounts": "domain,account_name,prequalified\nacme-corp.com,Acme,true\n"},
     ("accounts.csv", 1), "header is missing column(s) named_account, named_sdr, owner_ae, owner_ce"),
    ({"accounts": HEADER + "acme-corp.com,Acme,true,true,,,\n\nACME-CORP.com.,Acme again,true,true,,,\n"},
     ("accounts.csv", 4), "domain acme-corp.com is listed twice"),
    ({"accounts": HEADER + "gmail.com,Google Mail,true,false,,,\n"},
     ("accounts.csv", 2), "gmail.com is a public email domain"),
    ({"accounts": HEADER + "initech.com,Initech,false,true,,,\n"},
     ("accounts.csv", 2), "a named account is always pre-qualified"),
    ({"accounts": HEADER + "acme-corp.com,,true,false,,,\n"},
     ("accounts.csv", 2), "account_name is required"),
    ({"accounts": HEADER + "not_a_domain,Bad,true,false,,,\n"},
     ("accounts.csv", 2), "domain:"),
    ({"accounts": HEADER + "acme-corp.com,Acme,true,true,nina,,\n"},
     ("accounts.csv", 2), "named_sdr:"),
    ({"accounts": HEADER + "acme-corp.com,Acme,true,true,,,,extra\n"},
     ("accounts.csv", 2), "too many fields"),
    ({"accounts": HEADER + "acme-corp.com," + "A" * 201 + ",true,false,,,\n"},
     ("accounts.csv", 2), "account_name is too long"),
    ({"staff": "email,name,role,slack_user_id,github_login,active\nivy@example.com,Ivy,sdr,,,true\n"},
     ("staff.csv", 2), "role must be one of"),
    ({"staff": "email,name,role,slack_user_id,github_login,active\nivy@example.com,Ivy,ae,,,true\nIVY@example.com,Ivy,ae,,,true\n"},
     ("staff.csv", 3), "ivy@example.com is listed twice"),
    ({"staff": "email,name,role,slack_user_id,github_login,active\n,Nobody,ae,,,true\n"},
     ("staff.csv", 2), "email is required"),
    ({"staff": "email,name,role,slack_user_id,github_login,active\nivy@example.com,Ivy,ae,,,sometimes\n"},
     ("staff.csv", 2), "active must be true or false"),
    ({"staff": "email,name,role,slack_user_id,github_login,active\nivy@example.com,Ivy,ae," + "U" * 40 + ",,true\n"},
     ("staff.csv", 2), "slack_user_id is too long"),
    ({"instances": "host,admin_email,status\npool-a.sourcegraph.com,,spare\n"},
     ("instances.csv", 2), "status must be live or pool, not 'spare'"),
    ({"instances": "host,admin_email,status\npool-a.sourcegraph.com,,pool\nlive.sourcegraph.com,,live\n"},
     ("instances.csv", 3), "admin_email is required"),
    ({"instances": "host,admin_email,status\npool-a.sourcegraph.com,,pool\nPOOL-A.sourcegraph.com.,,pool\n"},
     ("instances.csv", 3), "host pool-a.sourcegraph.com is listed twice"),
])
def test_a_config_error_names_the_file_and_line(runtime, tmp_path, clock, files, where, says):
    error = config_error(runtime, tmp_path, clock, **files)
    filename, line = where
    assert error.path.endswith(filename) and error.line == line
    assert f"{filename}:{line}: " in str(error)
    assert says in str(error)


def test_a_missing_file_is_named(runtime, tmp_path, clock):
    directory = write_config(tmp_path / "partial")
    (directory / "staff.csv").unlink()
    with pytest.raises(ConfigError) as raised:
        load(runtime, directory, clock)
    assert str(raised.value).endswith("staff.csv: file not found")


def test_a_bad_last_file_leaves_everything_as_it_was(runtime, tmp_path, clock):
    before = everything(runtime)
    new_accounts = HEADER + "newco.com,NewCo,true,false,,,\n"
    error = config_error(runtime, tmp_path, clock, accounts=new_accounts,
                         instances=INSTANCES + "broken.sourcegraph.com,,unknown\n")
    assert error.path.endswith("instances.csv")
    assert everything(runtime) == before


@contextmanager
def instances_table_missing(runtime):
    """A real fault in the middle of the write: accounts and staff are already replaced in the
    transaction when the instances table turns out not to be there."""
    with runtime.engine.begin() as conn:
        conn.execute(text("ALTER TABLE instances RENAME TO instances_gone"))
    try:
        yield
    finally:
        runtime.engine.dispose()
        with runtime.engine.begin() as conn:
            conn.execute(text("ALTER TABLE instances_gone RENAME TO instances"))


def test_a_database_failure_half_way_through_the_write_imports_nothing(runtime, tmp_path, clock):
    before = everything(runtime)
    directory = write_config(tmp_path / "new", HEADER + "newco.com,NewCo,true,false,,,\n",
                             STAFF.replace("Ivy Inbound", "Ivy Renamed"), INSTANCES)
    with instances_table_missing(runtime), pytest.raises(DBAPIError):
        load(runtime, directory, clock)
    assert everything(runtime) == before


def test_a_reload_replaces_accounts_and_staff_but_keeps_a_claimed_instance_claimed(runtime, config_dir, tmp_path, clock):
    claimed = submit_signup(runtime.uow, runtime.settings, clock, SignupInput(email="bob@acme-corp.com"))
    assert claimed.instance_url == "https://pool-a.sourcegraph.com"

    smaller = HEADER + "acme-corp.com,Acme Corp,true,true,nina.named@example.com,alice.ae@example.com,carol.ce@example.com\n"
    report = load(runtime, write_config(tmp_path / "reload", smaller, STAFF, INSTANCES), clock)

    assert report.accounts == 1 and report.pool_added == 0
    assert [row[0] for row in table(runtime, tables.accounts, tables.accounts.c.domain)] == ["acme-corp.com"]
    instances = {row[0]: row[2] for row in table(runtime, tables.instances, tables.instances.c.host)}
    assert instances["pool-a.sourcegraph.com"] == "live"
    # and the domain still goes to its instance
    colleague = submit_signup(runtime.uow, runtime.settings, clock, SignupInput(email="dana@acme-corp.com"))
    assert colleague.redirect_url == "https://pool-a.sourcegraph.com/sign-in"


def test_new_pool_instances_are_added_on_reload(runtime, tmp_path, clock):
    more = INSTANCES + "pool-f.sourcegraph.com,,pool\n"
    report = load(runtime, write_config(tmp_path / "more", ACCOUNTS, STAFF, more), clock)
    assert report.pool_added == 1
    statuses = {row[0]: row[2] for row in table(runtime, tables.instances, tables.instances.c.host)}
    assert statuses["pool-f.sourcegraph.com"] == "pool"


def test_a_live_instance_makes_its_admins_domain_go_there(runtime):
    claims = table(runtime, tables.domain_claims, tables.domain_claims.c.domain)
    assert [(c[0], c[1]) for c in claims] == [("initech.com", "initech.sourcegraph.com")]


def test_a_live_instance_whose_admin_uses_a_public_mailbox_does_not_claim_that_mailbox_domain(runtime, tmp_path, clock):
    instances = INSTANCES + "personal.sourcegraph.com,someone@gmail.com,live\n"
    report = load(runtime, write_config(tmp_path / "gmail", ACCOUNTS, STAFF, instances), clock)
    claims = [c[0] for c in table(runtime, tables.domain_claims, tables.domain_claims.c.domain)]
    assert "gmail.com" not in claims
    assert any("personal.sourcegraph.com" in w and "gmail.com" in w for w in report.warnings)


def test_unicode_domains_bom_blank_lines_and_padded_headers_are_read(runtime, tmp_path, clock):
    accounts = "\ufeff domain , account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\n\n" \
               "Bücher.Example.,Bücher GmbH,yes,no,,,\n\n"
    report = load(runtime, write_config(tmp_path / "unicode", accounts, STAFF, INSTANCES), clock)
    assert report.accounts == 1
    assert [r[:2] for r in table(runtime, tables.accounts, tables.accounts.c.domain)] == [("xn--bcher-kva.example", "Bücher GmbH")]


def test_accounts_naming_people_missing_from_staff_csv_load_with_a_warning(runtime, tmp_path, clock):
    accounts = HEADER + "acme-corp.com,Acme,true,true,nina.named@example.com,ghost.ae@example.com,\n"
    report = load(runtime, write_config(tmp_path / "ghost", accounts, STAFF, INSTANCES), clock)
    assert report.accounts == 1
    assert report.warnings == ["accounts.csv: acme-corp.com: owner_ae ghost.ae@example.com is not in staff.csv"]


def test_reloading_a_csv_that_still_lists_a_terminated_instance_as_live_does_not_route_signups_to_it(
        runtime, tmp_path, clock):
    from trialflow.services.directory import Directory
    from trialflow.services.trials import Command, run
    bob = submit_signup(runtime.uow, runtime.settings, clock, SignupInput(email="bob@acme-corp.com"))
    with runtime.session_factory() as s:
        carol = Directory(s).by_slack_id("U0CE00001")
    run(runtime, Command(bob.trial_id, "terminate", "U0CE00001", carol, {"reason": "no longer needed"}))

    stale = INSTANCES + "pool-a.sourcegraph.com,bob@acme-corp.com,live\n"
    stale = stale.replace("pool-a.sourcegraph.com,,pool\n", "")
    report = load(runtime, write_config(tmp_path / "stale", ACCOUNTS, STAFF, stale), clock)

    assert any("pool-a.sourcegraph.com was terminated" in w for w in report.warnings)
    claims = [c[0] for c in table(runtime, tables.domain_claims, tables.domain_claims.c.domain)]
    assert "acme-corp.com" not in claims
    dana = submit_signup(runtime.uow, runtime.settings, clock, SignupInput(email="dana@acme-corp.com"))
    assert dana.redirect_url != "https://pool-a.sourcegraph.com/sign-in"
