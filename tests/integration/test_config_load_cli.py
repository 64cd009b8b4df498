"""`trialflow config load` on 100,000 accounts, through the real command line: a progress bar on a
terminal, an error that names the file and line, and nothing half-imported."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import func, select

from tests.support.config import write_config
from trialflow.db import tables
from trialflow.db.engine import make_engine

ACCOUNTS = 100_000
HEADER = "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\n"


def write_accounts(directory: Path, last_line: str | None = None) -> Path:
    """100,000 accounts (every tenth a named account); ``last_line`` replaces the last one."""
    rows = [f"account-{i:06d}.example,Account {i},{'true' if i % 3 == 0 or i % 10 == 0 else 'false'},"
            f"{'true' if i % 10 == 0 else 'false'},{'nina.named@example.com' if i % 10 == 0 else ''},"
            f"{'alice.ae@example.com' if i % 10 == 0 else ''},{'carol.ce@example.com' if i % 10 == 0 else ''}\n"
            for i in range(ACCOUNTS)]
    if last_line is not None:
        rows[-1] = last_line + "\n"
    write_config(directory)
    (directory / "accounts.csv").write_text(HEADER + "".join(rows))
    return directory


def env_for(db_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    return {**env, "TRIALFLOW_DATABASE_URL": db_url}


def config_load(db_url: str, directory: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trialflow.cli", "config", "load", "--dir", str(directory)],
                          env=env_for(db_url), capture_output=True, text=True, timeout=120, cwd=cwd)


def config_load_on_a_terminal(db_url: str, directory: Path, cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal, as a person would: returns (exit code, stdout, terminal)."""
    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "trialflow.cli", "config", "load", "--dir", str(directory)],
                            env=env_for(db_url), stdout=subprocess.PIPE, stderr=side, text=True, cwd=cwd)
    os.close(side)
    chunks: list[bytes] = []

    def drain() -> None:  # read while it runs, or a full terminal buffer would block the writer
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(main)
    return proc.returncode, out, b"".join(chunks).decode()


def count_accounts(db_url: str) -> tuple[int, bool]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            total = conn.scalar(select(func.count()).select_from(tables.accounts))
            acme = conn.scalar(select(func.count()).select_from(tables.accounts)
                               .where(tables.accounts.c.domain == "acme-corp.com"))
        return total, bool(acme)
    finally:
        engine.dispose()


def test_an_error_on_the_last_of_100000_lines_names_it_and_imports_nothing(db_url, tmp_path):
    small = write_config(tmp_path / "small")
    assert config_load(db_url, small, tmp_path).returncode == 0
    assert count_accounts(db_url) == (4, True)
    big = write_accounts(tmp_path / "big", last_line="account-last.example,Last One,maybe,false,,,")
    done = config_load(db_url, big, tmp_path)
    assert done.returncode == 2
    assert f"error: {big / 'accounts.csv'}:{ACCOUNTS + 1}: prequalified must be true or false, not 'maybe'" in done.stderr
    assert "nothing was imported." in done.stderr
    assert done.stdout == ""
    assert count_accounts(db_url) == (4, True)  # the earlier import, untouched


def test_100000_accounts_load_with_a_progress_bar_on_a_terminal(db_url, tmp_path):
    big = write_accounts(tmp_path / "big")
    code, out, terminal = config_load_on_a_terminal(db_url, big, tmp_path)
    assert code == 0, terminal
    assert out.startswith(f"loaded 100,000 accounts, 9 staff, 6 instances (5 new in the pool) from {big}")
    # Rich redraws the bars in place: cursor moves and line erasures between frames, colours within.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", re.sub(r"\x1b\[[0-9;?]*[A-Za-ln-z]", "\n", terminal))
    frames = plain.replace("\r", "\n").splitlines()
    validated = [f.split() for f in frames if f.startswith("accounts.csv: validated")]
    written = [f.split() for f in frames if f.startswith("accounts.csv: written")]
    assert len(validated) >= 3 and len(written) >= 3  # the bars move as the work goes
    assert validated[-1][-2] == written[-1][-2] == "100,000/100,000"
    assert any(frame[-2] not in ("0/100,000", "100,000/100,000") for frame in validated + written)  # midway
    assert count_accounts(db_url) == (ACCOUNTS, False)
