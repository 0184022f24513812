"""The web service's tornado application: every route of every page module, under the service's
prefix (``/services/labgpu/``), plus the Hub OAuth callback.

To add pages, write a module with ``routes() -> list[tuple[str, type[RequestHandler]]]``
(patterns relative to the prefix: ``r"gpus"``, ``r"api/gpus"``) and add its dotted name to
``ROUTE_MODULES``: one line in this shared file, the handlers in your own module.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web

from labgpu.web.base import WebContext

log = logging.getLogger("labgpu.web")
STATIC = Path(__file__).parent / "static"

# One module per concern; each lists its own routes. Others add theirs here (one line each).
ROUTE_MODULES: tuple[str, ...] = (
    "labgpu.web.pages",
    "labgpu.metrics.web",  # /metrics, for Prometheus (issue 15)
    "labgpu.web.sharing",  # share my server, shared with me (issue 16)
    "labgpu.web.groups",  # a page per lab group (issue 16)
    "labgpu.web.ssh_keys",  # the SSH keys page and API, for the SSH gateway (issue 18)
)

Route = tuple[str, type[web.RequestHandler]]


def collect_routes(modules: Sequence[str] = ROUTE_MODULES) -> list[Route]:
    """Every module's routes, in order; two modules claiming one pattern is a bug, said at start."""
    routes: list[Route] = []
    seen: dict[str, str] = {}
    for name in modules:
        for pattern, handler in importlib.import_module(name).routes():
            if pattern in seen:
                raise RuntimeError(f"route {pattern!r} of {name} is already {seen[pattern]}'s")
            seen[pattern] = name
            routes.append((pattern, handler))
    return routes


class RootHandler(web.RequestHandler):
    """/services/labgpu/ -> the GPU board."""

    def get(self) -> None:
        self.redirect(self.settings["labgpu"].service_prefix + "gpus")


def make_app(context: WebContext, modules: Sequence[str] = ROUTE_MODULES, **settings: Any) -> web.Application:
    """The application for ``context``; ``settings`` go to tornado (tests pass a cookie_secret)."""
    prefix = context.service_prefix
    handlers: list[Any] = [
        (prefix, RootHandler),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        # The pages' own scripts, from the package (no CDN: the hub may be offline).
        (url_path_join(prefix, r"static/(.*)"), web.StaticFileHandler, {"path": str(STATIC)}),
    ]
    handlers += [(url_path_join(prefix, pattern), handler) for pattern, handler in collect_routes(modules)]
    return web.Application(
        handlers,
        labgpu=context,
        cookie_secret=settings.pop("cookie_secret", None) or os.urandom(32),
        xsrf_cookies=True,
        **settings,
    )
