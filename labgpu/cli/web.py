"""`labgpu web`: the hub's web pages (GPU board, my usage, lab usage and their JSON API) as a
JupyterHub managed service with Hub OAuth. The hub starts it (jupyterhub_config.py); it reads the
JUPYTERHUB_* variables the hub gives a managed service, so running it by hand needs them too."""

from __future__ import annotations

import argparse
import os
import sys

from labgpu.cli.options import add_ledger_option, add_quotas_option, ledger_url, quota_paths


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "web", help="the hub's GPU pages (a managed service of the hub)", description=__doc__
    )
    add_ledger_option(parser)
    add_quotas_option(parser, ' ("none": no policy)')
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="where to listen (default: the host and port of $JUPYTERHUB_SERVICE_URL)",
    )
    parser.set_defaults(func=run_web)


def run_web(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    from tornado.ioloop import IOLoop

    from labgpu.web.app import make_app
    from labgpu.web.base import WebContext

    listen = args.listen or urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "")).netloc
    if not listen or ":" not in listen:
        print(
            "labgpu web: give --listen HOST:PORT or run it as the hub's service (JUPYTERHUB_SERVICE_URL)",
            file=sys.stderr,
        )
        return 2
    host, _, port = listen.rpartition(":")
    if not os.environ.get("JUPYTERHUB_API_TOKEN"):
        print("labgpu web: needs the hub's JUPYTERHUB_* variables (it is started by the hub)", file=sys.stderr)
        return 2
    quotas = [] if args.quotas == "none" else quota_paths(args)
    context = WebContext.from_environment(ledger_url(args), quotas)
    app = make_app(context)
    app.listen(int(port), host.strip("[]") or "127.0.0.1", xheaders=True)
    print(f"labgpu web: listening on {listen}, pages at {context.service_prefix}", file=sys.stderr, flush=True)
    IOLoop.current().start()
    return 0
