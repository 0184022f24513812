"""Alembic migrations of the ledger database; ``labgpu.db.ledger.Ledger`` runs them to head on open."""
