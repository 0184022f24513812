"""What users see of the reclaimer on every hub page: the announcement bar carries their pending
reclaim warnings and the servers stopped in the last day.

It runs in the hub process (``c.JupyterHub.template_vars["announcement"] = hub_announcement(...)``,
which JupyterHub calls with the current user) and only reads the ledger's ``reclaim_notices``,
which the reclaimer (:mod:`labgpu.services.reclaimer`) writes.

JupyterHub calls template variables synchronously while it renders a page, on its event loop.
So a page never reads SQLite: it shows what a background thread last read for that user (at
most ``max_age`` seconds old, re-read in the background once older), and nothing until the first
read is in. Warnings come minutes ahead of a stop, so a few seconds' delay costs nothing.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
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
            condition = "" if notice.reason == "max_runtime" else " unless its GPUs get busy"
            lines.append(
                f"{name} will be stopped at {_at(notice.reclaim_at)}{condition}: "  # type: ignore[arg-type]
                f"{notice.message}"
            )
    return "<br>".join(html.escape(line) for line in lines)


def _warning_standing(notice: ReclaimNotice) -> bool:
    """A max_runtime warning stands until the stop; an idle one until the GPUs get busy again."""
    if notice.warned_at is None or notice.reclaim_at is None:
        return False
    return notice.reason == "max_runtime" or notice.last_busy_at is None or notice.last_busy_at <= notice.warned_at


def hub_announcement(
    ledger_url: str,
    fallback: str = "",
    *,
    max_age: float = 5.0,
    read: Callable[[str], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    executor: Executor | None = None,
) -> Callable[[Any], str]:
    """A ``c.JupyterHub.template_vars["announcement"]`` value: the current user's reclaim
    notices (JupyterHub calls it with the user, or None on the login page), read off the event
    loop: ``read(user)`` (by default :func:`announcement_for` on the ledger) runs in ``executor``
    and the page shows its last answer."""
    stores: list[QueueStore] = []

    def read_ledger(user: str) -> str:
        if not stores:
            stores.append(QueueStore(Ledger(ledger_url)))
        return announcement_for(stores[0], user)

    reader = read or read_ledger
    pool = executor or ThreadPoolExecutor(1, thread_name_prefix="labgpu-announcement")
    cache: dict[str, tuple[float, str]] = {}  # user -> (when read, text)
    reading: set[str] = set()
    lock = threading.Lock()

    def refresh(user: str) -> None:
        try:
            text = reader(user)
        except Exception as e:  # never break a hub page over a notice
            log.warning("Could not read reclaim notices for %s: %s", user, e)
            text = ""
        with lock:
            cache[user] = (clock(), text)
            reading.discard(user)

    def announcement(user: Any) -> str:
        if user is None:
            return fallback
        name = str(user.name)
        with lock:
            read_at, text = cache.get(name, (None, ""))
            stale = read_at is None or clock() - read_at >= max_age
            start = stale and name not in reading
            if start:
                reading.add(name)
        if start:
            pool.submit(refresh, name)
        return "<br>".join(t for t in (fallback, text) if t)

    return announcement
