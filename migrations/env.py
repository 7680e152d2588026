"""Alembic environment: runs the migrations on the connection or URL given by the caller.

`scoring_pipeline.store.db.migrate` passes an open connection in `config.attributes["connection"]`;
the plain `alembic` CLI falls back to `DATABASE_URL` (or the embedded server).
"""

from alembic import context
from sqlalchemy.engine import Connection

from scoring_pipeline.store.db import VERSION_TABLE, create_engine_for, resolve_database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
        # `scoring-pipeline migrate` says each migration as it is applied.
        on_version_apply=context.config.attributes.get("on_version_apply", ()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine_for(resolve_database_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
