"""LabGPU Hub configuration. Every deployment knob is an environment variable; this table lists
every variable this file reads (tests/e2e/test_hub_config.py checks that it stays complete).

variable                    default                          meaning
--------------------------  -------------------------------  ---------------------------------------------
The hub, its database and the proxy
LABGPU_MODE                 demo                             demo: local accounts from LABGPU_DEMO_USERS with
                                                             the password LABGPU_DEMO_PASSWORD, localhost
                                                             only; production: needs LABGPU_AUTHENTICATOR
                                                             and a cookie secret, or the hub refuses to start
LABGPU_BIND_URL             http://127.0.0.1:8000            public URL the proxy listens on
LABGPU_HUB_PORT             8081                             port of the hub's own API, on the workspace
                                                             network's gateway
LABGPU_PROXY_API_PORT       8001                             port of the proxy's REST API on 127.0.0.1
LABGPU_PROXY_COMMAND        configurable-http-proxy          the proxy's command line, comma-separated
LABGPU_STATE_DIR            ./.state                         the hub's database, secrets and ledger
LABGPU_DB_URL               sqlite:///STATE_DIR/jupyterhub.sqlite
                                                             JupyterHub's database (an SQLAlchemy URL)
LABGPU_HUB_ID               labgpu                           this hub's name in container labels, container
                                                             and volume names
LABGPU_CONFIG_DIR           jupyterhub_config.d (beside      the admin's own settings: its *.py files are
                            this file)                       loaded in name order after ours (see the end
                                                             of this file; missing directory: none)
Workspaces
LABGPU_IMAGE                labgpu/workspace:local           the workspace image when the quotas name none
LABGPU_NETWORK              labgpu                           Docker network for workspaces (created if missing)
LABGPU_SHM_SIZE             2G                               /dev/shm size in workspaces
LABGPU_MEM_LIMIT            (none)                           memory limit per workspace
LABGPU_CPU_LIMIT            (none)                           CPUs per workspace
LABGPU_START_TIMEOUT        300                              seconds a workspace may take to start
Quotas, GPUs and the queue
LABGPU_QUOTAS               quotas/quotas.yaml               quota files or directories, comma-separated;
                                                             "none" turns the policy off
LABGPU_LEDGER               STATE_DIR/ledger.sqlite          SQLite file of who holds which GPU
LABGPU_GPU_SOURCE           auto                             auto (NVML if a driver answers, else no GPUs),
                                                             nvml, static:FILE, replay:FILE, none, or
                                                             simulated:PRESET (demo mode only)
LABGPU_DEMO_GPUS            (none)                           demo mode: simulated GPUs, e.g. 4xH100 or
                                                             2xA100-NVLink+2xL4 (= LABGPU_GPU_SOURCE=
                                                             simulated:PRESET); production refuses them
LABGPU_GPU_DRIVER           nvidia                           nvidia (DeviceRequests by UUID) or cdi;
                                                             simulated GPUs always use "simulated"
LABGPU_GPU_PLACEMENT        pack                             pack or spread, for multi-GPU servers
LABGPU_QUEUE_TIMEOUT        86400                            seconds a GPU spawn may wait in the fair-share
                                                             queue (0: never queue)
LABGPU_QUEUE_POLL_INTERVAL  5s                               time between dequeue passes while someone waits
LABGPU_QUEUE_ABANDON_AFTER  15m                              a queue entry nobody waits for is dropped after
LABGPU_QUOTA_POLL_INTERVAL  5s                               the hub re-reads changed quota files this often
                                                             and makes the groups whose members they list
                                                             match them in the hub (add and remove)
Services (started by the hub)
LABGPU_POLLER               auto                             the NVML poller: auto (when the hub has GPUs),
                                                             on or off
LABGPU_POLLER_INTERVAL      5                                seconds between telemetry samples
LABGPU_RECLAIM              auto                             the idle-GPU reclaimer: auto, on or off
LABGPU_RECLAIM_INTERVAL     1m                               reclaimer round
LABGPU_RECLAIM_WARN         15m                              warning lead time before a reclaim
LABGPU_RECLAIM_WINDOW       5m                               busy window
LABGPU_DISK                 on                               the disk-usage service (homes and group folders
                                                             against the quota files' disk / shared_disk):
                                                             on or off
LABGPU_DISK_INTERVAL        10m                              time between two measurements of the volumes
LABGPU_WEB_PORT             8090                             port (on 127.0.0.1) of the hub's GPU pages, the
                                                             labgpu web service at /services/labgpu/
LABGPU_PROMETHEUS_TOKEN     (none)                           a token for Prometheus (openssl rand -hex 32): reads
                                                             /hub/metrics and /services/labgpu/metrics
LABGPU_METRICS_HOSTNAME     (the hub host's name)            the Hostname label of the per-GPU metrics (set it
                                                             when the hub runs in a container)
LABGPU_SSH                  off                              the SSH gateway (ssh -p 2222 alice@hub: a shell,
                                                             commands, scp/sftp and forwards into her running
                                                             workspace; keys or a hub token): on or off
LABGPU_SSH_PORT             2222                             the SSH gateway's port
LABGPU_SSH_HOST             demo: 127.0.0.1, else 0.0.0.0    the address the SSH gateway listens on
DOCKER_HOST                 (the local socket)               the Docker engine; passed on to the services
Users and logging in
LABGPU_ADMIN_USERS          (none; demo: the first user)     comma-separated admin user names
LABGPU_DEMO_USERS           demo                             demo mode: comma-separated user names
LABGPU_DEMO_PASSWORD        demo                             demo mode: the shared password
LABGPU_AUTHENTICATOR        (none)                           production: a JupyterHub authenticator name
                                                             (github, generic-oauth, ldap, ...) or class;
                                                             one that lets anyone in (a Dummy- or
                                                             NullAuthenticator, by any name) is refused; its
                                                             own settings (OAUTH_CLIENT_ID, ...) are read by it
LABGPU_ALLOWED_USERS        (none)                           production: comma-separated user names allowed in
LABGPU_ALLOW_ALL            false                            production: "true" lets every authenticated user in
JUPYTERHUB_COOKIE_SECRET    (STATE_DIR/cookie_secret)        production: hex cookie secret
"""

import os
import shutil
import sys
import traceback
from pathlib import Path

import docker

from labgpu.db.ledger import LedgerError
from labgpu.gpus.inventory import InventoryError
from labgpu.hub import resources as hub_resources
from labgpu.hub.announcement import hub_announcement
from labgpu.hub.docker_network import DockerUnavailable, ensure_workspace_network
from labgpu.hub.group_shares import include_group_shares
from labgpu.hub.group_sync import start_in_hub as start_group_sync
from labgpu.hub.hub_limits import container_starts, named_server_limit
from labgpu.hub.login_checks import demo_address_problem, production_authenticator_problem
from labgpu.hub.startup_checks import workspace_settings_problems
from labgpu.metrics.web import METRICS_SCOPE, METRICS_SCOPE_DESCRIPTION
from labgpu.quota import PolicyError, default_paths, jupyterhub_groups, split_paths
from labgpu.services.reclaimer import HUB_API_SCOPES as RECLAIMER_SCOPES
from labgpu.ssh.hub_api import HUB_API_SCOPES as SSH_SCOPES
from labgpu.units import gpus_text, parse_duration

c = get_config()


def env(name, default=""):
    return os.environ.get(name, default).strip()


def env_list(name, default=""):
    return [v.strip() for v in env(name, default).split(",") if v.strip()]


def refuse(message):
    print(f"LabGPU Hub will not start: {message}", file=sys.stderr)
    sys.exit(1)


def env_seconds(name, default):
    """A duration (``5s``, ``15m``, ``1h30m`` or a number of seconds) from the environment."""
    text = env(name, default)
    try:
        return parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as e:
        refuse(f"{name} {e}")


mode = env("LABGPU_MODE", "demo")
if mode not in ("demo", "production"):
    refuse(f"LABGPU_MODE must be 'demo' or 'production' (got {mode!r})")
hub_id = env("LABGPU_HUB_ID", "labgpu")
state_dir = Path(env("LABGPU_STATE_DIR", ".state")).resolve()
state_dir.mkdir(parents=True, exist_ok=True)

# --- the hub, its database and the proxy -------------------------------------------------
c.JupyterHub.bind_url = env("LABGPU_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.db_url = env("LABGPU_DB_URL", f"sqlite:///{state_dir / 'jupyterhub.sqlite'}")
c.JupyterHub.cookie_secret_file = str(state_dir / "cookie_secret")
c.JupyterHub.pid_file = str(state_dir / "jupyterhub.pid")
# Workspaces keep running when the hub restarts (upgrades, crashes); the hub finds them again.
c.JupyterHub.cleanup_servers = False
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(env('LABGPU_PROXY_API_PORT', '8001'))}"
c.ConfigurableHTTPProxy.pid_file = str(state_dir / "proxy.pid")
c.ConfigurableHTTPProxy.command = env_list("LABGPU_PROXY_COMMAND", "configurable-http-proxy")
if Path("/usr/share/nodejs/commander").exists():
    # Debian's configurable-http-proxy finds its modules only through NODE_PATH.
    os.environ.setdefault("NODE_PATH", "/usr/share/nodejs")
if not shutil.which(c.ConfigurableHTTPProxy.command[0]):
    refuse(
        f"the proxy command {c.ConfigurableHTTPProxy.command[0]!r} is not installed "
        "(apt-get install node-configurable-http-proxy, or set LABGPU_PROXY_COMMAND)"
    )

# Workspaces reach the hub's API at the gateway of their network: the hub listens there.
network = env("LABGPU_NETWORK", "labgpu")
try:
    gateway = ensure_workspace_network(network)
except DockerUnavailable as e:
    refuse(str(e))
c.JupyterHub.hub_bind_url = f"http://{gateway}:{int(env('LABGPU_HUB_PORT', '8081'))}"
c.JupyterHub.hub_connect_ip = gateway

# --- authentication ------------------------------------------------------------------------
admins = set(env_list("LABGPU_ADMIN_USERS"))
if mode == "demo":
    demo_users = env_list("LABGPU_DEMO_USERS", "demo")
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = env("LABGPU_DEMO_PASSWORD", "demo")
    c.Authenticator.allowed_users = set(demo_users)
    c.Authenticator.admin_users = admins or {demo_users[0]}
    if problem := demo_address_problem(c.JupyterHub.bind_url):
        refuse(problem)
else:
    authenticator = env("LABGPU_AUTHENTICATOR")
    if not authenticator:
        refuse(
            "production mode needs a real authenticator: set LABGPU_AUTHENTICATOR "
            "(e.g. github, generic-oauth, ldap) and its settings"
        )
    if problem := production_authenticator_problem(authenticator):  # the class, by whatever name
        refuse(problem)
    if not env("JUPYTERHUB_COOKIE_SECRET") and not (state_dir / "cookie_secret").is_file():
        refuse(
            f"production mode needs a cookie secret: set JUPYTERHUB_COOKIE_SECRET or write "
            f"{state_dir / 'cookie_secret'} (openssl rand -hex 32 > {state_dir / 'cookie_secret'}; chmod 600)"
        )
    c.JupyterHub.authenticator_class = authenticator
    c.Authenticator.admin_users = admins
    allowed = set(env_list("LABGPU_ALLOWED_USERS"))
    if allowed:
        c.Authenticator.allowed_users = allowed
    c.Authenticator.allow_all = env("LABGPU_ALLOW_ALL").lower() == "true"

# --- workspaces ----------------------------------------------------------------------------
c.JupyterHub.spawner_class = "labgpu"
c.GPUDockerSpawner.hub_id = hub_id
c.GPUDockerSpawner.prefix = hub_id
c.GPUDockerSpawner.home_volume = hub_id + "-home-{username}"
c.GPUDockerSpawner.image = env("LABGPU_IMAGE", "labgpu/workspace:local")
c.GPUDockerSpawner.pull_policy = "never" if mode == "demo" else "ifnotpresent"
c.GPUDockerSpawner.network_name = network
c.GPUDockerSpawner.shm_size = env("LABGPU_SHM_SIZE", "2G")
if env("LABGPU_MEM_LIMIT"):
    c.GPUDockerSpawner.mem_limit = env("LABGPU_MEM_LIMIT")
if env("LABGPU_CPU_LIMIT"):
    c.GPUDockerSpawner.cpu_limit = float(env("LABGPU_CPU_LIMIT"))
c.GPUDockerSpawner.default_url = "/lab"
c.JupyterHub.allow_named_servers = True  # how many: the quota policy's named_servers
# A workspace asks the hub again about a visitor's token after 10 s (JupyterHub's default: 5 min),
# so a share revoked on the Sharing page ends within seconds in the shared server too.
c.GPUDockerSpawner.args = ["--HubOAuth.cache_max_age=10"]
# A server shared with a group opens for its members (JupyterHub 6.1 leaves group shares out of
# tokens' scopes: labgpu/hub/group_shares.py).
include_group_shares()

# --- quotas, GPUs and the ledger -------------------------------------------------------------
quotas = env("LABGPU_QUOTAS")
quota_files = [] if quotas == "none" else (split_paths(quotas) if quotas else default_paths({}))
ledger_url = hub_resources.default_ledger_path({**os.environ, "LABGPU_STATE_DIR": str(state_dir)})
gpu_source = env("LABGPU_GPU_SOURCE", "auto")
if env("LABGPU_DEMO_GPUS"):
    if gpu_source != "auto":
        refuse("set either LABGPU_DEMO_GPUS or LABGPU_GPU_SOURCE, not both")
    gpu_source = f"simulated:{env('LABGPU_DEMO_GPUS')}"
simulated_gpus = gpu_source.startswith("simulated:")
if simulated_gpus and mode == "production":
    refuse(
        f"simulated GPUs ({gpu_source}) are for the demo and tests only: production mode schedules real GPUs. "
        "Unset LABGPU_DEMO_GPUS / LABGPU_GPU_SOURCE (NVML is the default) or use LABGPU_MODE=demo"
    )
gpu_driver = env("LABGPU_GPU_DRIVER", "simulated" if simulated_gpus else "nvidia")
if simulated_gpus != (gpu_driver == "simulated"):
    refuse(
        f"LABGPU_GPU_DRIVER={gpu_driver} does not fit LABGPU_GPU_SOURCE={gpu_source}: simulated GPUs need the "
        "'simulated' driver and real GPUs 'nvidia' or 'cdi' (leave LABGPU_GPU_DRIVER unset to get the right one)"
    )
try:
    report = hub_resources.prepare_hub(
        quota_files=quota_files,
        ledger_url=ledger_url,
        gpu_source=gpu_source,
        hub_id=hub_id,
        docker_client=docker.from_env(),
    )
except PolicyError as e:
    refuse("the quota files are invalid (fix them; `labgpu quotas check` shows the same):\n  " + "\n  ".join(e.errors))
except (InventoryError, LedgerError) as e:
    refuse(str(e))
print(
    f"LabGPU Hub: {gpus_text(report.gpus)}{' (SIMULATED: demo mode, no real devices)' if simulated_gpus else ''}; "
    f"ledger {ledger_url}; "
    f"reconciled with Docker: {len(report.plan.adoptions)} adopted, {len(report.plan.releases)} released, "
    f"{len(report.stopped)} conflicting container(s) stopped",
    file=sys.stderr,
)
c.GPUDockerSpawner.quota_files = quota_files
c.GPUDockerSpawner.ledger_url = ledger_url
c.GPUDockerSpawner.gpu_driver = gpu_driver
c.GPUDockerSpawner.gpu_placement = env("LABGPU_GPU_PLACEMENT", "pack")
if quota_files:
    # Groups listed in the quota file become JupyterHub groups (others may come from the
    # authenticator, e.g. OAuth groups with manage_groups). load_groups only adds members; the
    # group sync (labgpu/hub/group_sync.py) also removes them, at start and on every reload.
    policy_store = hub_resources.policy_store(quota_files)
    c.JupyterHub.load_groups = jupyterhub_groups(policy_store.policy)
    start_group_sync(policy_store, env_seconds("LABGPU_QUOTA_POLL_INTERVAL", "5s"))
    # JupyterHub's limit on named servers (shown on the home page) is each user's named_servers.
    c.JupyterHub.named_server_limit_per_user = named_server_limit(policy_store)
c.GPUDockerSpawner.http_timeout = 120
c.GPUDockerSpawner.start_timeout = int(env("LABGPU_START_TIMEOUT", "300"))
c.GPUDockerSpawner.gpu_queue_timeout = int(env("LABGPU_QUEUE_TIMEOUT", "86400"))
c.GPUDockerSpawner.gpu_queue_poll_interval = env_seconds("LABGPU_QUEUE_POLL_INTERVAL", "5s")
c.GPUDockerSpawner.gpu_queue_abandon_after = env_seconds("LABGPU_QUEUE_ABANDON_AFTER", "15m")


# --- services: GPU telemetry and idle-GPU reclamation -----------------------------------------
# Managed services of the hub (started and restarted by it; spawning never waits for them).
def wanted(name):
    setting = env(name, "auto")
    if setting not in ("auto", "on", "off"):
        refuse(f"{name} must be auto, on or off (got {setting!r})")
    return setting == "on" or (setting == "auto" and report.gpus > 0)


# Managed services inherit little of the hub's environment: pass what they need.
service_env = {"LABGPU_HUB_ID": hub_id, "LABGPU_LEDGER": ledger_url, "PYTHONUNBUFFERED": "1"}
if env("DOCKER_HOST"):
    service_env["DOCKER_HOST"] = env("DOCKER_HOST")
if env("LABGPU_METRICS_HOSTNAME"):  # the Hostname label of the GPU series (default: the host's name)
    service_env["LABGPU_METRICS_HOSTNAME"] = env("LABGPU_METRICS_HOSTNAME")
c.JupyterHub.services = []
c.JupyterHub.load_roles = []
if wanted("LABGPU_POLLER"):
    c.JupyterHub.services.append(
        {
            "name": "labgpu-poller",
            # Needs the host's PID namespace (/proc) to attribute GPU processes to workspaces.
            "command": [
                sys.executable,
                "-m",
                "labgpu.cli",
                "poller",
                "--db",
                ledger_url,
                "--hub-id",
                hub_id,
                "--interval",
                env("LABGPU_POLLER_INTERVAL", "5"),
                # Simulated GPUs: busy while a LABGPU_SIM_BUSY=1 process runs in the workspace.
                *(["--source", gpu_source] if simulated_gpus else []),
            ],
            "environment": service_env,
            "cwd": str(state_dir),
        }
    )
if wanted("LABGPU_RECLAIM"):
    c.JupyterHub.services.append(
        {
            "name": "labgpu-reclaim",
            "command": [
                sys.executable,
                "-m",
                "labgpu.cli",
                "reclaim",
                "--db",
                ledger_url,
                "--quotas",
                ",".join(quota_files),
                "--interval",
                env("LABGPU_RECLAIM_INTERVAL", "1m"),
                "--warn-before",
                env("LABGPU_RECLAIM_WARN", "15m"),
                "--busy-window",
                env("LABGPU_RECLAIM_WINDOW", "5m"),
            ],
            "environment": service_env,
        }
    )
    c.JupyterHub.load_roles.append(
        # only what it needs: stop servers and read users' groups
        {"name": "labgpu-reclaim", "scopes": list(RECLAIMER_SCOPES), "services": ["labgpu-reclaim"]}
    )
# The hub's GPU pages (GPU board, my usage, lab usage, their JSON API): the labgpu web service,
# logged in through the hub (Hub OAuth), linked in the hub's nav bar by labgpu/web/hub_templates.
c.JupyterHub.services.append(
    {
        "name": "labgpu",
        "url": f"http://127.0.0.1:{int(env('LABGPU_WEB_PORT', '8090'))}",
        "command": [
            *[sys.executable, "-m", "labgpu.cli", "web", "--db", ledger_url],
            *["--quotas", ",".join(quota_files) or "none"],
        ],
        "environment": service_env,
        "oauth_no_confirm": True,
    }
)
# The web service's own token: one role, each page module's needs. Sharing (labgpu/web/sharing.py):
# users hold no sharing scope (shares!user would let them share with anyone); the service checks
# each request (own servers, own groups or their members, access only) and shares with these.
# Group pages (labgpu/web/groups.py): a manager may stop a member's idle server holding GPUs.
c.JupyterHub.load_roles.append(
    {
        "name": "labgpu-web",
        "scopes": ["shares", "read:users", "read:servers", "read:groups", "delete:servers"],
        "services": ["labgpu"],
    }
)


def grant_users(*scopes):
    """Add scopes to JupyterHub's default "user" role (kept: self)."""
    role = next((r for r in c.JupyterHub.load_roles if r["name"] == "user"), None)
    if role is None:
        role = {"name": "user", "scopes": ["self"]}
        c.JupyterHub.load_roles.append(role)
    role["scopes"] += [s for s in scopes if s not in role["scopes"]]


grant_users("access:services!service=labgpu")  # every user may open the GPU pages (each page checks more)
# Prometheus: one token reads the hub's /hub/metrics (read:metrics) and LabGPU's
# /services/labgpu/metrics (a custom scope of its own, so that no other token reads them).
c.JupyterHub.custom_scopes = {METRICS_SCOPE: {"description": METRICS_SCOPE_DESCRIPTION}}
if env("LABGPU_PROMETHEUS_TOKEN"):
    c.JupyterHub.services.append({"name": "prometheus", "api_token": env("LABGPU_PROMETHEUS_TOKEN")})
    c.JupyterHub.load_roles.append(
        {"name": "prometheus", "scopes": ["read:metrics", METRICS_SCOPE], "services": ["prometheus"]}
    )
c.JupyterHub.template_paths = [str(Path(__file__).resolve().parent / "labgpu" / "web" / "hub_templates")]
disk_service = env("LABGPU_DISK", "on")
if disk_service not in ("on", "off"):
    refuse(f"LABGPU_DISK must be on or off (got {disk_service!r})")
if disk_service == "on":  # CPU-only hubs too: any user can fill the Docker disk from their home
    c.JupyterHub.services.append(
        {
            "name": "labgpu-disk",
            "command": [
                *[sys.executable, "-m", "labgpu.cli", "disk", "--measure", "--db", ledger_url, "--hub-id", hub_id],
                *["--quotas", ",".join(quota_files) or "none", "--interval", env("LABGPU_DISK_INTERVAL", "10m")],
            ],
            "environment": service_env,
        }
    )
    # only what it needs: read users' groups (to resolve their quotas for its warnings)
    c.JupyterHub.load_roles.append(
        {"name": "labgpu-disk", "scopes": ["read:users:groups"], "services": ["labgpu-disk"]}
    )
ssh_gateway = env("LABGPU_SSH", "off")
if ssh_gateway not in ("on", "off"):
    refuse(f"LABGPU_SSH must be on or off (got {ssh_gateway!r})")
if ssh_gateway == "on":  # labgpu/ssh: host key and audit file in the state dir
    # The services share service_env: the web service's SSH keys page shows the port to type.
    service_env["LABGPU_SSH_PORT"] = str(int(env("LABGPU_SSH_PORT", "2222")))
    c.JupyterHub.services.append(
        {
            "name": "labgpu-ssh",
            "command": [
                *[sys.executable, "-m", "labgpu.cli", "ssh-gateway", "--db", ledger_url, "--hub-id", hub_id],
                *["--port", service_env["LABGPU_SSH_PORT"], "--hub-url", c.JupyterHub.bind_url],
                *["--host", env("LABGPU_SSH_HOST", "127.0.0.1" if mode == "demo" else "0.0.0.0")],
                *["--host-key", str(state_dir / "ssh_host_ed25519_key")],
                *["--audit-log", str(state_dir / "ssh-audit.log")],
            ],
            "environment": service_env,
        }
    )
    # only what it needs: whether a user exists and which of their servers are ready
    c.JupyterHub.load_roles.append({"name": "labgpu-ssh", "scopes": list(SSH_SCOPES), "services": ["labgpu-ssh"]})
# Reclaim warnings ("your server will be stopped at 14:05 unless its GPUs get busy") appear in
# the announcement bar of every hub page.
simulated_notice = "This hub's GPUs are simulated (demo mode): no real devices." if simulated_gpus else ""
c.JupyterHub.template_vars = {"announcement": hub_announcement(ledger_url, fallback=simulated_notice)}


# --- the admin's own settings ------------------------------------------------------------------
# Every *.py file of LABGPU_CONFIG_DIR, in name order (like TLJH's jupyterhub_config.d): an extra
# service, an authenticator's options, a different spawner setting. JupyterHub's load_subconfig
# runs each with a `c` of its own and merges it into ours, last: a value set there replaces
# ours, and .append() on a list (c.JupyterHub.services) adds to ours. A missing directory means
# no extra settings; a broken file stops the hub with its name and line.
def load_admin_settings(directory):
    for path in sorted(directory.glob("*.py")):
        try:
            load_subconfig(path.name, path=str(directory))
        except Exception as e:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
            line = frames[-1].lineno if frames else getattr(e, "lineno", None)
            where = f"{path}:{line}" if line else str(path)
            refuse(f"{where}: {type(e).__name__}: {e} (a file of LABGPU_CONFIG_DIR; fix it or move it away)")
        print(f"LabGPU Hub: loaded the admin's settings from {path}", file=sys.stderr)


config_dir = Path(env("LABGPU_CONFIG_DIR") or Path(__file__).parent / "jupyterhub_config.d").resolve()
if config_dir.is_dir():
    load_admin_settings(config_dir)

# --- what the settings may add to a workspace ---------------------------------------------------
# extra_create_kwargs, extra_host_config, volumes, mounts and the network are held to an allowlist
# (labgpu/hub/admin_extras.py), here once with everything above merged, and again at each spawn:
# a hub that would refuse every spawn does not start.
workspace_problems = workspace_settings_problems(c)
if workspace_problems:
    refuse(
        "the workspace settings add what a workspace may not get (fix them in jupyterhub_config.py or "
        "LABGPU_CONFIG_DIR):\n  " + "\n  ".join(workspace_problems)
    )

# --- what the settings above and the admin's add up to ------------------------------------------
# The authenticator class JupyterHub will load, whatever set it last.
if mode == "production" and (problem := production_authenticator_problem(c.JupyterHub.authenticator_class)):
    refuse(problem)
# JupyterHub's concurrent_spawn_limit (default 100; an admin may set it) counts spawns waiting in the
# GPU queue too, so a long queue would turn CPU spawns away: its number limits container starts
# instead, after any wait for GPUs (labgpu/hub/hub_limits.py), and JupyterHub's own count is off.
if "concurrent_spawn_limit" in c.JupyterHub:
    container_starts.limit = int(c.JupyterHub.concurrent_spawn_limit)
c.JupyterHub.concurrent_spawn_limit = 0
