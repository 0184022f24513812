"""`labgpu ssh-gateway`: the hub's SSH gateway (a managed service, LABGPU_SSH=on), and
`labgpu ssh keys list|add|remove USER`: users' registered SSH public keys, for admins (users add theirs on the hub's
"SSH keys" page). Thin: parse, build the gateway's parts (labgpu/ssh), run or print."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from labgpu.cli.options import add_ledger_option, duration_seconds, ledger_url
from labgpu.cli.table import format_table

log = logging.getLogger("labgpu.ssh")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = subparsers.add_parser(
        "ssh-gateway",
        help="the SSH gateway into users' workspaces (the hub runs it when LABGPU_SSH=on)",
        description="Serve SSH: `ssh -p PORT alice@hub` gets a shell in alice's running default server, "
        "alice.NAME@hub in her named server NAME; commands, sftp/scp and forwards to the workspace's own ports "
        "work too. Logins: a key registered on the hub's 'SSH keys' page, or a hub API token as the password. "
        "Needs the Hub API ($JUPYTERHUB_API_URL, $JUPYTERHUB_API_TOKEN, as a managed service gets them) and Docker.",
    )
    add_ledger_option(gateway)
    state_dir = Path(os.environ.get("LABGPU_STATE_DIR", ".state"))
    gateway.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every address)")
    gateway.add_argument("--port", type=int, default=2222, help="port to listen on (default: 2222)")
    gateway.add_argument(
        "--host-key",
        type=Path,
        default=state_dir / "ssh_host_ed25519_key",
        help="the gateway's host key, made (mode 0600) on first start "
        "(default: ssh_host_ed25519_key in $LABGPU_STATE_DIR or ./.state)",
    )
    gateway.add_argument(
        "--hub-id",
        default=os.environ.get("LABGPU_HUB_ID", "labgpu"),
        help="only containers with this org.labgpu.hub label are reachable (default: $LABGPU_HUB_ID, else labgpu)",
    )
    gateway.add_argument(
        "--hub-url",
        default=os.environ.get("LABGPU_BIND_URL", "http://127.0.0.1:8000"),
        help="the hub's public URL, for 'start your server at ...' (default: $LABGPU_BIND_URL)",
    )
    gateway.add_argument("--audit-log", type=Path, default=None, help="also append the audit lines to this file")
    gateway.add_argument(
        "--max-failures", type=int, default=5, help="failed logins per user and source address before a pause (5)"
    )
    gateway.add_argument(
        "--failure-window",
        type=duration_seconds,
        default=600.0,
        metavar="DURATION",
        help="how long a failed login counts (default: 10m)",
    )
    gateway.set_defaults(func=run_gateway)

    ssh = subparsers.add_parser(
        "ssh",
        help="users' SSH public keys: labgpu ssh keys list|add|remove USER (users add theirs on the 'SSH keys' page)",
        description=__doc__,
    )
    ssh_commands = ssh.add_subparsers(dest="ssh_command", metavar="COMMAND", required=True)
    keys = ssh_commands.add_parser("keys", help="list, add or remove a user's SSH public keys")
    add_ledger_option(keys)
    keys.add_argument("action", choices=("list", "add", "remove"))
    keys.add_argument("user", help="the hub user name")
    keys.add_argument(
        "key",
        nargs="?",
        default=None,
        help="add: the public key line, or @FILE (e.g. @id_ed25519.pub); remove: its fingerprint",
    )
    keys.set_defaults(func=run_keys)


def run_gateway(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    api_url, token = os.environ.get("JUPYTERHUB_API_URL", ""), os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not api_url or not token:
        print(
            "labgpu ssh-gateway: needs $JUPYTERHUB_API_URL and $JUPYTERHUB_API_TOKEN (the hub sets them for its "
            "managed service: LABGPU_SSH=on)",
            file=sys.stderr,
        )
        return 2
    from labgpu.db.ssh_key_store import SshKeyStore
    from labgpu.ssh.access import FailedLogins
    from labgpu.ssh.docker_exec import DockerExec, DockerExecError
    from labgpu.ssh.gateway import Gateway, start_gateway
    from labgpu.ssh.hub_api import HubApi

    try:
        docker_exec = DockerExec(args.hub_id)
    except DockerExecError as e:
        print(f"labgpu ssh-gateway: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # docker.from_env(): no engine
        print(f"labgpu ssh-gateway: cannot reach Docker ({e}); is the engine running?", file=sys.stderr)
        return 2
    gateway = Gateway(
        hub=HubApi(api_url, token),
        docker=docker_exec,
        keys=SshKeyStore(ledger_url(args)),
        hub_url=args.hub_url,
        failures=FailedLogins(per_user=args.max_failures, window=args.failure_window),
        audit_file=args.audit_log,
    )

    async def serve() -> None:
        try:
            server = await start_gateway(gateway, args.host, args.port, args.host_key)
        except OSError as e:
            raise SystemExit(
                f"labgpu ssh-gateway: cannot listen on {args.host}:{args.port}: {e.strerror or e}"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(serve())
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from labgpu.db.ssh_key_store import SshKeyStore
    from labgpu.ssh.registry import register_key

    store = SshKeyStore(ledger_url(args))
    if args.action == "list":
        rows = [
            [k.fingerprint, k.algorithm, k.comment, k.added_at.strftime("%Y-%m-%d %H:%M"), _when(k.last_used_at)]
            for k in store.keys(args.user)
        ]
        if not rows:
            print(f"{args.user} has no SSH keys")
        else:
            print(format_table([["FINGERPRINT", "TYPE", "COMMENT", "ADDED", "LAST USED"], *rows]))
        return 0
    if not args.key:
        print(f"labgpu ssh keys {args.action}: give the key (add) or its fingerprint (remove)", file=sys.stderr)
        return 2
    if args.action == "add":
        line = Path(args.key[1:]).read_text() if args.key.startswith("@") else args.key
        try:
            key = register_key(store, args.user, line)
        except ValueError as e:
            print(f"labgpu ssh keys add: {e}", file=sys.stderr)
            return 1
        print(f"added {key.fingerprint} ({key.algorithm} {key.comment}) for {args.user}")
        return 0
    if not store.remove(args.user, args.key):
        print(f"labgpu ssh keys remove: {args.user} has no key {args.key} (see: labgpu ssh keys list {args.user})")
        return 1
    print(f"removed {args.key} from {args.user}'s keys")
    return 0


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "never"  # type: ignore[attr-defined]
