"""Alembic migrations of the ledger database; ``labgpu.ledger.Ledger`` runs them to head on open."""
