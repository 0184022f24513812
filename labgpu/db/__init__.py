"""The database: one SQLAlchemy metadata, its Alembic migrations, and the stores that read and
write it (the GPU ledger, the queue and reclaim notices, sessions, telemetry).

Importing this package imports every table module, so ``Base.metadata`` is always whole.
"""
