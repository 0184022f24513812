"""User names in the quota files as JupyterHub sees them.

JupyterHub hands the spawner a *normalized* name: its default ``Authenticator.normalize_username``
lowercases (``Bob`` logs in as ``bob``). A file's ``users: {Bob: ...}`` or ``members: [Bob]``
would never match anyone, so names are read the same way; two entries that become the same
user are refused with both places. (Names JupyterHub could never produce, with ``/`` or
spaces, are refused by :func:`labgpu.quota.schema.cross_checks`.) Group names are not
normalized by JupyterHub, so neither are they here. Pure.
"""

from __future__ import annotations

from labgpu.quota.schema import PolicyFile, Problem


def normalize_username(name: str) -> str:
    """The name JupyterHub's default authenticator gives this user (``Bob`` -> ``bob``)."""
    return name.lower()


def name_problems(spec: PolicyFile) -> list[Problem]:
    """Entries and members that would be the same JupyterHub user."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name in spec.users:
        same = seen.setdefault(normalize_username(name), name)
        if same != name:
            message = f"users.{name} is the same user as users.{same}: JupyterHub lowercases user names, "
            problems.append(
                (("users", name), True, message + f"so both are {normalize_username(name)!r}; merge the two entries")
            )
    for group_name, group in spec.groups.items():
        members: dict[str, str] = {}
        for i, member in enumerate(group.members):
            first = members.setdefault(normalize_username(member), member)
            if first != member:  # the same spelling twice is cross_checks' to report
                message = f"groups.{group_name}.members lists {normalize_username(member)!r} twice "
                message += f"(as {first!r} and {member!r}; JupyterHub lowercases user names)"
                problems.append((("groups", group_name, "members", i), False, message))
    return problems


def with_normalized_names(spec: PolicyFile) -> PolicyFile:
    """``spec`` with its user names (``users`` and every group's ``members``) as JupyterHub's."""
    users = {normalize_username(name): entry for name, entry in spec.users.items()}
    groups = {
        name: group.model_copy(update={"members": [normalize_username(m) for m in group.members]})
        if any(m != normalize_username(m) for m in group.members)
        else group
        for name, group in spec.groups.items()
    }
    if list(users) == list(spec.users) and all(groups[n] is g for n, g in spec.groups.items()):
        return spec
    return spec.model_copy(update={"users": users, "groups": groups})
