"""The signup spool on disk: one fsynced file per signup, checked by its checksum, one replayer at a time."""
from __future__ import annotations

import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

from trialflow.settings import Settings
from trialflow.spool import DamagedRecord, Spool, SpooledSignup, default_data_dir, spool_dir

RECEIVED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SIGNUP = {"email": "bob@acme-corp.com", "name": "Bob & Co"}


def test_a_spooled_signup_reads_back_as_it_was_kept(tmp_path):
    spool = Spool(tmp_path / "spool")
    first = spool.append(SIGNUP, b'{"email": "bob@acme-corp.com", "name": "Bob & Co"}', "OperationalError: x",
                         RECEIVED)
    second = spool.append({"email": "kim@acme-corp.com"}, b'{"email": "kim@acme-corp.com"}', "e", RECEIVED)

    records = list(spool.records())
    assert [r.id for r in records] == [first, second]  # oldest first
    assert spool.count() == 2
    bob = records[0]
    assert isinstance(bob, SpooledSignup)
    assert (bob.signup, bob.received_at, bob.error) == (SIGNUP, RECEIVED, "OperationalError: x")
    assert json.loads(bob.body) == SIGNUP


def test_a_spool_file_is_readable_by_its_owner_only_and_nothing_half_written_is_left(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append(SIGNUP, b"{}", "e", RECEIVED)
    [name] = os.listdir(spool.directory)
    assert name.endswith(".json")
    assert stat.S_IMODE((spool.directory / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700


def test_a_file_damaged_on_disk_is_recognised_not_half_read(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append(SIGNUP, b"{}", "e", RECEIVED)
    [path] = spool.directory.glob("*.json")
    path.write_text(path.read_text().replace("bob@acme-corp.com", "eve@evil.example"))
    (spool.directory / "00000000000000000001-aaaaaaaaaaaa.json").write_text('{"format": 1, "id": "trunc')

    records = list(spool.records())
    assert all(isinstance(r, DamagedRecord) for r in records) and len(records) == 2
    assert {r.reason for r in records} == {"its checksum does not match its content",
                                           "it cannot be read (JSONDecodeError)"}
    assert "eve@evil.example" in records[1].text  # kept whole, for support to read


def test_a_removed_record_is_gone_and_temporaries_of_a_dead_writer_are_found(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append(SIGNUP, b"{}", "e", RECEIVED)
    [record] = spool.records()
    spool.remove(record)
    spool.remove(record)  # twice is fine: another replayer may have removed it
    assert spool.count() == 0 and list(spool.records()) == []

    stale = spool.directory / ".00000000000000000001-aaaaaaaaaaaa.tmp"
    stale.write_text("{")
    fresh = spool.directory / ".00000000000000000002-aaaaaaaaaaaa.tmp"
    fresh.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert spool.stale_temporaries() == [stale]


def test_only_one_replayer_holds_the_spool_at_a_time(tmp_path):
    one, other = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    with one.replaying() as held:
        assert held
        with other.replaying() as also:
            assert not also
    with other.replaying() as held_after:
        assert held_after


def test_an_empty_or_missing_spool_has_nothing(tmp_path):
    spool = Spool(tmp_path / "never-made")
    assert spool.count() == 0 and list(spool.records()) == [] and spool.stale_temporaries() == []


def test_the_spool_lives_in_its_setting_or_under_the_data_directory(tmp_path, monkeypatch):
    assert spool_dir(Settings(spool_dir=tmp_path / "mine", _env_file=None)) == tmp_path / "mine"
    monkeypatch.delenv("TRIALFLOW_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "trialflow"
    assert spool_dir(Settings(_env_file=None)) == tmp_path / "xdg" / "trialflow" / "spool"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "trialflow"
