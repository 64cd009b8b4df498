"""Bring a database's schema up to date with Alembic (``trialflow serve`` does this before it serves)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from trialflow.db.engine import normalize_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
