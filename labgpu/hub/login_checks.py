"""Who can reach the hub and log in: the start-up checks ``jupyterhub_config.py`` refuses to start
on. Demo mode (a shared password) must listen on a loopback address, decided on the parsed URL
(``http://127.0.0.1.evil.com`` is not local); production mode must have a real authenticator,
decided on the class JupyterHub would load, whatever name or import string selects it."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit


def demo_address_problem(bind_url: str) -> str | None:
    """Why demo mode must not listen on ``bind_url`` (None: it is a loopback address)."""
    try:
        parts = urlsplit(bind_url)
        host = parts.hostname
    except ValueError as e:
        return f"LABGPU_BIND_URL={bind_url!r} is not a URL ({e})"
    if parts.scheme not in ("http", "https") or not host:
        return f"LABGPU_BIND_URL={bind_url!r} is not an http:// or https:// URL with a host"
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a name other than localhost: it may resolve anywhere
    return (
        f"demo mode has a shared password and listens on localhost only, but LABGPU_BIND_URL={bind_url!r} "
        f"has the host {host!r} (use 127.0.0.1, [::1] or localhost); set LABGPU_MODE=production to serve others"
    )


def authenticator_class(value: Any) -> type:
    """The class JupyterHub loads for ``c.JupyterHub.authenticator_class = value``: an entry point
    name (``github``, ``dummy``), an import string or a class. Raises ValueError saying what is
    installed when it cannot be loaded."""
    from jupyterhub.app import JupyterHub
    from traitlets import TraitError

    trait = JupyterHub.class_traits()["authenticator_class"]
    try:
        loaded = trait.validate(None, value)
    except (TraitError, ImportError, AttributeError, ValueError) as e:
        installed = ", ".join(sorted(trait.load_entry_points())) or "none"
        raise ValueError(
            f"{value!r} is neither an installed JupyterHub authenticator (installed: {installed}) nor an "
            f"importable Authenticator class ({e}); install it (e.g. pip install oauthenticator) or fix the name"
        ) from None
    return loaded  # type: ignore[no-any-return]


def production_authenticator_problem(value: Any) -> str | None:
    """Why production mode must not run with ``value`` as its authenticator (None: it may)."""
    try:
        cls = authenticator_class(value)
    except ValueError as e:
        return f"the authenticator {e}"
    # These let anyone in: any name with one shared password, or no login at all.
    from jupyterhub.auth import DummyAuthenticator, NullAuthenticator

    if issubclass(cls, (DummyAuthenticator, NullAuthenticator)):
        base = DummyAuthenticator if issubclass(cls, DummyAuthenticator) else NullAuthenticator
        return (
            f"production mode needs a real authenticator, and {value!r} is {cls.__module__}.{cls.__qualname__}, "
            f"a {base.__name__} (anyone may log in): set LABGPU_AUTHENTICATOR (e.g. github, generic-oauth, ldap) "
            "and its settings"
        )
    return None
