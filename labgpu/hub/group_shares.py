"""A server shared with a group reaches the group's members (a fix of JupyterHub 6.1's scopes).

JupyterHub computes a *user's* permissions with the shares made with them and with their groups,
but a *token's* (an API token, and the OAuth token a browser session uses to open a server) only
with the shares made with its owner by name: ``get_scopes_for`` reads ``owner.shared_with_me``,
not the owner's groups' shares. So a server shared with a group opens for none of its members
(HTTP 403 "Not allowing user bob"), and the hub lists the share as granted.

:func:`include_group_shares` wraps ``jupyterhub.scopes.get_scopes_for``: for a user's token it
adds what the shares with the owner's groups grant, intersected with what the token itself may do
(JupyterHub's own intersection), exactly as the token path already does for shares by name.
Installed once from jupyterhub_config.py; a JupyterHub that already counts group shares for tokens
gains nothing from it and loses nothing.
"""

from __future__ import annotations

from typing import Any

_MARK = "_labgpu_group_shares"


def group_share_scopes(token: Any) -> frozenset[str]:
    """The scopes the shares with ``token``'s owner's groups grant (expired shares left out)."""
    from jupyterhub import scopes

    user = getattr(token, "user", None)
    granted: set[str] = set()
    for group in getattr(user, "groups", None) or ():
        for share in group.shared_with_me:
            if not share.expired:
                granted |= set(scopes.expand_share_scopes(share))
    return frozenset(granted)


def include_group_shares() -> None:
    """Make JupyterHub's token scopes include the owner's group shares (idempotent)."""
    import sqlalchemy as sa
    from jupyterhub import orm, scopes
    from jupyterhub.apihandlers import base as api_base

    original = scopes.get_scopes_for
    if getattr(original, _MARK, False):
        return

    def get_scopes_for(orm_object: Any) -> Any:
        found = original(orm_object)
        if not isinstance(orm_object, orm.APIToken) or orm_object.user is None:
            return found
        shared = group_share_scopes(orm_object)
        if not shared:
            return found
        token_scopes = set(orm_object.scopes)
        if "inherit" in token_scopes:
            return set(found) | shared
        expanded = scopes.expand_scopes(token_scopes, owner=orm_object.user, oauth_client=orm_object.oauth_client)
        if orm_object.client_id != "jupyterhub":
            expanded = set(expanded) | set(scopes.access_scopes(orm_object.oauth_client))
        allowed = scopes._intersect_expanded_scopes(frozenset(expanded), shared, db=sa.inspect(orm_object).session)
        return set(found) | set(allowed)

    setattr(get_scopes_for, _MARK, True)
    scopes.get_scopes_for = get_scopes_for
    api_base.get_scopes_for = get_scopes_for
