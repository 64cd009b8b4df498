"""trialflow's own files on the machine (beat's schedule, the worker's liveness files) live in a
private data directory: TRIALFLOW_DATA_DIR, or the user's data directory; never a fixed path in
/tmp that another user could create first."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_settings
from trialflow import cli
from trialflow.datadir import data_dir, default_data_dir
from trialflow.errors import ConfigError
from trialflow.settings import get_settings
from workers import commands


def test_the_default_is_the_user_s_data_directory_by_the_xdg_convention(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "trialflow"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")   # invalid by the spec: ignored
    assert default_data_dir() == Path.home() / ".local" / "share" / "trialflow"


def test_the_directory_is_created_private(tmp_path, config_dir):
    settings = make_settings("sqlite://", config_dir, data_dir=tmp_path / "data")
    made = data_dir(settings, "worker")
    assert made == tmp_path / "data" / "worker"
    assert (made.stat().st_mode & 0o777, (tmp_path / "data").stat().st_mode & 0o777) == (0o700, 0o700)


def test_a_directory_others_may_write_in_is_refused(tmp_path, config_dir):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="others may write in"):
        data_dir(make_settings("sqlite://", config_dir, data_dir=shared))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a directory away takes root")
def test_a_directory_that_belongs_to_another_user_is_refused(tmp_path, config_dir):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        data_dir(make_settings("sqlite://", config_dir, data_dir=theirs))


@pytest.fixture
def beat_check(monkeypatch, capsys):
    """`trialflow beat --check` with TRIALFLOW_DATA_DIR set to the directory given: (exit code, output)."""
    def check(data: Path) -> tuple[int, str]:
        monkeypatch.setenv("TRIALFLOW_DATA_DIR", str(data))
        get_settings.cache_clear()
        code = cli.main(["beat", "--check"])
        said = capsys.readouterr()
        return code, said.out + said.err
    yield check
    get_settings.cache_clear()


def test_beat_keeps_its_schedule_in_the_data_directory_and_its_check_watches_that_file(tmp_path, config_dir,
                                                                                      beat_check):
    data = tmp_path / "data"
    schedule = commands.beat_schedule(make_settings("sqlite://", config_dir, data_dir=data))
    assert schedule.parent == data

    assert beat_check(data)[0] == 1, "never saved"
    saved = schedule.with_name(schedule.name + ".db")   # the dbm backend picks the suffix
    saved.write_bytes(b"")
    code, out = beat_check(data)
    assert code == 0 and "alive" in out
    old = time.time() - commands.BEAT_STALE_SECONDS - 1
    os.utime(saved, (old, old))
    code, out = beat_check(data)
    assert code == 1 and "NOT ALIVE" in out


def test_an_unusable_data_directory_stops_beat_with_a_message_naming_the_setting(tmp_path, beat_check):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, said = beat_check(shared)
    assert code == 2
    assert said.startswith("error: TRIALFLOW_DATA_DIR: others may write in")
