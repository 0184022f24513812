"""Quotas: the admins' YAML files -> per-user :class:`Limits` (schema, reading with file:line:col
errors, merge, resolve, a hot-reloading store) and validation of what a user asks to spawn.

Import from here: ``from labgpu.quota import Limits, PolicyStore, resolve, user_groups``.
"""

from labgpu.quota.policy import (
    BUILTIN,
    BUILTIN_DEFAULTS,
    DEFAULT_QUOTAS_PATH,
    ImageChoice,
    Limits,
    Policy,
    PolicyError,
    PolicyFile,
    PolicyStore,
    ReloadResult,
    default_paths,
    jupyterhub_groups,
    load_policy,
    load_policy_text,
    load_policy_texts,
    quota_files,
    resolve,
    split_paths,
    user_groups,
)
from labgpu.quota.spawn_options import (
    SpawnOptionsError,
    SpawnRequest,
    options_form,
    parse_form,
    validate_user_options,
)

__all__ = [
    "BUILTIN",
    "BUILTIN_DEFAULTS",
    "DEFAULT_QUOTAS_PATH",
    "ImageChoice",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyStore",
    "ReloadResult",
    "SpawnOptionsError",
    "SpawnRequest",
    "default_paths",
    "jupyterhub_groups",
    "load_policy",
    "load_policy_text",
    "load_policy_texts",
    "options_form",
    "parse_form",
    "quota_files",
    "resolve",
    "split_paths",
    "user_groups",
    "validate_user_options",
]
