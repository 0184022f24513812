"""From inside alice's running workspace, what a user would try: the Docker socket, the host's
files, root, capabilities, bob's server and home, the hub's API, and more CPU, memory, processes
or /dev/shm than granted. Every attempt must fail.

One hub, one workspace each for alice and bob; alice's kernel runs one probe that gathers what
it sees (as JSON), and each test below asserts one thing a user must not be able to do.
"""

from __future__ import annotations

import json
import socket
from typing import NamedTuple

import pytest

from labgpu.labels import LABEL_USER
from tests.harness import NETWORK, WORKSPACE_IMAGE, HubProcess

pytestmark = [pytest.mark.e2e, pytest.mark.security]

MEMORY = 2 * 1024**3
SHM = 1024**3
PIDS = 1024
QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, pids: {PIDS}, images: [pytorch]}}
"""

# Runs in alice's kernel as alice; prints one JSON object of what it found. ``BOB_IP`` and
# ``BOB_PORT`` are filled in from Docker before it runs.
PROBE = r"""
import errno, json, os, shutil, socket, subprocess, urllib.error, urllib.request

facts = {}

def attempt(fn):
    try:
        return "ok: " + str(fn())[:200]
    except OSError as e:
        return "denied: " + (errno.errorcode.get(e.errno, "") if e.errno else type(e).__name__)
    except Exception as e:
        return "denied: " + type(e).__name__

def connect(host, port, timeout=3):
    with socket.create_connection((host, port), timeout=timeout):
        return "connected"

def http_get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return "unreachable: " + str(e)[:100]

facts["sockets"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/var/run/containerd/containerd.sock",
                                 "/run/containerd/containerd.sock") if os.path.exists(p)]
facts["mountinfo"] = open("/proc/self/mountinfo").read()
facts["shadow"] = attempt(lambda: open("/etc/shadow").read())
facts["uid"], facts["euid"], facts["gid"] = os.getuid(), os.geteuid(), os.getgid()
facts["status"] = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status") if ":" in l)}
facts["sudo"] = shutil.which("sudo")
facts["su"] = shutil.which("su")
if facts["su"]:
    p = subprocess.run([facts["su"], "-c", "id -u", "root"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=20)
    facts["su_result"] = (p.returncode, p.stdout.strip())
if facts["sudo"]:
    p = subprocess.run([facts["sudo"], "-n", "id", "-u"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=20)
    facts["sudo_result"] = (p.returncode, p.stdout.strip())
facts["home_entries"] = sorted(os.listdir("/home"))

api = os.environ["JUPYTERHUB_API_URL"].rstrip("/")
facts["api"] = api
facts["api_users_no_token"] = http_get(api + "/users")
facts["api_bob_no_token"] = http_get(api + "/users/bob")
server_token = os.environ.get("JUPYTERHUB_API_TOKEN")
facts["api_users_server_token"] = http_get(api + "/users", server_token)
facts["api_bob_server_token"] = http_get(api + "/users/bob", server_token)
facts["bob_server"] = attempt(lambda: connect(BOB_IP, BOB_PORT))
gateway = api.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
facts["docker_tcp"] = {port: attempt(lambda: connect(gateway, port, 2)) for port in (2375, 2376)}

def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None

cg = "/sys/fs/cgroup"
if os.path.exists(f"{cg}/cpu.max"):  # cgroup v2
    quota, period = read(f"{cg}/cpu.max").split()
    facts["cpu"] = (quota, period)
    facts["memory_max"] = read(f"{cg}/memory.max")
    facts["pids_max"] = read(f"{cg}/pids.max")
    cpu_file = f"{cg}/cpu.max"
else:  # cgroup v1
    cpu_dir = next(d for d in (f"{cg}/cpu", f"{cg}/cpu,cpuacct", f"{cg}/cpuacct,cpu") if os.path.exists(d))
    facts["cpu"] = (read(f"{cpu_dir}/cpu.cfs_quota_us"), read(f"{cpu_dir}/cpu.cfs_period_us"))
    facts["memory_max"] = read(f"{cg}/memory/memory.limit_in_bytes")
    facts["pids_max"] = read(f"{cg}/pids/pids.max")
    cpu_file = f"{cpu_dir}/cpu.cfs_quota_us"

def raise_cpu_limit():
    with open(cpu_file, "w") as f:
        f.write("-1" if cpu_file.endswith("_us") else "max 100000")
facts["raise_cpu"] = attempt(raise_cpu_limit)
st = os.statvfs("/dev/shm")
facts["shm_bytes"] = st.f_blocks * st.f_frsize
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def seen(real_parts, request):
    """What alice's kernel saw, with bob's workspace running beside hers."""
    hub = HubProcess(users=["alice", "bob"], quotas=QUOTAS)
    try:
        hub.start()
        alice, bob = hub.client("alice"), hub.client("bob")
        for client in (alice, bob):
            r = client.start_server(options={"gpus": 0})
            assert r.status_code in (201, 202), r.text
        alice.wait_ready()
        bob.wait_ready()
        (bob_container,) = hub.containers(**{LABEL_USER: "bob"})
        bob_container.reload()
        bob_ip = bob_container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        # The port his Jupyter server listens on (the hub's proxy reaches it there).
        (bob_port,) = [int(p.split("/")[0]) for p in bob_container.attrs["Config"]["ExposedPorts"]]
        code = f"BOB_IP, BOB_PORT = {bob_ip!r}, {bob_port}\n" + PROBE
        facts = json.loads(alice.run_code(code, timeout=120).strip().splitlines()[-1])
        facts["bob_ip"] = bob_ip
        facts["hub_id"] = hub.hub_id
        facts["alice_container"] = hub.containers(**{LABEL_USER: "alice"})[0].id
        # The same address and port answer from the host, so a refusal inside is the network's doing.
        with socket.create_connection((bob_ip, bob_port), timeout=5):
            facts["bob_reachable_from_host"] = True
        yield facts
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({hub.hub_id}) ---\n{hub.log_tail(120)}")
        hub.cleanup()


class Mount(NamedTuple):
    point: str  # where it is in the workspace
    root: str  # what it shows of its filesystem (a host path, for a bind mount)
    fstype: str
    options: str  # per-mount options: ro or rw first


def mounts(mountinfo: str) -> list[Mount]:
    """The mounts of /proc/self/mountinfo (proc(5))."""
    result = []
    for line in mountinfo.splitlines():
        fields = line.split()
        sep = fields.index("-")
        result.append(Mount(fields[4], fields[3], fields[sep + 1], fields[5]))
    return result


# Filesystems that hold no host files: the kernel's views and the container's own tmpfs.
VIRTUAL = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"}
# The image: the container's root, an overlay of its layers (fuse-overlayfs on rootless engines).
IMAGE_ROOT = {"overlay", "fuse.fuse-overlayfs"}
# Files Docker itself bind-mounts from the container's own directory under /var/lib/docker/containers.
DOCKER_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}


def test_only_her_home_and_docker_s_own_files_come_from_the_host(seen):
    """Her root is the image, and every other mount backed by a real filesystem is her home
    volume, one of Docker's per-container files or Docker's read-only init binary. No host
    path, nobody else's home, no Docker state."""
    all_mounts = mounts(seen["mountinfo"])
    (root,) = [m for m in all_mounts if m.point == "/"]
    assert root.fstype in IMAGE_ROOT and root.root == "/", root
    from_host = {m.point: m for m in all_mounts if m.fstype not in VIRTUAL and m.point != "/"}
    assert set(from_host) <= {"/home/jovyan", "/usr/sbin/docker-init", *DOCKER_FILES}, from_host
    assert from_host["/home/jovyan"].root.endswith(f"/volumes/{seen['hub_id']}-home-alice/_data"), from_host
    for point in DOCKER_FILES & set(from_host):
        assert from_host[point].root.endswith(f"/containers/{seen['alice_container']}{point[4:]}"), from_host
    if "/usr/sbin/docker-init" in from_host:
        assert from_host["/usr/sbin/docker-init"].options.startswith("ro"), from_host
    assert "home-bob" not in seen["mountinfo"] and "docker.sock" not in seen["mountinfo"]
    (shm,) = [m for m in all_mounts if m.point == "/dev/shm"]
    assert shm.fstype == "tmpfs", shm  # its own memory, sized to the grant (checked below)


def test_there_is_no_docker_or_containerd_socket(seen):
    assert seen["sockets"] == []
    assert "docker.sock" not in seen["mountinfo"] and "containerd" not in seen["mountinfo"]


def test_the_docker_engine_is_not_reachable_over_tcp_from_a_workspace(seen):
    assert all(result.startswith("denied") for result in seen["docker_tcp"].values()), seen["docker_tcp"]


def test_another_user_s_home_is_not_there(seen):
    assert "bob" not in seen["home_entries"], seen["home_entries"]


def test_the_host_s_shadow_file_is_not_readable(seen):
    assert seen["shadow"].startswith("denied"), seen["shadow"]


def test_she_is_not_root_and_cannot_become_root(seen):
    # Her own uid (issue 16: one per hub user, from 20001), never root.
    assert seen["uid"] == seen["euid"] and seen["uid"] >= 1000
    assert seen["gid"] != 0
    assert seen["status"]["NoNewPrivs"] == "1"
    if seen["su"]:
        code, out = seen["su_result"]
        assert code != 0 and out != "0", seen["su_result"]
    if seen["sudo"]:
        code, out = seen["sudo_result"]
        assert code != 0 and out != "0", seen["sudo_result"]


def test_she_holds_no_capabilities(seen):
    status = seen["status"]
    caps = {key: int(status[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert caps == dict.fromkeys(caps, 0)


def test_bob_s_server_cannot_be_reached_from_her_workspace(seen):
    """Inter-container traffic is off on the workspace network: bob's Jupyter port is refused
    or times out, even at his container's own address."""
    assert seen["bob_reachable_from_host"]
    assert seen["bob_server"].startswith("denied"), seen["bob_server"]


def test_the_hub_api_answers_403_without_a_token(seen):
    assert seen["api_users_no_token"] == 403
    assert seen["api_bob_no_token"] == 403


def test_her_server_s_token_cannot_list_users_or_read_bob(seen):
    assert seen["api_users_server_token"] == 403
    assert seen["api_bob_server_token"] in (403, 404)


def test_the_cpu_limit_is_the_granted_one_cpu_and_cannot_be_raised(seen):
    quota, period = seen["cpu"]
    assert int(quota) == int(period) > 0, seen["cpu"]
    assert seen["raise_cpu"].startswith("denied"), seen["raise_cpu"]


def test_memory_processes_and_shm_are_limited_to_the_grant(seen):
    assert int(seen["memory_max"]) == MEMORY
    assert int(seen["pids_max"]) == PIDS
    assert seen["shm_bytes"] == SHM


def test_the_probe_read_a_real_mountinfo(seen):
    # Guards the assertions above against an empty or unparsable mountinfo passing vacuously.
    assert len(mounts(seen["mountinfo"])) > 5
