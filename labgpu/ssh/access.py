"""Who may go where through the SSH gateway: the rules, with no SSH, Docker or HTTP in them.

- The login name says whose server: ``alice`` is alice's default server, ``alice.gpu1`` her
  named server ``gpu1``. User names may hold dots too (``jane.doe``), so a name is read every
  way it can be split (:func:`login_candidates`) and the credential decides: the one whose user
  the key or token belongs to.
- A forward (``ssh -L``, VS Code Remote-SSH) reaches only the workspace itself
  (:func:`forward_target`): ``localhost``/loopback addresses, the workspace's own addresses
  and its host name; anything else on the network is refused.
- Failed logins are limited per user and source address, and per source address over all
  users (:class:`FailedLogins`, with an injected clock); one connection may offer at most
  :data:`MAX_AUTH_TRIES` refused keys or passwords (OpenSSH's MaxAuthTries), and a login name is
  at most :data:`MAX_LOGIN_LENGTH` characters with :data:`MAX_LOGIN_DOTS` dots, so each offer
  costs a few key look-ups at most.
- What a user reads when their server is not running (:func:`not_running_message`).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import quote

from labgpu.labels import server_label
from labgpu.quota.names import normalize_username

# JupyterHub's server names: letters, digits and - . _ ~ (it refuses "/" and spaces).
_SERVER_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,255}$")
MAX_LOGIN_LENGTH = 64  # longer login names are refused before any look-up
MAX_LOGIN_DOTS = 3  # so at most 4 readings (look-ups) of one login name
MAX_AUTH_TRIES = 6  # refused keys/passwords on one connection before it is closed
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class ServerRef:
    """One user's server: ``server`` is "" for the default one."""

    user: str
    server: str = ""

    @property
    def label(self) -> str:
        """``alice`` or ``alice/gpu1``, as the rest of LabGPU names servers."""
        return server_label(self.user, self.server)


def login_candidates(login: str) -> list[ServerRef]:
    """Every server a login name may mean, the whole name as a user first: ``a.b.c`` is user
    ``a.b.c``'s default server, else ``a.b``'s server ``c``, else ``a``'s server ``b.c``. Names longer than
    :data:`MAX_LOGIN_LENGTH` or with more than :data:`MAX_LOGIN_DOTS` dots mean nothing (each
    reading costs a look-up of that user's keys)."""
    raw = login.strip()
    if not raw or len(raw) > MAX_LOGIN_LENGTH or raw.count(".") > MAX_LOGIN_DOTS:
        return []
    if any(c.isspace() or c == "/" for c in raw):
        return []
    found = [ServerRef(normalize_username(raw))]
    at = len(raw)
    while (at := raw.rfind(".", 0, at)) > 0:
        user, server = raw[:at], raw[at + 1 :]
        if _SERVER_NAME.match(server):
            found.append(ServerRef(normalize_username(user), server))
    return found


def server_for_user(login: str, user: str) -> ServerRef | None:
    """The server a login name means for this (authenticated) user, if it names one of theirs."""
    return next((ref for ref in login_candidates(login) if ref.user == user), None)


# ============================================================================================
# Port forwarding: the workspace's own ports only
# ============================================================================================


class ForwardRefused(ValueError):
    """A forward to somewhere other than the workspace; the message tells the user why."""


def forward_target(host: str, port: int, own_addresses: Collection[str], own_names: Collection[str] = ()) -> str:
    """The address to connect to, from inside the workspace, for a forward to ``host:port``:
    a loopback address or ``localhost`` (the workspace's own loopback), one of the workspace's
    own addresses, or its host name (its first address). Anything else: :class:`ForwardRefused`."""
    if not 0 < port < 65536:
        raise ForwardRefused(f"port {port} is not a TCP port (1-65535)")
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in LOOPBACK_NAMES:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if own_addresses and name in {n.lower() for n in own_names if n}:
            return sorted(own_addresses)[0]
    else:
        if address.is_loopback or str(address) in own_addresses:
            return str(address)
    raise ForwardRefused(
        f"forwarding reaches only ports inside your workspace (localhost:PORT, e.g. ssh -L 8888:localhost:8888); "
        f"{host!r} is another address"
    )


# ============================================================================================
# Failed logins
# ============================================================================================


class FailedLogins:
    """Failed logins in a sliding window: at most ``per_user`` per (user, source address) and
    ``per_source`` per source address over all users; past either, logins from there are
    refused (valid credentials too) until old failures leave the window. Bounded memory."""

    def __init__(
        self,
        per_user: int = 5,
        per_source: int = 30,
        window: float = 600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 10_000,
    ) -> None:
        self.per_user, self.per_source, self.window = per_user, per_source, window
        self._clock = clock
        self._max_tracked = max_tracked
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def record(self, user: str, source: str) -> None:
        """One failed login of ``user`` from ``source``."""
        now = self._clock()
        for key in ((user, source), ("", source)):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # most recently failed last
        while len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)

    def blocked_for(self, user: str, source: str) -> float:
        """Seconds until ``user`` may try again from ``source`` (0: now)."""
        now = self._clock()
        wait = 0.0
        for key, limit in (((user, source), self.per_user), (("", source), self.per_source)):
            times = self._failures.get(key)
            if not times:
                continue
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= limit:
                wait = max(wait, times[-limit] + self.window - now)
        return wait


# ============================================================================================
# Messages
# ============================================================================================


def not_running_message(ref: ServerRef, hub_url: str, pending: str | None = None) -> str:
    """What the session prints when the server is not running (or still starting/stopping)."""
    if pending:
        return f"Your server {ref.label} is {pending}ing; try again when it is ready ({_spawn_url(ref, hub_url)}).\n"
    api = f"{hub_url.rstrip('/')}/hub/api/users/{quote(ref.user, safe='')}/server"
    if ref.server:
        api += f"s/{quote(ref.server, safe='')}"
    return (
        f"Your server {ref.label} is not running. Start it in the browser: {_spawn_url(ref, hub_url)}\n"
        f"or from a shell with a hub token: curl -X POST -H 'Authorization: token TOKEN' {api}\n"
        "then connect again.\n"
    )


def _spawn_url(ref: ServerRef, hub_url: str) -> str:
    path = f"/hub/spawn/{quote(ref.user, safe='')}"
    if ref.server:
        path += f"/{quote(ref.server, safe='')}"
    return hub_url.rstrip("/") + path


def token_grants_access(scopes: Collection[str], ref: ServerRef) -> bool:
    """Whether a token with these (expanded) scopes may use this server: ``access:servers``
    unfiltered, or filtered to the user or to the very server."""
    return bool(
        {"access:servers", f"access:servers!user={ref.user}", f"access:servers!server={ref.user}/{ref.server}"}
        & set(scopes)
    )
