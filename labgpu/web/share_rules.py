"""Who may share a server with whom (pure): the rule the "Share my server" page holds every request to.

JupyterHub's sharing API lets whoever holds the ``shares`` scope share a server with *any* user or
group, so users are not given that scope. They share through the labgpu web service instead,
which checks this rule and then calls the hub's API with its own token:

- only your own servers (the owner is always the logged-in user, never taken from the request);
- with one of your own groups (the quota files' groups you are in), or with a user who is a
  member of one of them (not yourself);
- never more than access to the server: the share's scopes are always
  ``access:servers!server=OWNER/NAME`` (JupyterHub's default), never a scope from the request.

A share link (a JupyterHub share code) is for someone outside your groups: whoever opens it
before it expires gets the same access; its lifetime is one of :data:`LINK_LIFETIMES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# What a share link may live for (seconds), as offered on the page; JupyterHub allows 60 s to a year.
LINK_LIFETIMES: dict[str, int] = {"1 hour": 3600, "1 day": 86400, "1 week": 7 * 86400}
MIN_LINK_SECONDS = 60
MAX_LINK_SECONDS = 7 * 86400
# JupyterHub's names: users and groups are plain names; a named server's name has no "/".
_NAME = re.compile(r"^[^/\s?#%\\]{1,255}$")


class ShareRefused(ValueError):
    """A share the rule does not allow; the message says why, for the user (HTTP 403 or 400)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ShareTarget:
    """Who a server is shared with: a user or a group, by name."""

    kind: str  # "user" | "group"
    name: str

    def as_hub_body(self) -> dict[str, str]:
        """The body of JupyterHub's ``POST/PATCH /api/shares/OWNER/SERVER`` for this target."""
        return {self.kind: self.name}


def server_scope(owner: str, server: str) -> str:
    """The one scope a share grants: access to this server, nothing more."""
    return f"access:servers!server={owner}/{server}"


def parse_target(body: Mapping[str, object]) -> ShareTarget:
    """``{"user": NAME}`` or ``{"group": NAME}`` from a request (exactly one of them)."""
    given = [k for k in ("user", "group") if body.get(k) not in (None, "")]
    if len(given) != 1:
        raise ShareRefused('Say whom to share with: {"user": NAME} or {"group": NAME} (one of them).', 400)
    kind = given[0]
    name = body[kind]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ShareRefused(f"{kind.capitalize()} must be a name, not {name!r:.60}.", 400)
    return ShareTarget(kind, name)


def parse_server(value: object) -> str:
    """A server name from a request: "" (the default server) or a named server's name."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ShareRefused(f"Server must be the name of one of your servers, not {value!r:.60}.", 400)
    return value


def check_share(
    owner: str,
    owner_groups: Sequence[str],
    target: ShareTarget,
    members: Mapping[str, Sequence[str]],
) -> None:
    """Raise :class:`ShareRefused` unless ``owner`` may share a server of theirs with ``target``:
    one of ``owner_groups``, or a member (``members``: group -> its users) of one of them."""
    if target.kind == "group":
        if target.name not in owner_groups:
            mine = ", ".join(owner_groups) or "none"
            raise ShareRefused(
                f"You can share your server only with your own groups; you are not in {target.name!r}. "
                f"Your groups: {mine}. For someone else, make a share link."
            )
        return
    if target.name == owner:
        raise ShareRefused("You cannot share a server with yourself.", 400)
    if not any(target.name in members.get(g, ()) for g in owner_groups):
        raise ShareRefused(
            f"You can share your server only with members of your groups; {target.name!r} is in none of "
            f"{', '.join(owner_groups) or 'your groups (you are in none)'}. For someone else, make a share link."
        )


def link_lifetime(value: object) -> int:
    """A share link's lifetime in seconds from a request: one of :data:`LINK_LIFETIMES`' labels or
    a number of seconds from a minute to a week."""
    if isinstance(value, str) and value in LINK_LIFETIMES:
        return LINK_LIFETIMES[value]
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShareRefused(
            f"expires_in must be a number of seconds or one of {', '.join(LINK_LIFETIMES)}, not {value!r:.40}.", 400
        )
    if not MIN_LINK_SECONDS <= value <= MAX_LINK_SECONDS:
        raise ShareRefused(
            f"A share link lives from {MIN_LINK_SECONDS} seconds to a week ({MAX_LINK_SECONDS} s), not {value} s.",
            400,
        )
    return value


def shareable_members(owner: str, owner_groups: Sequence[str], members: Mapping[str, Sequence[str]]) -> list[str]:
    """The users ``owner`` may share with by name: the members of their groups, without themselves."""
    return sorted({u for g in owner_groups for u in members.get(g, ()) if u != owner})
