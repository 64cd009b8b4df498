"""Bring a database's schema up to date with Alembic (``trialflow serve`` does this before it serves)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from trialflow.db.engine import make_engine, normalize_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", progress: Callable[[str, int, int], None] | None = None) -> None:
    cfg = alembic_config(url)
    if progress is not None:
        pending = len(pending_revisions(url))
        applied = 0

        def one_applied(**_: object) -> None:
            nonlocal applied
            applied += 1
            progress("migrations", applied, pending)
        if pending:
            cfg.attributes["on_version_apply"] = one_applied
    command.upgrade(cfg, revision)


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def current_revisions(url: str) -> tuple[str, ...]:
    """The revisions the database is at (empty: never migrated). Reads only."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def pending_revisions(url: str) -> list[str]:
    """The migrations ``upgrade`` would apply, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(url))
    current = current_revisions(url)
    lower = current[0] if len(current) == 1 else "base"
    revisions = [r.revision for r in script.iterate_revisions("heads", lower)]
    return [r for r in reversed(revisions) if r not in current]
