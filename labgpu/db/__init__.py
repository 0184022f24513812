"""The database: one SQLAlchemy metadata (:mod:`labgpu.db.tables`), its Alembic migrations and
engine plumbing (:mod:`labgpu.db.engine`), and the stores that read and write it: the GPU ledger,
the queue and reclaim notices, sessions, telemetry.

Importing this package (or any module in it) imports every table, so ``Base.metadata`` is always
whole: Alembic, the schema test and any store see the same schema whichever module came first.
"""

from labgpu.db.tables import Base

__all__ = ["Base"]
