"""What an admin's configuration may add to a workspace container: an allowlist, not a denylist.

DockerSpawner hands ``extra_create_kwargs`` and ``extra_host_config`` to Docker as they are, and
``volumes``/``mounts`` as binds. Any of them can undo a workspace's isolation (``network_mode:
host``, ``volumes_from``, ``runtime``, a bind of the Docker socket or of ``/var/lib``, ``user: "00"``),
and a denylist always misses one. So every key an admin may set is listed here with a check of its
value, and anything else is refused with the reason. The hub checks the configuration as written
when it starts (:func:`admin_config_problems`: a hub that would refuse every spawn does not start),
and the builder checks what each spawn renders from it (:func:`labgpu.hub.containers.container_config`).

Pure: no Docker, no files. A host path is judged by its text (normalized); a symlink on the host
that leads into a forbidden directory is the admin's to avoid.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ContainerConfigError(ValueError):
    """The requested container would be unsafe or malformed; the message says what to change."""


# Host directories that hold the Docker engine, the host's runtime state or its system. A bind of
# one of them, of anything inside one, or of a directory that contains one (``/``, ``/var``)
# gives the workspace the host: /run and /var/run hold docker.sock and containerd's socket,
# /var/lib holds every container's and volume's files.
FORBIDDEN_HOST_ROOTS = (
    "/run",
    "/var/run",
    "/var/lib",
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/boot",
    "/root",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/snap",
)

_VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_CPUSET_RE = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
_USER_RE = re.compile(r"^([0-9]+)(?::([0-9]+))?$")
# Environment variables the hub sets itself: an admin's value would lie to the workspace about
# its GPUs or break its connection to the hub.
_HUB_ENV_PREFIXES = ("JUPYTERHUB_", "LABGPU_")
_HUB_ENV = ("NVIDIA_VISIBLE_DEVICES",)
_HUB_LABEL_PREFIX = "org.labgpu."


# --- host paths and volumes ----------------------------------------------------------------------


def normalize_host_path(source: str) -> str:
    """``//var/run/./docker.sock`` -> ``/var/run/docker.sock`` (POSIX keeps a leading ``//``; the
    kernel does not)."""
    path = posixpath.normpath(source)
    return "/" + path.lstrip("/")


def host_path_problem(source: str) -> str | None:
    """Why the host path ``source`` may not be mounted into a workspace, or None."""
    path = normalize_host_path(source)
    for root in FORBIDDEN_HOST_ROOTS:
        if path == root or path.startswith(root + "/"):
            return f"{source!r} is in {root}, which gives a workspace control of the host"
        if root.startswith(path.rstrip("/") + "/"):
            return f"{source!r} contains {root}, which gives a workspace control of the host"
    return None


def _source_problem(source: Any) -> str | None:
    if not isinstance(source, str) or not source:
        return f"the source {source!r} must be an absolute host path or a Docker volume name"
    if source.startswith("/"):
        return host_path_problem(source)
    if not _VOLUME_NAME_RE.match(source):
        return f"the source {source!r} must be an absolute host path or a Docker volume name (letters, digits, _ . -)"
    return None


def _target_problem(target: Any) -> str | None:
    if not isinstance(target, str) or not target.startswith("/") or normalize_host_path(target) == "/":
        return f"the mount point {target!r} must be an absolute path in the workspace other than /"
    return None


def bind_problems(where: str, source: Any, target: Any) -> tuple[dict[str, str] | None, list[str]]:
    """One ``volumes`` entry (``source: target`` or ``source: {bind, mode[, propagation]}``) as a
    docker-py bind, or the problems with it."""
    mode: Any = "rw"
    problems = []
    if isinstance(target, Mapping):
        unknown = sorted(str(k) for k in target if k not in ("bind", "mode", "propagation"))
        if unknown:
            problems.append(f"{where} {source!r}: unknown key(s) {', '.join(unknown)} (allowed: bind, mode)")
        if target.get("propagation") not in (None, "private", "rprivate"):
            problems.append(
                f"{where} {source!r}: propagation {target['propagation']!r} is not allowed "
                "(mounts made in a workspace must not reach the host)"
            )
        mode = target.get("mode", "rw")
        target = target.get("bind")
    for problem in (_source_problem(source), _target_problem(target)):
        if problem:
            problems.append(f"{where}: {problem}")
    if mode not in ("rw", "ro"):
        problems.append(f"{where} {source!r}: mode must be 'rw' or 'ro' (got {mode!r})")
    if problems:
        return None, problems
    return {"bind": normalize_host_path(str(target)), "mode": str(mode)}, []


def parse_binds(binds: Any) -> tuple[dict[Any, Any], list[str]]:
    """docker-py's ``{source: {bind, mode}}`` or the CLI's ``["src:dst[:mode]", ...]`` as a mapping."""
    if isinstance(binds, Mapping):
        return dict(binds), []
    if not isinstance(binds, (list, tuple)):
        return {}, [f"extra_host_config.binds must be a mapping or a list of 'source:target[:mode]' (got {binds!r})"]
    parsed: dict[Any, Any] = {}
    problems = []
    for entry in binds:
        parts = str(entry).split(":")
        if len(parts) not in (2, 3):
            problems.append(f"extra_host_config.binds: {entry!r} must be 'source:target' or 'source:target:mode'")
            continue
        parsed[parts[0]] = {"bind": parts[1], "mode": parts[2] if len(parts) == 3 else "rw"}
    return parsed, problems


def checked_binds(where: str, volumes: Mapping[Any, Any]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Every ``volumes`` entry as a docker-py bind, and the problems of those refused."""
    binds: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for source, target in volumes.items():
        bind, found = bind_problems(where, source, target)
        problems += found
        if bind is not None:
            binds[normalize_host_path(source) if source.startswith("/") else source] = bind
    return binds, problems


_MOUNT_KEYS = ("Target", "Source", "Type", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions")


def mount_problems(mounts: Sequence[Any]) -> list[str]:
    """DockerSpawner's ``mounts`` (docker.types.Mount: ``{"Type", "Source", "Target", ...}``)."""
    problems = []
    for i, mount in enumerate(mounts):
        where = f"mounts[{i}]"
        if not isinstance(mount, Mapping):
            problems.append(f"{where} must be a mapping like docker.types.Mount (got {mount!r:.80})")
            continue
        unknown = sorted(str(k) for k in mount if k not in _MOUNT_KEYS)
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(_MOUNT_KEYS)})")
        kind, source = mount.get("Type", "volume"), mount.get("Source")
        target_problem = _target_problem(mount.get("Target"))
        if target_problem:
            problems.append(f"{where}: {target_problem}")
        if kind == "bind":
            problem = (
                _source_problem(source)
                if isinstance(source, str) and source.startswith("/")
                else (f"the source {source!r} of a bind must be an absolute host path")
            )
            if problem:
                problems.append(f"{where}: {problem}")
            options = mount.get("BindOptions") or {}
            if any(k != "Propagation" for k in options) or options.get("Propagation") not in (
                None,
                "private",
                "rprivate",
            ):
                problems.append(
                    f"{where}: BindOptions {dict(options)!r} are not allowed "
                    "(mounts made in a workspace must not reach the host)"
                )
        elif kind == "volume":
            if source not in (None, "") and _source_problem(source):
                problems.append(f"{where}: the volume name {source!r} must be letters, digits, _ . -")
            options = mount.get("VolumeOptions") or {}
            if "DriverConfig" in options:
                problems.append(
                    f"{where}: VolumeOptions.DriverConfig is not allowed (a volume driver's options can mount "
                    "any host path); create the volume beforehand and name it"
                )
            if any(k not in ("NoCopy", "Labels", "DriverConfig") for k in options):
                problems.append(f"{where}: VolumeOptions may hold NoCopy and Labels only")
        elif kind == "tmpfs":
            if source not in (None, ""):
                problems.append(f"{where}: a tmpfs mount has no source (got {source!r})")
        else:
            problems.append(f"{where}: Type must be 'bind', 'volume' or 'tmpfs' (got {kind!r})")
    return problems


# --- values -----------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _str_list(value: Any) -> str | None:
    return None if _is_str_list(value) else f"must be a list of strings (got {value!r:.80})"


def _str_or_str_list(value: Any) -> str | None:
    return (
        None
        if isinstance(value, str) or _is_str_list(value)
        else f"must be a string or a list of strings (got {value!r:.80})"
    )


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {value!r:.80})"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string (got {value!r:.80})"


def _int_between(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high} (got {value!r:.80})"
        return None

    return check


def _matching(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and pattern.match(value) else f"must be {what} (got {value!r:.80})"

    return check


def _absolute_path(value: Any) -> str | None:
    return None if isinstance(value, str) and value.startswith("/") else f"must be an absolute path (got {value!r:.80})"


def _str_mapping(value: Any) -> str | None:
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return f"must be a mapping of strings to strings (got {value!r:.80})"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else f"must be a mapping (got {value!r:.80})"


def environment_mapping(value: Any) -> dict[str, str] | None:
    """``{"K": "V"}`` or ``["K=V", ...]`` as a mapping (None if it is neither)."""
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        return None
    if _is_str_list(value) and all("=" in item for item in value):
        return dict(item.split("=", 1) for item in value)
    return None


def _environment(value: Any) -> str | None:
    env = environment_mapping(value)
    if env is None:
        return f"must be a mapping of strings or a list of 'NAME=value' (got {value!r:.80})"
    ours = sorted(k for k in env if k.startswith(_HUB_ENV_PREFIXES) or k in _HUB_ENV)
    if ours:
        return f"sets {', '.join(ours)}, which the hub sets itself (the granted GPUs, the hub's API)"
    return None


def _labels(value: Any) -> str | None:
    if _str_mapping(value):
        return _str_mapping(value)
    ours = sorted(k for k in value if k.startswith(_HUB_LABEL_PREFIX))
    if ours:
        return f"sets {', '.join(ours)}: the {_HUB_LABEL_PREFIX}* labels are the hub's own (its ledger trusts them)"
    return None


def workspace_user(value: Any, default_gid: str) -> tuple[str | None, str | None]:
    """``uid[:gid]`` -> (``"uid:gid"``, None), or (None, why not): numeric ids only (a name is
    looked up in the image, where ``toor`` may be uid 0), and never uid 0 (``"00"`` is 0 too)."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    match = _USER_RE.match(text) if text is not None else None
    if match is None:
        return (
            None,
            f"must be a numeric uid, optionally with ':gid' (got {value!r:.80}); names are looked up in the image",
        )
    uid, gid = int(match.group(1)), match.group(2)
    if uid == 0:
        return None, f"{value!r} is root (uid 0); workspaces run as a non-root user"
    return f"{uid}:{int(gid) if gid is not None else default_gid}", None


def _user(value: Any) -> str | None:
    return workspace_user(value, "100")[1]


_PROFILE_RE = re.compile(r"^(apparmor|seccomp)[=:](.+)$")
_NO_NEW_PRIVILEGES = ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")


def _security_opt(value: Any) -> str | None:
    if not _is_str_list(value):
        return f"must be a list of strings (got {value!r:.80})"
    for option in value:
        profile = _PROFILE_RE.match(option)
        if option in _NO_NEW_PRIVILEGES or (profile and profile.group(2) != "unconfined"):
            continue
        return (
            f"{option!r} is not allowed: only an AppArmor or seccomp profile (apparmor=NAME, seccomp=PROFILE) "
            "may be set; 'unconfined', label=... and no-new-privileges:false turn off a sandbox"
        )
    return None


def _ulimits(value: Any) -> str | None:
    allowed = ("core", "memlock", "nofile", "stack")
    if not isinstance(value, (list, tuple)):
        return f"must be a list of ulimits (got {value!r:.80})"
    for limit in value:
        name = (limit.get("Name") or limit.get("name")) if isinstance(limit, Mapping) else None
        if name not in allowed:
            return f"may set only {', '.join(allowed)} (got {limit!r:.80})"
    return None


def _group_add(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(
        (isinstance(g, int) and not isinstance(g, bool) and g > 0)
        or (isinstance(g, str) and g.isdigit() and int(g) > 0)
        for g in value
    ):
        return f"must be a list of numeric group ids other than 0 (got {value!r:.80})"
    return None


def _storage_opt(value: Any) -> str | None:
    if isinstance(value, Mapping) and set(value) <= {"size"} and all(isinstance(v, str) for v in value.values()):
        return None
    return f"may set only a size, e.g. {{size: 20G}} (got {value!r:.80})"


def _tmpfs(value: Any) -> str | None:
    if isinstance(value, Mapping) and not _str_mapping(value):
        targets = list(value)
    elif _is_str_list(value):
        targets = [item.split(":")[0] for item in value]
    else:
        return f"must map mount points to tmpfs options, e.g. {{/scratch: size=8g}} (got {value!r:.80})"
    problems = [p for p in map(_target_problem, targets) if p]
    return problems[0] if problems else None


def _extra_hosts(value: Any) -> str | None:
    if _is_str_list(value) or not _str_mapping(value):
        return None
    return f"must map host names to addresses (got {value!r:.80})"


# What extra_host_config may set (docker-py's create_host_config arguments). ``binds`` is checked
# like ``volumes``; ``cpu_period`` is DockerSpawner's promise ("the default cpu_period of 100ms,
# unless overridden in extra_host_config").
HOST_CONFIG_ALLOWED: dict[str, Check] = {
    "binds": lambda value: None,  # checked entry by entry, see container_config
    "cap_drop": _str_list,  # harmless: every capability is dropped anyway
    "cpu_period": _int_between(1000, 1_000_000),
    "cpu_shares": _int_between(2, 262_144),
    "cpuset_cpus": _matching(_CPUSET_RE, "CPU numbers like 0-3,8"),
    "cpuset_mems": _matching(_CPUSET_RE, "NUMA node numbers like 0,1"),
    "dns": _str_list,
    "dns_opt": _str_list,
    "dns_search": _str_list,
    "extra_hosts": _extra_hosts,
    "group_add": _group_add,
    "log_config": _mapping,
    "mem_swappiness": _int_between(0, 100),
    "read_only": _boolean,
    "security_opt": _security_opt,
    "storage_opt": _storage_opt,
    "tmpfs": _tmpfs,
    "ulimits": _ulimits,
}

# What extra_create_kwargs may set (docker-py's create_container arguments).
CREATE_KWARGS_ALLOWED: dict[str, Check] = {
    "command": _str_or_str_list,
    "domainname": _matching(_HOSTNAME_RE, "a domain name"),
    "entrypoint": _str_or_str_list,
    "environment": _environment,
    "healthcheck": _mapping,
    "hostname": _matching(_HOSTNAME_RE, "a host name"),
    "labels": _labels,
    "stdin_open": _boolean,
    "stop_signal": _text,
    "tty": _boolean,
    "user": _user,
    "working_dir": _absolute_path,
}

_SPAWNER_SETTING = "it is set by the hub; use the spawner's own setting"
# Why some keys that are not on the lists are refused (others get a general message).
REFUSED_BECAUSE = {
    "privileged": "privileged containers can take over the host",
    "cap_add": "added capabilities weaken the isolation of a workspace",
    "pid_mode": "sharing the host's PID namespace exposes every process",
    "ipc_mode": "sharing IPC namespaces leaks memory between workspaces",
    "userns_mode": "leaving the user namespace undoes the non-root user",
    "uts_mode": "sharing the host's UTS namespace lets a workspace rename the host",
    "cgroupns": "the host's cgroup namespace shows every container's cgroups",
    "network_mode": "the network is the spawner's network_name; the host's network would expose the host's services",
    "network_disabled": "the hub reaches the workspace over its network",
    "networking_config": "the network is the spawner's network_name",
    "devices": "raw host devices bypass the GPU allocator (GPUs go through DeviceRequests)",
    "device_requests": "GPUs are assigned by the allocator, not by configuration",
    "device_cgroup_rules": "device rules open host devices to the workspace",
    "volumes_from": "another container's volumes may hold other users' data or the Docker socket",
    "mounts": "add mounts with c.GPUDockerSpawner.mounts or volumes, which are checked",
    "volumes": "add volumes with c.GPUDockerSpawner.volumes, which are checked",
    "volume_driver": "a volume driver's options can mount any host path",
    "runtime": "another runtime can expose every GPU (nvidia) or leave the sandbox",
    "links": "links reach into other containers",
    "sysctls": "kernel parameters are the host's to set",
    "oom_kill_disable": "a workspace must not shield itself from the OOM killer at the host's expense",
    "oom_score_adj": "a workspace must not shield itself from the OOM killer at the host's expense",
    "restart_policy": "the hub decides when a workspace runs",
    "auto_remove": "set c.GPUDockerSpawner.remove",
    "image": "the image comes from the quota policy (or the spawner's image)",
    "name": _SPAWNER_SETTING,
    "host_config": "use extra_host_config, which is checked",
    "ports": _SPAWNER_SETTING,
    "port_bindings": "the hub publishes the workspace's port itself",
    "publish_all_ports": "the hub publishes the workspace's port itself",
    "mem_limit": "memory limits come from the quota policy (or the spawner's mem_limit)",
    "mem_reservation": "memory limits come from the quota policy (or the spawner's mem_guarantee)",
    "memswap_limit": "a workspace gets no swap beyond its memory limit",
    "nano_cpus": "CPU limits come from the quota policy (or the spawner's cpu_limit)",
    "cpu_quota": "CPU limits come from the quota policy (or the spawner's cpu_limit)",
    "cpu_count": "CPU limits come from the quota policy (or the spawner's cpu_limit)",
    "pids_limit": "set c.GPUDockerSpawner.pids_limit",
    "shm_size": "set c.GPUDockerSpawner.shm_size",
    "init": _SPAWNER_SETTING,
}


def _key_problems(where: str, extra: Any, allowed: Mapping[str, Check]) -> list[str]:
    if not isinstance(extra, Mapping):
        return [f"{where} must be a mapping (got {extra!r:.80})"]
    problems = []
    for key, value in extra.items():
        check = allowed.get(key)
        if check is None:
            why = (
                REFUSED_BECAUSE.get(key) or f"it is not one of the settings a workspace may get ({', '.join(allowed)})"
            )
            problems.append(f"{where}.{key} is not allowed: {why}")
            continue
        problem = check(value)
        if problem:
            problems.append(f"{where}.{key} {problem}")
    return problems


def host_config_problems(extra: Any) -> list[str]:
    """What is wrong with an admin's ``extra_host_config`` (binds included)."""
    problems = _key_problems("extra_host_config", extra, HOST_CONFIG_ALLOWED)
    if isinstance(extra, Mapping) and extra.get("binds"):
        binds, parse_problems = parse_binds(extra["binds"])
        problems += parse_problems + checked_binds("extra_host_config.binds", binds)[1]
    return problems


def create_kwargs_problems(extra: Any) -> list[str]:
    """What is wrong with an admin's ``extra_create_kwargs``."""
    return _key_problems("extra_create_kwargs", extra, CREATE_KWARGS_ALLOWED)


def network_problem(network: str) -> str | None:
    """The workspace network may be any Docker network but the host's or another container's."""
    if network == "host" or network.startswith("container:"):
        return (
            f"network_name {network!r} is not allowed: a workspace gets a network of its own "
            "(the host's or another container's would expose their services)"
        )
    return None


def admin_config_problems(
    *,
    extra_create_kwargs: Any = None,
    extra_host_config: Any = None,
    volumes: Mapping[Any, Any] | None = None,
    read_only_volumes: Mapping[Any, Any] | None = None,
    mounts: Sequence[Any] = (),
    network: str = "bridge",
) -> list[str]:
    """Every problem of a spawner's configuration as written, for the hub's start. A callable
    ``extra_*`` is checked at each spawn instead (it can only be called with a spawner)."""
    problems = []
    if extra_create_kwargs is not None and not callable(extra_create_kwargs):
        problems += create_kwargs_problems(extra_create_kwargs)
    if extra_host_config is not None and not callable(extra_host_config):
        problems += host_config_problems(extra_host_config)
    problems += checked_binds("volumes", volumes or {})[1]
    problems += checked_binds("read_only_volumes", read_only_volumes or {})[1]
    problems += mount_problems(mounts)
    network_issue = network_problem(network)
    if network_issue:
        problems.append(network_issue)
    return problems
