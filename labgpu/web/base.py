"""What every page and JSON route of the web service shares: the site context (ledger, quota
policy, templates), who is asking (:class:`Viewer`: the hub user, admin or not, their groups and
the groups they manage), and :class:`BaseHandler` (Hub OAuth login, hub-styled HTML, JSON, 403).

A handler is a tornado ``RequestHandler``: decorate ``get`` with ``@web.authenticated`` (a browser
without a login is sent through the hub's OAuth; a script passes ``Authorization: token ...``),
read ``self.viewer``, call ``self.require_admin()`` / ``self.require_lab_view(group)``, and answer
with ``self.render_page("x.html", ...)`` or ``self.write_json(obj)``. Blocking work (the ledger)
goes through ``await self.in_thread(fn, ...)`` so that one slow query never stalls other pages.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from labgpu.quota import Policy, PolicyError, PolicyStore, user_groups

T = TypeVar("T")
HERE = Path(__file__).parent


def hub_template_dir() -> Path:
    """JupyterHub's own templates (page.html, ...), which ours extend."""
    from jupyterhub._data import DATA_FILES_PATH

    return Path(DATA_FILES_PATH) / "templates"


def template_environment() -> jinja2.Environment:
    """Ours first (the service's pages, then the hub extensions), JupyterHub's as ``templates/``
    (the same layout as the hub's own loader, so ``hub_templates/page.html`` works in both)."""
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader([str(HERE / "templates"), str(HERE / "hub_templates")]),
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader(str(hub_template_dir()))}),
        ]
    )
    return jinja2.Environment(loader=loader, autoescape=True)


@dataclass
class WebContext:
    """What the service reads, built once at start: the ledger URL, the quota policy (re-read when
    its files change), the hub's URLs and one thread pool for blocking work."""

    ledger_url: str
    policy_store: PolicyStore | None = None
    hub_prefix: str = "/hub/"  # JupyterHub's base URL + hub/
    base_url: str = "/"  # JupyterHub's base URL (the proxy's root)
    service_prefix: str = "/services/labgpu/"
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="labgpu-web"))
    templates: jinja2.Environment = field(default_factory=template_environment)
    extra: dict[str, Any] = field(default_factory=dict)  # other packages' state (metrics, ssh, ...)

    @property
    def policy(self) -> Policy | None:
        """The policy in force (the last good one when a file turned bad), or None without files."""
        if self.policy_store is None:
            return None
        try:
            self.policy_store.refresh()
            return self.policy_store.policy
        except PolicyError:
            return None

    @classmethod
    def from_environment(cls, ledger_url: str, quota_files: list[str]) -> WebContext:
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        return cls(
            ledger_url=ledger_url,
            policy_store=PolicyStore(quota_files) if quota_files else None,
            hub_prefix=os.environ.get("JUPYTERHUB_HUB_PREFIX", base + "hub/"),
            base_url=base,
            service_prefix=os.environ.get("JUPYTERHUB_SERVICE_PREFIX", base + "services/labgpu/"),
        )


@dataclass(frozen=True)
class Viewer:
    """Who is asking, as the hub told us (OAuth) and the quota files say (groups, managers)."""

    name: str
    admin: bool = False
    groups: tuple[str, ...] = ()  # the policy's groups the user is in (labgpu.quota.user_groups)
    manages: tuple[str, ...] = ()  # groups whose ``managers:`` list the user

    @classmethod
    def of(cls, model: Mapping[str, Any], policy: Policy | None) -> Viewer:
        name = str(model["name"])
        hub_groups = tuple(model.get("groups") or ())
        if policy is None:
            return cls(name, bool(model.get("admin")), hub_groups)
        groups = user_groups(policy, name, hub_groups)
        manages = tuple(sorted(g for g, entry in policy.spec.groups.items() if name in entry.managers))
        return cls(name, bool(model.get("admin")), groups, manages)

    def may_see_lab(self, group: str | None = None) -> bool:
        """Admins see the whole lab; a group's managers see that group."""
        return self.admin or (group is not None and group in self.manages)

    def may_see_user(self, user: str) -> bool:
        return self.admin or user == self.name


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class BaseHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """A page or JSON route of the service, for logged-in hub users only."""

    @property
    def context(self) -> WebContext:
        return self.settings["labgpu"]  # type: ignore[no-any-return]

    @property
    def viewer(self) -> Viewer:
        """The logged-in user (call only in an ``@web.authenticated`` method)."""
        if not hasattr(self, "_viewer"):
            model = dict(self.current_user)
            # A script's token acts as an admin only if it carries admin scopes: an admin's narrow
            # token (say, only access to this service, for a dashboard) must not add SSH keys to
            # others' accounts if it leaks. A browser session is the admin themself.
            if getattr(self, "_token_authenticated", False) and "admin:users" not in (model.get("scopes") or ()):
                model["admin"] = False
            self._viewer = Viewer.of(model, self.context.policy)
        return self._viewer

    def set_default_headers(self) -> None:
        # No other page may frame ours: a workspace on the hub's origin could otherwise load a
        # page in a frame, read its XSRF token and act as the user (clickjacking as well).
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        self.set_header("X-Frame-Options", "DENY")

    def check_xsrf_cookie(self) -> None:
        """Scripts send ``Authorization: token ...`` and no XSRF token; pages send one. A request
        is exempt from the XSRF check only once the hub has accepted its token: a bogus token must
        not switch the check off for the session cookie sent with it (JupyterHub then falls back
        to the cookie). Tornado checks before the user is known, so resolve the token first."""
        if self.request.headers.get("Authorization") and not getattr(self, "_labgpu_resolving", False):
            self._labgpu_resolving = True
            try:
                self.current_user  # noqa: B018  # sets _token_authenticated for a token the hub accepts
            finally:
                self._labgpu_resolving = False
        super().check_xsrf_cookie()  # HubAuthenticated's: skipped for a token-authenticated request

    def forbid(self, message: str) -> None:
        raise web.HTTPError(403, message, reason="Forbidden")

    def require_admin(self) -> None:
        if not self.viewer.admin:
            self.forbid("Only the hub's admins may see this page.")

    def require_lab_view(self, group: str | None = None) -> None:
        """Admins see everything; a group's managers only their group (403 otherwise)."""
        if not self.viewer.may_see_lab(group):
            if self.viewer.manages and group is None:
                self.forbid(f"You manage {', '.join(self.viewer.manages)}: add ?group=NAME to see one of them.")
            self.forbid("Only the hub's admins, and a group's managers for their group, may see lab usage.")

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (the ledger, the quota files) in the service's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.context.executor, partial(fn, *args, **kwargs))

    def wants_json(self) -> bool:
        return self.request.path.startswith(self.context.service_prefix + "api/")

    # --- answers ----------------------------------------------------------------------------
    def page_namespace(self) -> dict[str, Any]:
        """What JupyterHub's page.html expects, for this service's pages."""
        ctx = self.context
        viewer = self.viewer if self.current_user else None
        user = None
        if viewer is not None:
            user = {"name": viewer.name, "json_escaped_name": json.dumps(viewer.name)[1:-1], "admin": viewer.admin}
        return {
            "base_url": ctx.hub_prefix,
            "prefix": ctx.base_url,
            "service_prefix": ctx.service_prefix,
            "static_url": lambda path, include_version=True: f"{ctx.hub_prefix}static/{path}",
            "user": user,
            "viewer": viewer,
            "admin_access": bool(viewer and viewer.admin),
            "parsed_scopes": {"admin-ui"} if viewer and viewer.admin else set(),
            "no_spawner_check": True,
            "services": [],
            "logo_url": "",
            "login_url": ctx.hub_prefix + "login",
            "logout_url": ctx.hub_prefix + "logout",
            "xsrf_token": self.xsrf_token.decode() if self.current_user else "",
            "xsrf_form_html": self.xsrf_form_html,
            "version_hash": "",
            "announcement": "",
            "labgpu_lab_link": bool(viewer and (viewer.admin or viewer.manages)),
        }

    def render_page(self, template: str, **values: Any) -> None:
        """Render one of our templates (they extend the hub's page.html) and finish."""
        html = self.context.templates.get_template(template).render(**self.page_namespace(), **values)
        self.finish(html)

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(value, default=_json_default))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON for the API, a hub-styled page for the rest; the message, never a traceback."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(error, "log_message", None) or self._reason
        if self.wants_json():
            self.write_json({"status": status_code, "message": message}, status_code)
            return
        try:
            self.render_page("error.html", status_code=status_code, message=message)
        except Exception:  # the error page itself must not fail
            self.finish(f"{status_code}: {message}")
