"""What users see of the reclaimer on every hub page: the announcement bar carries their pending
reclaim warnings and the servers stopped in the last day.

It runs in the hub process (``c.JupyterHub.template_vars["announcement"] = hub_announcement(...)``,
which JupyterHub calls with the current user) and only reads the ledger's ``reclaim_notices``,
which the reclaimer (:mod:`labgpu.services.reclaimer`) writes.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore, ReclaimNotice

log = logging.getLogger("labgpu.reclaim")  # the reclaimer's notices, under its name in the hub's log


def _at(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M")


def announcement_for(store: QueueStore, user: str, *, recent: float = 86400.0) -> str:
    """HTML for the hub's announcement bar: this user's pending warnings and the servers
    reclaimed in the last ``recent`` seconds ('' when there is nothing to say)."""
    now = store.now()
    held = {(a.user, a.server, a.since) for a in store.ledger.allocations()}
    lines = []
    for notice in store.notices_for(user, since=now - timedelta(seconds=recent)):
        name = f"Your server {notice.server!r}" if notice.server else "Your server"
        if notice.reclaimed_at is not None:
            lines.append(
                f"{name} was stopped at {_at(notice.reclaimed_at)}: {notice.message} "
                "Your files in your home are kept; start it again when you need the GPUs."
            )
        elif (notice.user, notice.server, notice.allocation_since) in held and _warning_standing(notice):
            lines.append(
                f"{name} will be stopped at {_at(notice.reclaim_at)} unless its GPUs get busy: "  # type: ignore[arg-type]
                f"{notice.message}"
            )
    return "<br>".join(html.escape(line) for line in lines)


def _warning_standing(notice: ReclaimNotice) -> bool:
    """A warning stands until the GPUs get busy again after it."""
    return (
        notice.warned_at is not None
        and notice.reclaim_at is not None
        and (notice.last_busy_at is None or notice.last_busy_at <= notice.warned_at)
    )


def hub_announcement(ledger_url: str, fallback: str = "") -> Callable[[Any], str]:
    """A ``c.JupyterHub.template_vars["announcement"]`` value: the current user's reclaim
    notices (JupyterHub calls it with the user, or None on the login page)."""
    stores: dict[str, QueueStore] = {}

    def announcement(user: Any) -> str:
        if user is None:
            return fallback
        if "store" not in stores:
            stores["store"] = QueueStore(Ledger(ledger_url))
        try:
            text = announcement_for(stores["store"], user.name)
        except Exception as e:  # never break a hub page over a notice
            log.warning("Could not read reclaim notices for %s: %s", user.name, e)
            text = ""
        return "<br>".join(t for t in (fallback, text) if t)

    return announcement
