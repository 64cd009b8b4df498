"""`trialflow demo` brings its own reference data and settings: a team's own config (with none of
the demo's people) and a half-set environment do not break it."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support.config import write_config
from tests.support.processes import ROOT

TEAM_STAFF = "email,name,role,slack_user_id,github_login,active\nzoe@team.example,Zoe,admin,U0TEAM001,zoe,true\n"
TEAM_ACCOUNTS = "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\nteam.example,Team,true,false,,,\n"


def test_the_demo_runs_its_own_story_whatever_the_configured_reference_data_is(tmp_path):
    team = write_config(tmp_path / "config", TEAM_ACCOUNTS, TEAM_STAFF, "host,admin_email,status\n")
    team_db = tmp_path / "team.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    # The team's own data, where the demo used to look for it (TRIALFLOW_CONFIG_DIR and ./config),
    # and settings the demo must not read (a placeholder secret would stop trialflow at start).
    env.update(TRIALFLOW_CONFIG_DIR=str(team), TRIALFLOW_DATABASE_URL=f"sqlite:///{team_db}",
               TRIALFLOW_SLACK_SIGNING_SECRET="changeme", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "is not in staff.csv" not in done.stdout + done.stderr
    assert "Alice AE clicks 'User added'" in done.stdout and "Carol CE converts Acme Corp" in done.stdout
    assert "effects delivered (dry-run): " in done.stdout
    assert not team_db.exists()  # the team's database was never touched
