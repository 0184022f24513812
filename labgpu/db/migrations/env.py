"""Alembic environment for the ledger: uses the caller's connection (inside its transaction)
when given one, as :func:`labgpu.db.ledger.upgrade_to_head` does, else opens the configured URL."""

from alembic import context

from labgpu.db.ledger import VERSION_TABLE, Base, ledger_engine

config = context.config


def run_migrations(connection) -> None:
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
        engine = ledger_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as connection:
            run_migrations(connection)
        engine.dispose()
