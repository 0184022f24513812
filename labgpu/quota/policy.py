"""Where the quota policy used to live, in one 1,400-line module; it is now split by concern
(see :mod:`labgpu.quota`). Kept so that ``from labgpu.quota.policy import ...`` in admins'
configuration and older code still works; new code imports from :mod:`labgpu.quota`.
"""

from labgpu.quota import (
    BUILTIN,
    BUILTIN_DEFAULTS,
    DEFAULT_QUOTAS_PATH,
    FairshareConfig,
    GpusConfig,
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
from labgpu.units import format_duration, format_size, parse_duration, parse_size

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
    "default_paths",
    "format_duration",
    "format_size",
    "jupyterhub_groups",
    "load_policy",
    "load_policy_text",
    "load_policy_texts",
    "parse_duration",
    "parse_size",
    "quota_files",
    "resolve",
    "split_paths",
    "user_groups",
]
