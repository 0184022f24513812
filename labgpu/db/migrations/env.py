"""Alembic environment for the database: uses the caller's connection (inside its transaction)
when given one, as :func:`labgpu.db.engine.upgrade_to_head` does, else opens the configured URL.
The target metadata is every table's (:mod:`labgpu.db.tables`), for ``alembic revision
--autogenerate`` and for the schema test that compares it with a migrated database."""

from alembic import context
from sqlalchemy.engine import Connection

from labgpu.db.engine import VERSION_TABLE, ledger_engine
from labgpu.db.tables import Base

config = context.config


def run_migrations(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=True, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
    else:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("alembic: set sqlalchemy.url (the ledger database) to migrate it")
        engine = ledger_engine(url)
        with engine.begin() as connection:
            run_migrations(connection)
        engine.dispose()
