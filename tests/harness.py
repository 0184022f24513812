"""A real JupyterHub (our jupyterhub_config.py, the real proxy, the real Docker engine) in a
subprocess, and an HTTP client that drives it the way a browser and the REST API do.

Used by the end-to-end tests, the browser tests and benchmarks/spawn.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import docker
import requests
import websocket

from labgpu.labels import hub_filter

REPO = Path(__file__).resolve().parent.parent
WORKSPACE_IMAGE = os.environ.get("LABGPU_IMAGE", "labgpu/workspace:local")
NETWORK = os.environ.get("LABGPU_NETWORK", "labgpu")


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; raise TimeoutError
    naming ``what`` after ``timeout`` seconds. ``predicate`` may raise to stop waiting early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# The quota policy tests run under unless they bring their own: everyone may start CPU-only
# workspaces of the image under test.
TEST_QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 4G, cpus: 1, shm: 2G, images: [pytorch]}}
"""


class HubFailed(RuntimeError):
    pass


@dataclass
class HubProcess:
    """One hub on free ports with its own state dir, hub id, containers and volumes."""

    users: list[str] = field(default_factory=lambda: ["alice", "bob"])
    password: str = "test-password"
    config: Path = REPO / "jupyterhub_config.py"
    extra_env: dict[str, str] = field(default_factory=dict)
    hub_id: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    log_path: Path | None = None
    quotas: str | None = TEST_QUOTAS  # YAML text of the quota policy (None: LABGPU_QUOTAS as set)

    def __post_init__(self):
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"labgpu-{self.hub_id}-"))
        self.quotas_file = self.state_dir / "quotas.yaml"
        if self.quotas is not None:
            self.quotas_file.write_text(self.quotas)
        self.port = free_port()
        # Fixed for the hub's life: running workspaces keep the hub API URL they started with.
        self.hub_port = free_port("0.0.0.0")
        self.proxy_api_port = free_port()
        self.web_port = free_port()  # the labgpu web service (GPU pages)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.docker = docker.from_env()
        if self.log_path is None:
            self.log_path = self.state_dir / "hub.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LABGPU_MODE="demo",
            LABGPU_BIND_URL=self.url,
            LABGPU_HUB_PORT=str(self.hub_port),
            LABGPU_PROXY_API_PORT=str(self.proxy_api_port),
            LABGPU_WEB_PORT=str(self.web_port),
            LABGPU_STATE_DIR=str(self.state_dir),
            LABGPU_HUB_ID=self.hub_id,
            LABGPU_DEMO_USERS=",".join(self.users),
            LABGPU_DEMO_PASSWORD=self.password,
            LABGPU_IMAGE=WORKSPACE_IMAGE,
            LABGPU_NETWORK=NETWORK,
        )
        if self.quotas is not None:
            env["LABGPU_QUOTAS"] = str(self.quotas_file)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> HubProcess:
        jupyterhub = Path(sys.executable).with_name("jupyterhub")
        self._log = open(self.log_path, "ab")  # noqa: SIM115  # the hub's output for its life; closed in stop()
        self.proc = subprocess.Popen(
            [str(jupyterhub), "-f", str(self.config)],
            cwd=self.state_dir,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self.healthy, timeout, "the hub to answer /hub/health")
        except TimeoutError:
            raise HubFailed(f"hub not up after {timeout}s:\n{self.log_tail()}") from None
        return self

    def healthy(self) -> bool:
        """Does the hub answer its health check? Raises HubFailed if its process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise HubFailed(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return requests.get(f"{self.url}/hub/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The proxy runs in the hub's process group; make sure nothing is left on our ports.
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._log.close()

    def containers(self, **filters):
        labels = [hub_filter(self.hub_id)] + [f"{k}={v}" for k, v in filters.items()]
        return self.docker.containers.list(all=True, filters={"label": labels})

    def volumes(self):
        return [v for v in self.docker.volumes.list() if v.name.startswith(f"{self.hub_id}-")]

    def cleanup(self) -> None:
        self.stop()
        for c in self.containers():
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: the hub's own removal of it is in progress
                    raise
        for v in self.volumes():
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def client(self, user: str) -> HubClient:
        return HubClient(self, user).login()


class HubClient:
    """A logged-in user: the hub's pages, its REST API with the session cookie, their server."""

    def __init__(self, hub: HubProcess, user: str):
        self.hub, self.user = hub, user
        self.session = requests.Session()
        self._token: str | None = None

    def login(self, password: str | None = None) -> HubClient:
        url = f"{self.hub.url}/hub/login"
        self.session.get(url, timeout=10).raise_for_status()
        r = self.session.post(
            url,
            data={"username": self.user, "password": password or self.hub.password, "_xsrf": self.xsrf},
            timeout=30,
            allow_redirects=False,
        )
        if r.status_code != 302:
            raise HubFailed(f"login as {self.user} failed: HTTP {r.status_code}")
        return self

    @property
    def xsrf(self) -> str:
        return self.session.cookies.get("_xsrf", path="/hub/") or self.session.cookies.get("_xsrf") or ""

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        headers["X-XSRFToken"] = self.xsrf
        return self.session.request(method, f"{self.hub.url}/hub/api{path}", headers=headers, timeout=60, **kwargs)

    def server_model(self, name: str = "") -> dict | None:
        r = self.api("GET", f"/users/{self.user}")
        r.raise_for_status()
        return r.json().get("servers", {}).get(name)

    def start_server(self, name: str = "", options: dict | None = None) -> requests.Response:
        path = f"/users/{self.user}/servers/{name}" if name else f"/users/{self.user}/server"
        return self.api("POST", path, json=options or {})

    def wait_ready(self, name: str = "", timeout: float = 180) -> dict:

        def ready() -> dict | None:
            model = self.server_model(name)
            if model is None:  # the spawn failed and the hub forgot the server
                raise HubFailed(f"{self.user}'s server stopped before it was ready:\n{self.hub.log_tail()}")
            return model if model.get("ready") else None

        try:
            return wait_until(ready, timeout, f"{self.user}'s server to be ready")
        except TimeoutError:
            raise HubFailed(f"{self.user}'s server not ready after {timeout}s:\n{self.hub.log_tail()}") from None

    def stop_server(self, name: str = "", timeout: float = 60) -> None:
        path = f"/users/{self.user}/servers/{name}" if name else f"/users/{self.user}/server"
        r = self.api("DELETE", path)
        if r.status_code not in (202, 204):
            raise HubFailed(f"stop failed: HTTP {r.status_code} {r.text}")
        try:
            wait_until(lambda: self.server_model(name) is None, timeout, f"{self.user}'s server to stop")
        except TimeoutError:
            raise HubFailed(f"{self.user}'s server did not stop in {timeout}s") from None

    def progress(self, until: str, name: str = "", timeout: float = 60) -> list[str]:
        """The spawn page's progress messages, read from the event stream until one contains
        ``until`` (AssertionError listing what was seen if none does within ``timeout``)."""
        path = f"/users/{self.user}/servers/{name}/progress" if name else f"/users/{self.user}/server/progress"
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        with self.session.get(
            f"{self.hub.url}/hub/api{path}", headers={"X-XSRFToken": self.xsrf}, stream=True, timeout=timeout
        ) as r:
            r.raise_for_status()
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    seen.append(json.loads(line[5:])["message"])
                    if until in seen[-1]:
                        return seen
                if time.monotonic() > deadline:
                    break
        raise AssertionError(f"never saw {until!r} in the progress stream: {seen}")

    @property
    def token(self) -> str:
        if self._token is None:
            r = self.api("POST", f"/users/{self.user}/tokens", json={"note": "e2e", "expires_in": 3600})
            r.raise_for_status()
            self._token = r.json()["token"]
        return self._token

    def server_api(self, method: str, path: str, name: str = "", **kwargs) -> requests.Response:
        """Call the user's Jupyter server through the proxy, as its owner (token auth)."""
        prefix = f"/user/{self.user}/{name + '/' if name else ''}"
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        return requests.request(method, f"{self.hub.url}{prefix}{path}", headers=headers, timeout=60, **kwargs)

    def run_code(self, code: str, name: str = "", timeout: float = 120) -> str:
        """Run code in a new kernel over the kernel websocket; return its output text."""
        r = self.server_api("POST", "api/kernels", name=name, json={"name": "python3"})
        r.raise_for_status()
        kernel_id = r.json()["id"]
        try:
            return execute(self.hub.url, self.user, name, kernel_id, self.token, code, timeout)
        finally:
            self.server_api("DELETE", f"api/kernels/{kernel_id}", name=name)


class KernelError(RuntimeError):
    pass


def execute(base_url: str, user: str, server: str, kernel_id: str, token: str, code: str, timeout: float) -> str:
    ws_url = (
        base_url.replace("http", "ws", 1)
        + f"/user/{user}/{server + '/' if server else ''}api/kernels/{kernel_id}/channels"
    )
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": user,
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                raise KernelError(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()
    raise KernelError(f"no reply from the kernel in {timeout}s")


def random_password() -> str:
    return secrets.token_urlsafe(12)
