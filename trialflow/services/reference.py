"""Reference data from ``TRIALFLOW_CONFIG_DIR``: accounts.csv, staff.csv, instances.csv.

Every row is validated before anything is written; an error names the file and line, and the
import is all-or-nothing (one transaction). accounts and staff are replaced wholesale (the CSV
is the truth); instances are merged, because a pool instance claimed at run time must stay claimed.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, overload

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain.normalize import PUBLIC_EMAIL_DOMAINS, normalize_domain, normalize_email
from trialflow.errors import ConfigError, InvalidSignup

ACCOUNT_COLUMNS = ["domain", "account_name", "prequalified", "named_account", "named_sdr", "owner_ae", "owner_ce"]
# accounts.csv may also have auto_add_colleagues and prospect_emails (true when blank or absent).
STAFF_COLUMNS = ["email", "name", "role", "slack_user_id", "github_login", "active"]
# staff.csv may also have away_until (ISO date), backup (email), weight (default 1) and
# max_open_trials (blank: no cap). A blank away_until keeps what the person set with /trial away.
INSTANCE_COLUMNS = ["host", "admin_email", "status"]
ROLES = {"inbound_sdr", "named_sdr", "ae", "ce", "cloud", "admin"}
INSTANCE_STATUSES = {"live", "pool"}
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0", ""}

Progress = Callable[[str, int, int], None]  # (file, rows done, rows total)


@dataclass
class LoadReport:
    accounts: int = 0
    staff: int = 0
    instances: int = 0
    pool_added: int = 0
    warnings: list[str] = field(default_factory=list)
    # What this load changed in accounts, by domain (``config load`` prints the counts).
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    away_kept: list[str] = field(default_factory=list)  # away set with /trial away, not in the file


def _bool(value: str, column: str, path: str, line: int) -> bool:
    v = (value or "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{column} must be true or false, not {value!r}", path, line)


def _rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    if not path.exists():
        raise ConfigError("file not found", str(path))
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ConfigError(f"header is missing column(s) {', '.join(missing)}; expected {','.join(columns)}", str(path), 1)
        reader.fieldnames = header
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            if None in row:
                raise ConfigError(f"too many fields (expected {len(header)})", str(path), reader.line_num)
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}


def _text(value: str, column: str, limit: int, path: str, line: int) -> str:
    # The schema's limits, checked here so PostgreSQL never answers with a bare "value too long"
    # (and SQLite, which does not enforce them, never stores what PostgreSQL would refuse).
    if len(value) > limit:
        raise ConfigError(f"{column} is too long ({len(value)} characters, {limit} at most)", path, line)
    return value


@overload
def _email(value: str, column: str, path: str, line: int, required: Literal[True]) -> str: ...
@overload
def _email(value: str, column: str, path: str, line: int, required: bool = False) -> str | None: ...
def _email(value: str, column: str, path: str, line: int, required: bool = False) -> str | None:
    if not value:
        if required:
            raise ConfigError(f"{column} is required", path, line)
        return None
    try:
        return normalize_email(value).address
    except InvalidSignup as e:
        raise ConfigError(f"{column}: {e.message}", path, line) from None


def parse_accounts(path: Path, progress: Progress | None = None, total: int | None = None) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    p = str(path)
    for line, row in _rows(path, ACCOUNT_COLUMNS):
        try:
            domain = normalize_domain(row["domain"])
        except InvalidSignup as e:
            raise ConfigError(f"domain: {e.message}", p, line) from None
        if domain in PUBLIC_EMAIL_DOMAINS:
            raise ConfigError(f"{domain} is a public email domain and cannot be an account", p, line)
        if domain in out:
            raise ConfigError(f"domain {domain} is listed twice", p, line)
        if not row["account_name"]:
            raise ConfigError("account_name is required", p, line)
        _text(row["account_name"], "account_name", 200, p, line)
        named = _bool(row["named_account"], "named_account", p, line)
        prequalified = _bool(row["prequalified"], "prequalified", p, line)
        if named and not prequalified:
            raise ConfigError("a named account is always pre-qualified (set prequalified=true)", p, line)
        out[domain] = {
            "domain": domain, "account_name": row["account_name"], "prequalified": prequalified,
            "named_account": named,
            "named_sdr": _email(row["named_sdr"], "named_sdr", p, line),
            "owner_ae": _email(row["owner_ae"], "owner_ae", p, line),
            "owner_ce": _email(row["owner_ce"], "owner_ce", p, line),
            # Optional column: blank or absent is true (a colleague's signup gets them an account).
            "auto_add_colleagues": _bool(row.get("auto_add_colleagues") or "true", "auto_add_colleagues", p, line),
            # Optional column: blank or absent is true (the prospect gets trialflow's emails).
            "prospect_emails": _bool(row.get("prospect_emails") or "true", "prospect_emails", p, line),
        }
        if progress and len(out) % 5000 == 0:
            progress("accounts.csv: validated", len(out), total or 0)
    return list(out.values())


def parse_staff(path: Path) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    p = str(path)
    for line, row in _rows(path, STAFF_COLUMNS):
        email = _email(row["email"], "email", p, line, required=True)
        if email in out:
            raise ConfigError(f"{email} is listed twice", p, line)
        role = row["role"].lower()
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(sorted(ROLES))}, not {row['role']!r}", p, line)
        _text(row["name"], "name", 200, p, line)
        _text(row["slack_user_id"], "slack_user_id", 32, p, line)
        _text(row["github_login"], "github_login", 64, p, line)
        backup = _email(row.get("backup") or "", "backup", p, line)
        if backup == email:
            raise ConfigError("backup must be someone else", p, line)
        out[email] = {
            "email": email, "name": row["name"] or email, "role": role,
            "slack_user_id": row["slack_user_id"] or None, "github_login": (row["github_login"] or None),
            "active": True if row["active"] == "" else _bool(row["active"], "active", p, line),
            "away_until": _date(row.get("away_until") or "", "away_until", p, line),
            "backup": backup,
            "weight": _number(row.get("weight") or "1", "weight", p, line, float),
            "max_open_trials": (_number(row["max_open_trials"], "max_open_trials", p, line, int)
                                if row.get("max_open_trials") else None),
        }
    for email, person in out.items():
        if person["backup"] and person["backup"] not in out:
            raise ConfigError(f"{email}: backup {person['backup']} is not in staff.csv", p)
    return list(out.values())


def _date(value: str, column: str, path: str, line: int) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{column} must be an ISO date like 2026-12-08, not {value!r}", path, line) from None


def _number(value: str, column: str, path: str, line: int, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{column} must be a {'whole ' if kind is int else ''}number, not {value!r}", path, line) from None
    if number < 0 or number != number or number in (float("inf"),):
        raise ConfigError(f"{column} must be zero or more, not {value!r}", path, line)
    return number


def parse_instances(path: Path) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    p = str(path)
    for line, row in _rows(path, INSTANCE_COLUMNS):
        try:
            host = normalize_domain(row["host"])
        except InvalidSignup as e:
            raise ConfigError(f"host: {e.message}", p, line) from None
        if host in out:
            raise ConfigError(f"host {host} is listed twice", p, line)
        status = row["status"].lower()
        if status not in INSTANCE_STATUSES:
            raise ConfigError(f"status must be live or pool, not {row['status']!r}", p, line)
        admin = _email(row["admin_email"], "admin_email", p, line, required=(status == "live"))
        out[host] = {"host": host, "admin_email": admin, "status": status}
    return list(out.values())


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


_ACCOUNT_FIELDS = ("account_name", "prequalified", "named_account", "named_sdr", "owner_ae", "owner_ce",
                   "auto_add_colleagues", "crm_account_id")


def replace_accounts(session: Session, accounts: list[dict[str, Any]], report: LoadReport,
                     progress: Progress | None = None, source: str = "accounts.csv") -> None:
    """Replace the accounts wholesale, in the caller's transaction, noting what was added, removed
    and changed. Trials and domain claims are not touched: an account that is no longer
    pre-qualified keeps its live trials and its instance."""
    rows = [{"crm_account_id": None, **a} for a in accounts]
    before = {r.domain: r._asdict() for r in session.execute(select(tables.accounts))}
    after = {r["domain"]: r for r in rows}
    report.added = sorted(after.keys() - before.keys())
    report.removed = sorted(before.keys() - after.keys())
    report.changed = sorted(d for d in after.keys() & before.keys()
                            if any(before[d].get(f) != after[d].get(f) for f in _ACCOUNT_FIELDS))
    session.execute(delete(tables.accounts))
    batch = 5000
    for i in range(0, len(rows), batch):
        session.execute(insert(tables.accounts), rows[i:i + batch])
        if progress:
            progress(f"{source}: written", min(i + batch, len(rows)), len(rows))


def load_accounts(session_factory: sessionmaker[Session], accounts: list[dict[str, Any]], source: str,
                  progress: Progress | None = None) -> LoadReport:
    """Accounts only (read from the CRM on the schedule), all or nothing."""
    report = LoadReport(accounts=len(accounts))
    with session_factory() as session, session.begin():
        replace_accounts(session, accounts, report, progress, source)
    return report


def load_reference_data(session_factory: sessionmaker[Session], config_dir: Path, now: datetime,
                        progress: Progress | None = None, accounts: list[dict[str, Any]] | None = None,
                        accounts_source: str = "accounts.csv", keep_accounts: bool = False) -> LoadReport:
    """``accounts``: already read from elsewhere (the CRM) instead of accounts.csv. ``keep_accounts``:
    the accounts stay as they are (they come from the CRM, on its own schedule)."""
    config_dir = Path(config_dir)
    if keep_accounts:
        accounts = []
    elif accounts is None:
        accounts_path = config_dir / "accounts.csv"
        total = _count_lines(accounts_path) if accounts_path.exists() else 0
        accounts = parse_accounts(accounts_path, progress, total)
    staff = parse_staff(config_dir / "staff.csv")
    instances = parse_instances(config_dir / "instances.csv")
    report = LoadReport(accounts=len(accounts), staff=len(staff), instances=len(instances))
    known = {s["email"] for s in staff}
    for a in accounts[:100000]:
        for col in ("named_sdr", "owner_ae", "owner_ce"):
            if a[col] and a[col] not in known:
                report.warnings.append(f"{accounts_source}: {a['domain']}: {col} {a[col]} is not in staff.csv")
    del report.warnings[50:]

    with session_factory() as session, session.begin():
        if not keep_accounts:
            replace_accounts(session, accounts, report, progress, accounts_source)
        # /trial away is kept unless the file says otherwise (a blank cell is not "back").
        # (An absence already over is not carried: there is nothing left to keep.)
        away = dict(session.execute(select(tables.staff.c.email, tables.staff.c.away_until)
                                    .where(tables.staff.c.away_until >= now.date())).all())
        for person in staff:
            if person["away_until"] is None and away.get(person["email"]) is not None:
                person["away_until"] = away[person["email"]]
                report.away_kept.append(person["email"])
        session.execute(delete(tables.staff))
        if staff:
            session.execute(insert(tables.staff), staff)
        existing = {r.host: r for r in session.execute(select(tables.instances))}
        for inst in instances:
            current = existing.get(inst["host"])
            if current is None:
                session.execute(insert(tables.instances).values(**inst))
                report.pool_added += inst["status"] == "pool"
            elif current.status == "pool" and inst["status"] == "live":
                session.execute(update(tables.instances).where(tables.instances.c.host == inst["host"])
                                .values(status="live", admin_email=inst["admin_email"]))
            if current is not None and current.status == "terminated":
                # Terminated at run time: reloading the CSV must not route signups back to it.
                report.warnings.append(f"instances.csv: {inst['host']} was terminated; it is not routed to")
                continue
            if inst["status"] == "live":
                domain = inst["admin_email"].split("@", 1)[1]
                if domain in PUBLIC_EMAIL_DOMAINS:
                    # Never "the gmail.com instance": every gmail user would be sent there.
                    report.warnings.append(f"instances.csv: {inst['host']}: its admin {inst['admin_email']} uses the "
                                           f"public mailbox domain {domain}, so no signups are routed to it")
                    continue
                # The first live instance listed for a domain is where its signups go.
                insert_ignore(session, tables.domain_claims, {
                    "domain": domain, "instance_host": inst["host"], "trial_id": None, "claimed_at": now,
                })
        if report.pool_added:
            # New pool capacity arrived: a later low-water mark may raise a new replenish request.
            session.execute(delete(tables.kv).where(tables.kv.c.key == "pool_replenish_open"))
    return report
