"""The signup spool: signups kept on local disk while the database cannot be reached.

One file per signup, ``<id>.json``, in the spool directory (``TRIALFLOW_SPOOL_DIR``, by default
``<data dir>/spool``). A file is written whole under a temporary name, fsynced, renamed into
place and the directory fsynced, all before the caller is answered: a signup answered 202 is on
disk, and a file is never seen half-written. Each record carries a SHA-256 of its content, so a
file damaged on disk is recognised as such (and handed to support) rather than half-read.

Files are only ever created and deleted, never rewritten; a record's id (arrival time, then
random) orders them and is the key that makes handing one to support happen once
(``services.spooled_signups`` replays them). One replayer at a time holds the directory's lock.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1
SUFFIX = ".json"
LOCK_NAME = ".replay.lock"
# A temporary file older than this was left by a process that died mid-write: its caller was
# never answered 202, so nothing was promised about it.
STALE_TEMPORARY_SECONDS = 60.0


class _HasDirectories(Protocol):
    spool_dir: Path | None


def default_data_dir() -> Path:
    """trialflow's per-user data directory: ``$XDG_DATA_HOME/trialflow`` or ``~/.local/share/trialflow``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trialflow"


def spool_dir(settings: _HasDirectories) -> Path:
    """``TRIALFLOW_SPOOL_DIR``, else ``<data dir>/spool`` (``TRIALFLOW_DATA_DIR`` when the
    settings have one, else the per-user data directory)."""
    if settings.spool_dir is not None:
        return Path(settings.spool_dir)
    data_dir = getattr(settings, "data_dir", None)
    return (Path(data_dir) if data_dir else default_data_dir()) / "spool"


@dataclass(frozen=True)
class SpooledSignup:
    id: str
    received_at: datetime
    signup: dict[str, Any]     # the signup's fields as the caller sent them
    body: str                  # the request body, for support should the replay fail
    error: str                 # why it was spooled
    path: Path


@dataclass(frozen=True)
class DamagedRecord:
    """A spool file that cannot be trusted (its checksum or its JSON is wrong): kept for support as text."""
    id: str
    text: str
    reason: str
    path: Path


def _checksum(record: dict[str, Any]) -> str:
    content = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Spool:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    # --- writing -------------------------------------------------------------------------------

    def append(self, signup: dict[str, Any], body: bytes, error: str, received_at: datetime) -> str:
        """Keep one signup durably; returns its record id. Raises OSError when the disk will not take it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        record_id = f"{time.time_ns():020d}-{secrets.token_hex(6)}"
        record: dict[str, Any] = {"format": FORMAT, "id": record_id, "received_at": received_at.isoformat(),
                                  "signup": signup, "body": body.decode("utf-8", "replace"), "error": error}
        record["sha256"] = _checksum(record)
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        temporary = self.directory / f".{record_id}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # people's emails: owner only
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, self.directory / f"{record_id}{SUFFIX}")
        self._sync_directory()
        return record_id

    def remove(self, record: SpooledSignup | DamagedRecord) -> None:
        """The record is in the database now (as a trial, or kept for support): forget it."""
        record.path.unlink(missing_ok=True)  # (another replayer may have got there first)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        try:
            return sum(1 for entry in os.scandir(self.directory) if entry.name.endswith(SUFFIX))
        except FileNotFoundError:
            return 0

    def records(self) -> Iterator[SpooledSignup | DamagedRecord]:
        """The spooled signups, oldest first."""
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.name.endswith(SUFFIX))
        except FileNotFoundError:
            return
        for name in names:
            path = self.directory / name
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            yield _parse(path, text)

    def stale_temporaries(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        return [Path(e.path) for e in entries if e.name.endswith(".tmp") and e.stat().st_mtime < cutoff]

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        """Hold the spool for one replay: True when this process has it, False when another does."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _parse(path: Path, text: str) -> SpooledSignup | DamagedRecord:
    record_id = path.name.removesuffix(SUFFIX)
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("sha256") != _checksum(record):
            return DamagedRecord(record_id, text, "its checksum does not match its content", path)
        if record.get("format") != FORMAT or record.get("id") != record_id or not isinstance(record.get("signup"), dict):
            return DamagedRecord(record_id, text, "it is not a spooled signup trialflow can read", path)
        return SpooledSignup(record_id, datetime.fromisoformat(record["received_at"]), record["signup"],
                             str(record.get("body") or ""), str(record.get("error") or ""), path)
    except (ValueError, TypeError, KeyError) as exc:
        return DamagedRecord(record_id, text, f"it cannot be read ({type(exc).__name__})", path)
