"""The Alembic migrations and the schema the code uses are the same, on SQLite and PostgreSQL."""
from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from trialflow.db.engine import make_engine
from trialflow.db.migrate import alembic_config, upgrade
from trialflow.db.tables import metadata


def _differences(url: str) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    return diff


def test_migrating_a_fresh_database_gives_exactly_the_schema_the_code_declares(db_url):
    # db_url is already migrated to head (a template copy on SQLite, the session database on PostgreSQL)
    assert _differences(db_url) == []


def test_migrations_downgrade_to_nothing_and_upgrade_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert _differences(url) == []


def test_serve_style_upgrade_is_a_no_op_on_an_up_to_date_database(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    # The chain's one head, as Alembic reads it (revision ids are not always the file's number).
    newest = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert head == newest
