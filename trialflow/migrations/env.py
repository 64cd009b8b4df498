from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from trialflow.db.engine import make_engine, normalize_url
from trialflow.db.tables import metadata

config = context.config
url: str | None
if config.config_file_name is not None:
    # The alembic command line (alembic.ini): the database is the one trialflow is configured for.
    from trialflow.settings import Settings
    url = normalize_url(Settings().database_url)
else:
    url = config.get_main_option("sqlalchemy.url")
# trialflow.db.migrate.upgrade's progress: called after each migration applied.
_on_version_apply = config.attributes.get("on_version_apply")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                          on_version_apply=_on_version_apply)
        with context.begin_transaction():
            context.run_migrations()
        return
    if url is None:
        raise RuntimeError("Nothing to migrate: give alembic a connection or set sqlalchemy.url.")
    engine = make_engine(url, poolclass=pool.NullPool) if not url.startswith("sqlite") else make_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True,
                          on_version_apply=_on_version_apply)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
