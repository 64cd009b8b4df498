"""Absences and departures: people say they are away with `/trial away <date>` (or staff.csv's
away_until), the rotation skips them and their prompts and decisions go to their backup, or to the
trial's AE; someone marked inactive in staff.csv has their open trials reassigned, the new owner
told, and `trialflow config load` says so."""
from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.integration.test_sweep import act, effects, history
from tests.support.block_kit import assert_valid_message
from tests.support.config import STAFF, write_config
from tests.support.processes import trialflow_env
from tests.support.signed import post_command, signing_settings, slash_command
from tests.support.steps import signup
from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.errors import NotAllowed
from trialflow.runtime import Runtime
from trialflow.services.coverage import reassign_from_inactive
from trialflow.services.directory import Directory
from trialflow.services.reference import load_reference_data
from trialflow.services.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ",away_until,backup,weight,max_open_trials"


def staff(**cells: str) -> str:
    """STAFF with the optional columns; ``cells`` maps an email's local part to its four cells."""
    lines = STAFF.strip().splitlines()
    return "\n".join([lines[0] + COLUMNS] + [line + "," + cells.get(line.split("@", 1)[0], ",,,")
                                              for line in lines[1:]]) + "\n"


@pytest.fixture
def settings(db_url, config_dir):
    return make_settings(db_url, config_dir, **signing_settings())


def reload(runtime, config_dir, text: str):
    (config_dir / "staff.csv").write_text(text)
    return load_reference_data(runtime.session_factory, config_dir, runtime.clock.now())



def people_of(rt, trial_id: str) -> tuple[str | None, str | None]:
    with rt.session_factory() as s:
        row = s.execute(select(tables.trials.c.ae, tables.trials.c.ce).where(tables.trials.c.id == trial_id)).one()
    return row.ae, row.ce


def away_until(rt, email: str) -> date | None:
    with rt.session_factory() as s:
        return s.scalar(select(tables.staff.c.away_until).where(tables.staff.c.email == email))


def command(client, clock, text: str, user: str) -> str:
    response = post_command(client, slash_command(text, user), clock.now())
    assert response.status_code == 200, response.text
    return response.json()["text"]


def test_trial_away_and_back_from_slack_and_a_config_load_keeps_what_the_file_does_not_set(
        client, runtime, clock, config_dir):
    answer = command(client, clock, "away 2026-01-09", "U0CE00001")
    assert "away through 2026-01-09" in answer and "each trial's AE" in answer
    assert away_until(runtime, "carol.ce@example.com") == date(2026, 1, 9)
    assert "past" in command(client, clock, "away 2025-12-31", "U0CE00001")
    assert "Usage" in command(client, clock, "away next-week", "U0CE00001")

    picked = [people_of(runtime, signup(runtime, f"lead@{d}"))[1] for d in ("globex.com", "xn--bcher-kva.example")]
    assert picked == ["chris.ce@example.com", "chris.ce@example.com"]

    report = reload(runtime, config_dir, staff())  # away_until blank in the file: Slack's answer stands
    assert report.away_kept == ["carol.ce@example.com"]
    assert away_until(runtime, "carol.ce@example.com") == date(2026, 1, 9)
    reload(runtime, config_dir, staff(**{"carol.ce": "2026-01-20,,,"}))  # the file sets it: the file wins
    assert away_until(runtime, "carol.ce@example.com") == date(2026, 1, 20)

    assert "Welcome back" in command(client, clock, "back", "U0CE00001")
    assert away_until(runtime, "carol.ce@example.com") is None
    assert reload(runtime, config_dir, staff()).away_kept == []


def test_an_away_ces_prompts_and_decisions_go_to_their_backup_else_to_the_trials_ae(runtime, clock, config_dir):
    lead = signup(runtime, "pat@unknown-co.example")
    act(runtime, lead, lc.QUALIFY, "U0SDR0001")
    ae, ce = people_of(runtime, lead)
    assert ce == "carol.ce@example.com"
    act(runtime, lead, lc.MARK_INSTANCE_READY, "U0CLOUD01", host="pat.sourcegraph.com")
    reload(runtime, config_dir, staff(**{"carol.ce": "2026-01-09,chris.ce@example.com,,"}))

    clock.advance(days=1, minutes=1)
    sweep(runtime)
    [to_backup] = effects(runtime, lead, "slack.message", lc.REMIND_HAND_OFF)
    assert to_backup["text"].startswith(":bell: CE <@U0CE00002> (for Carol CE, away until 01-09)")
    assert_valid_message(to_backup)

    reload(runtime, config_dir, staff(**{"carol.ce": "2026-01-09,,,"}))  # no backup: the trial's AE
    clock.advance(days=1)
    sweep(runtime)
    to_ae = effects(runtime, lead, "slack.message", lc.REMIND_HAND_OFF)[-1]
    mention = {"alice.ae@example.com": "<@U0AE00001>", "andy.ae@example.com": "<@U0AE00002>"}[ae]
    assert to_ae["text"].startswith(f":bell: CE {mention} (for Carol CE, away until 01-09)")

    with pytest.raises(NotAllowed):  # Chris is nobody's backup any more
        act(runtime, lead, lc.HAND_OFF, "U0CE00002")
    reload(runtime, config_dir, staff(**{"carol.ce": "2026-01-09,chris.ce@example.com,,"}))
    act(runtime, lead, lc.HAND_OFF, "U0CE00002")
    assert [h[1] for h in history(runtime, lead) if h[0] == lc.HAND_OFF] == ["U0CE00002"]


def test_deactivating_a_ce_reassigns_their_open_trials_and_tells_the_new_owner(runtime, clock, config_dir):
    open_trial = signup(runtime, "gina@globex.com")               # CE carol (first turn), active
    other = signup(runtime, "hans@xn--bcher-kva.example")        # CE chris
    ended = signup(runtime, "pat@unknown-co.example")
    act(runtime, ended, lc.QUALIFY, "U0SDR0001")                   # CE carol again
    act(runtime, ended, lc.TERMINATE, "U0ADMIN01", reason="no longer interested")
    assert people_of(runtime, open_trial)[1] == people_of(runtime, ended)[1] == "carol.ce@example.com"

    reload(runtime, config_dir, STAFF.replace("carol-ce,true", "carol-ce,false"))
    moved = reassign_from_inactive(runtime)
    assert [(m.trial_id, m.role, m.before, m.after) for m in moved] == [
        (open_trial, "ce", "carol.ce@example.com", "chris.ce@example.com")]
    assert people_of(runtime, open_trial)[1] == "chris.ce@example.com"
    assert people_of(runtime, ended)[1] == "carol.ce@example.com"  # a finished trial keeps its history
    assert people_of(runtime, other)[1] == "chris.ce@example.com"
    [told] = effects(runtime, open_trial, "slack.message", lc.REASSIGN)
    assert told["channel"] == "#cloud-trial-globex" and "CE <@U0CE00002>" in told["text"]
    assert "CE carol.ce@example.com no longer active" in told["text"]
    assert_valid_message(told)
    [step] = [h for h in history(runtime, open_trial) if h[0] == lc.REASSIGN]
    assert step[1] == "system" and step[2]["routing"]["ce"].startswith("Chris CE: next in rotation")
    assert reassign_from_inactive(runtime) == []  # nothing left to do


def test_config_load_reports_the_reassignments(sqlite_url, tmp_path, config_dir, clock):
    runtime = Runtime(make_settings(sqlite_url, config_dir), clock=clock)
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    trial_id = signup(runtime, "gina@globex.com")
    assert people_of(runtime, trial_id)[1] == "carol.ce@example.com"
    config = write_config(tmp_path / "later", staff=STAFF.replace("carol-ce,true", "carol-ce,false"))
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "config", "load", "--dir", str(config)], cwd=ROOT,
                          env=trialflow_env(database_url=sqlite_url, config_dir=str(config)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (f"reassigned: {trial_id} gina@globex.com: CE carol.ce@example.com (inactive) → chris.ce@example.com"
            in done.stdout)
    assert "1 assignment(s) moved off inactive staff" in done.stdout
    with runtime.session_factory() as s:
        assert Directory(s).by_email("carol.ce@example.com").active is False
    assert people_of(runtime, trial_id)[1] == "chris.ce@example.com"
    runtime.close()
