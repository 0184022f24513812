"""``/services/labgpu/metrics``: the exporter's text, in the hub's web service, for a token with
the ``custom:labgpu:metrics`` scope.

Served by the web service (not the poller) because it reads the ledger, the queue and the
policy as much as the telemetry, and the service already sits behind the hub's proxy with Hub
authentication: Prometheus scrapes ``https://HUB/services/labgpu/metrics`` with the same kind of
token as ``/hub/metrics``. The scope is a JupyterHub custom scope (``c.JupyterHub.custom_scopes``
in jupyterhub_config.py), granted with ``read:metrics`` to the ``prometheus`` role: a token for
the metrics reads no user's data or server, and no other token (a user's, an admin's) reads
the metrics unless a role grants it the scope. Without a token: 401; with a token that lacks
the scope: 403.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from jupyterhub.services.auth import HubOAuth
from tornado import web

from labgpu.metrics.collector import CONTENT_TYPE, LedgerCollector, render

log = logging.getLogger("labgpu.web")

METRICS_SCOPE = "custom:labgpu:metrics"
METRICS_SCOPE_DESCRIPTION = "Read LabGPU's Prometheus metrics (GPUs, queue, usage per user and group)."


class MetricsHandler(web.RequestHandler):
    """GET: the exposition; one collector per service, kept in the context's ``extra``."""

    def check_xsrf_cookie(self) -> None:  # a token-only GET: no cookie, nothing to forge
        return None

    async def get(self) -> None:
        context = self.settings["labgpu"]
        hub_auth: Any = HubOAuth.instance()
        token = hub_auth.get_token(self, in_cookie=False)
        if not token:
            self.set_header("WWW-Authenticate", 'Bearer realm="labgpu"')
            self._refuse(401, f"Send a hub token with the {METRICS_SCOPE} scope: Authorization: Bearer TOKEN")
            return
        model = await hub_auth.user_for_token(token, sync=False)
        if not model:
            self._refuse(403, "The hub does not know this token (expired or revoked?).")
            return
        if not hub_auth.check_scopes({METRICS_SCOPE}, model):
            self._refuse(403, f"This token lacks the {METRICS_SCOPE} scope (grant it to Prometheus' role).")
            return
        collector = context.extra.get("metrics")
        if collector is None:
            collector = context.extra["metrics"] = LedgerCollector(
                context.ledger_url,
                policy=lambda: context.policy,
                hostname=os.environ.get("LABGPU_METRICS_HOSTNAME") or None,
            )
        try:
            body = await asyncio.get_running_loop().run_in_executor(context.executor, render, collector)
        except Exception as e:  # the database is away (PostgreSQL restarting, a locked file): Prometheus retries
            log.warning("metrics: could not read the ledger's database: %s", e)
            self._refuse(503, f"Could not read the ledger's database: {type(e).__name__}: {e}")
            return
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [(r"metrics", MetricsHandler)]
