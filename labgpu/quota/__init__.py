"""Quotas: the admins' YAML files -> per-user :class:`Limits` (schema, reading with file:line:col
errors, merge, resolve, a hot-reloading store) and validation of what a user asks to spawn."""
