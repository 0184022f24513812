"""Quotas: the admins' YAML files -> per-user :class:`Limits`, and what a user may ask to spawn.

One module per concern: :mod:`~labgpu.quota.schema` (sections, fields and the rules between them),
:mod:`~labgpu.quota.reader` (YAML -> data, with positions when a file is wrong),
:mod:`~labgpu.quota.load` (files -> one validated :class:`Policy`, or ``file:line:col`` errors),
:mod:`~labgpu.quota.names` (user names as JupyterHub normalizes them),
:mod:`~labgpu.quota.limits` (:class:`Policy` -> a user's :class:`Limits`; :func:`user_groups`),
:mod:`~labgpu.quota.store` (the policy in force, hot-reloaded), :mod:`~labgpu.quota.errors`
(:class:`PolicyError`) and :mod:`~labgpu.quota.spawn_options` (the spawn form and ``user_options``).

Import from here: ``from labgpu.quota import Limits, PolicyStore, resolve, user_groups``.
"""

from labgpu.quota.errors import PolicyError
from labgpu.quota.limits import (
    BUILTIN,
    BUILTIN_DEFAULTS,
    ImageChoice,
    Limits,
    Policy,
    build_policy,
    jupyterhub_groups,
    listed_members,
    resolve,
    user_groups,
)
from labgpu.quota.load import load_policy, load_policy_text, load_policy_texts, quota_files
from labgpu.quota.schema import FairshareConfig, GpusConfig, PolicyFile
from labgpu.quota.spawn_options import (
    SpawnOptionsError,
    SpawnRequest,
    options_form,
    parse_form,
    validate_user_options,
)
from labgpu.quota.store import DEFAULT_QUOTAS_PATH, PolicyStore, ReloadResult, default_paths, split_paths

__all__ = [
    "BUILTIN",
    "BUILTIN_DEFAULTS",
    "DEFAULT_QUOTAS_PATH",
    "FairshareConfig",
    "GpusConfig",
    "ImageChoice",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyStore",
    "ReloadResult",
    "SpawnOptionsError",
    "SpawnRequest",
    "build_policy",
    "default_paths",
    "jupyterhub_groups",
    "listed_members",
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
