"""Walking skeleton, end to end: log in, spawn a real workspace container with our spawner,
run code in a real kernel through the real proxy, keep the home across restarts."""

from __future__ import annotations

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.session_store import SessionStore
from labgpu.labels import LABEL_SERVER, LABEL_USER

pytestmark = pytest.mark.e2e


def test_login_spawn_run_persist_and_stop(hub):
    alice = hub.client("alice")

    # Start through the REST API (as the hub's own pages do) and wait until ready.
    r = alice.start_server()
    assert r.status_code in (201, 202), r.text
    alice.wait_ready()

    # One container, ours, labelled with its owner, hardened.
    (container,) = hub.containers(**{LABEL_USER: "alice"})
    attrs = container.attrs
    assert container.status == "running"
    assert attrs["Config"]["Labels"][LABEL_SERVER] == ""
    assert attrs["Config"]["User"] == "20001:100"  # alice's own uid (the first handed out), group users
    host = attrs["HostConfig"]
    assert host["ShmSize"] == 2 * 1024**3
    assert host["Privileged"] is False
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["CapDrop"] == ["ALL"]
    assert not any("docker.sock" in b for b in host.get("Binds") or [])
    assert f"{hub.hub_id}-home-alice:/home/jovyan:rw" in host["Binds"]

    # The user's Jupyter server answers through the proxy.
    status = alice.server_api("GET", "api/status")
    assert status.status_code == 200, status.text

    # A cell in a real kernel: torch is there, we are not root, /dev/shm is 2 GiB.
    out = alice.run_code(
        "import os, torch, shutil\nprint(torch.__version__, os.getuid(), shutil.disk_usage('/dev/shm').total)"
    )
    version, uid, shm = out.split()
    assert version.startswith("2.")
    assert uid == "20001"
    assert int(shm) == 2 * 1024**3

    # A file written in the home survives a stop and a start (a new container).
    put = alice.server_api("PUT", "api/contents/notes.txt", json={"type": "file", "format": "text", "content": "kept"})
    assert put.status_code in (200, 201), put.text
    first_id = container.id
    alice.stop_server()
    assert hub.containers(**{LABEL_USER: "alice"}) == [], "container left behind after stop"

    alice.start_server()
    alice.wait_ready()
    (again,) = hub.containers(**{LABEL_USER: "alice"})
    assert again.id != first_id
    got = alice.server_api("GET", "api/contents/notes.txt")
    assert got.status_code == 200 and got.json()["content"] == "kept"
    alice.stop_server()

    # Both runs are recorded for reproducibility: the image's digest and its CUDA/torch versions.
    ledger = Ledger(hub.state_dir / "ledger.sqlite")
    store = SessionStore(ledger)
    runs = store.sessions(user="alice")
    store.close()
    ledger.close()
    labels = hub.docker.images.get(runs[0].image).attrs
    assert [r.container_id for r in runs] == [first_id, again.id]
    assert all(r.ended_at is not None and r.end_reason == "stopped" for r in runs)
    assert runs[0].image_digest == labels["Id"]
    assert runs[0].cuda_version == labels["Config"]["Labels"]["org.labgpu.version.cuda"]
    assert runs[0].torch_version.startswith("2.")


def test_two_users_two_containers_separate_homes(hub):
    alice, bob = hub.client("alice"), hub.client("bob")
    for user in (alice, bob):
        assert user.start_server().status_code in (201, 202)
    alice.wait_ready()
    bob.wait_ready()
    (a,) = hub.containers(**{LABEL_USER: "alice"})
    (b,) = hub.containers(**{LABEL_USER: "bob"})
    assert a.id != b.id

    alice.run_code("open('/home/jovyan/secret.txt', 'w').write('alice only')")
    seen = bob.run_code(
        "import os; print(sorted(os.listdir('/home/jovyan')), os.path.exists('/home/jovyan/secret.txt'))"
    )
    assert "secret.txt" not in seen and seen.strip().endswith("False")
    mounts = {m["Name"] for m in b.attrs["Mounts"] if m["Type"] == "volume"}
    assert mounts == {f"{hub.hub_id}-home-bob"}

    # Bob's credentials do not open Alice's server.
    intrusion = bob.session.get(
        f"{hub.url}/user/alice/api/status", headers={"Authorization": f"token {bob.token}"}, timeout=30
    )
    assert intrusion.status_code == 403
    alice.stop_server()
    bob.stop_server()


def test_wrong_password_is_refused(hub):
    from tests.harness import HubClient, HubFailed

    with pytest.raises(HubFailed, match="login as alice failed"):
        HubClient(hub, "alice").login(password="not-the-password")
