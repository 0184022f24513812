"""Lab-wide sharing on the real hub, proxy and Docker: alice shares her running server with her
group, bob (a member) runs code in it with his own credentials, carol (not a member) is turned
away and cannot share with a group she is not in; a revoke ends bob's access; a share link works
for dave until it expires. And which group pays: alice (in two groups with pools) charges her
server to one of them, and the ledger and usage report show that group.

One hub and one workspace for the whole module (tests run in file order and build on each other).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from labgpu.db.ledger import Ledger
from labgpu.db.workspace_ids import WorkspaceIdStore
from tests.harness import REPO, WORKSPACE_IMAGE, HubProcess, execute, wait_until

pytestmark = pytest.mark.e2e

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision-lab: {{members: [alice, bob], managers: [alice], gpus: 1, gpus_total: 1, pool: 1, shared_volume: true}}
  nlp-lab: {{members: [alice], gpus: 1, gpus_total: 1, pool: 2}}
  robotics: {{members: [carol]}}
"""
LINK_SECONDS = 60  # JupyterHub's shortest share code
USAGE = [sys.executable, "-m", "labgpu.cli", "usage"]


@pytest.fixture(scope="module")
def hub(real_parts, request):
    h = HubProcess(
        users=["alice", "bob", "carol", "dave", "eve"], quotas=QUOTAS, extra_env={"LABGPU_DEMO_GPUS": "2xH100"}
    )
    try:
        h.start()
        yield h
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({h.hub_id}) ---\n{h.log_tail(120)}")
        h.cleanup()


@pytest.fixture(scope="module")
def people(hub):
    return {name: hub.client(name) for name in ["alice", "bob", "carol", "dave", "eve"]}


def service(hub, person, method: str, path: str, **kwargs) -> requests.Response:
    """The labgpu web service's JSON API as ``person`` (their own token)."""
    headers = {"Authorization": f"token {person.token}"}
    return requests.request(method, f"{hub.url}/services/labgpu/api/{path}", headers=headers, timeout=60, **kwargs)


def alices_server(hub, person, path: str = "api/status") -> requests.Response:
    """Alice's Jupyter server, reached with ``person``'s own token."""
    return requests.get(f"{hub.url}/user/alice/{path}", headers={"Authorization": f"token {person.token}"}, timeout=30)


@pytest.fixture(scope="module")
def alice_running(hub, people):
    """Alice's server, charged to nlp-lab, and a share link made while it starts (it expires
    during the module: the last test checks that)."""
    alice = people["alice"]
    assert alice.start_server(options={"gpus": 1, "group": "nlp-lab"}).status_code in (201, 202)

    def made() -> dict | None:
        r = service(hub, alice, "POST", "share-links", json={"server": "", "expires_in": LINK_SECONDS})
        return r.json() if r.status_code == 201 else None

    link = wait_until(made, 30, "a share link for alice's starting server")
    made_at = time.monotonic()
    alice.wait_ready()
    return {"link": link, "made_at": made_at}


def test_a_user_in_two_groups_charges_her_server_to_the_one_she_chose(hub, alice_running):
    with Ledger(hub.state_dir / "ledger.sqlite", migrate=False) as ledger:
        allocation = ledger.allocation_for("alice")
        assert allocation is not None and len(allocation.gpu_uuids) == 1
        assert allocation.group == "nlp-lab"
    ledger_file = str(hub.state_dir / "ledger.sqlite")
    usage = subprocess.run(
        [*USAGE, "--by", "group", "--csv", "--db", ledger_file, "--quotas", str(hub.quotas_file)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    groups = [line.split(",")[0] for line in usage.splitlines()[1:]]
    assert groups == ["nlp-lab"], usage  # not vision-lab, alice's other group with a pool


def test_a_group_that_is_not_hers_is_refused_naming_her_groups(people):
    bob = people["bob"]
    r = bob.start_server(options={"gpus": 1, "group": "nlp-lab"})
    assert r.status_code == 400
    assert "You are not in group 'nlp-lab', so your server cannot be charged to it. Your groups: vision-lab." in r.text


def test_alice_shares_with_her_group_and_bob_runs_a_cell_in_her_server(hub, people, alice_running):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    assert alices_server(hub, bob).status_code == 403  # not shared yet
    r = service(hub, alice, "POST", "shares", json={"server": "", "group": "vision-lab"})
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == ["access:servers!server=alice/"]  # access, nothing more
    state = service(hub, alice, "GET", "shares").json()
    assert state["servers"][0]["shared_with"] == [{"kind": "group", "name": "vision-lab"}]

    # Bob's earlier visit is remembered by the workspace for at most 10 s (HubOAuth.cache_max_age).
    wait_until(lambda: alices_server(hub, bob).status_code == 200, 40, "bob to get into alice's server")
    kernel = requests.post(
        f"{hub.url}/user/alice/api/kernels",
        headers={"Authorization": f"token {bob.token}"},
        json={"name": "python3"},
        timeout=60,
    )
    assert kernel.status_code == 201, kernel.text
    out = execute(
        hub.url, "alice", "", kernel.json()["id"], bob.token, "import os; print(os.environ['JUPYTERHUB_USER'])", 60
    )
    assert out.strip() == "alice"  # bob's code ran in alice's workspace

    # Bob sees it under "Shared with me", with alice's GPU.
    shared = service(hub, bob, "GET", "shared-with-me").json()["shared"]
    assert [(s["owner"], s["server"], s["via_groups"], len(s["gpus"])) for s in shared] == [
        ("alice", "", ["vision-lab"], 1)
    ]
    # Carol is in none of alice's groups: no access.
    assert alices_server(hub, carol).status_code == 403


def test_carol_cannot_share_with_a_group_she_is_not_in_nor_with_anyone_through_the_hub(hub, people):
    carol = people["carol"]
    assert carol.start_server().status_code in (201, 202)  # a CPU server of her own to try to share
    carol.wait_ready()
    r = service(hub, carol, "POST", "shares", json={"server": "", "group": "vision-lab"})
    assert r.status_code == 403
    assert "you are not in 'vision-lab'" in r.json()["message"]
    r = service(hub, carol, "POST", "shares", json={"server": "", "user": "dave"})
    assert r.status_code == 403 and "'dave' is in none of robotics" in r.json()["message"]
    # Nor around the service: users hold no sharing scope in the hub itself.
    r = carol.api("POST", "/shares/carol/", json={"group": "vision-lab"})
    assert r.status_code == 403
    # And nobody shares another's server: the owner is always the one asking.
    r = service(hub, carol, "POST", "shares", json={"server": "", "group": "robotics", "owner": "alice"})
    assert r.status_code == 201
    assert alices_server(hub, people["dave"]).status_code == 403
    carol.stop_server()


def test_alice_revokes_and_bob_is_turned_away(hub, people):
    alice, bob = people["alice"], people["bob"]
    r = service(hub, alice, "DELETE", "shares", json={"server": "", "group": "vision-lab"})
    assert r.status_code == 200, r.text
    assert service(hub, alice, "GET", "shares").json()["servers"][0]["shared_with"] == []
    # The workspace asks the hub again after at most 10 s (HubOAuth.cache_max_age).
    wait_until(lambda: alices_server(hub, bob).status_code == 403, 40, "bob to lose access to alice's server")
    assert service(hub, bob, "GET", "shared-with-me").json()["shared"] == []


def test_files_in_the_group_folder_show_who_wrote_them_and_only_their_owner_removes_them(hub, people):
    alice, bob = people["alice"], people["bob"]
    assert bob.start_server(options={"gpus": 1}).status_code in (201, 202)  # charged to vision-lab
    bob.wait_ready()
    with WorkspaceIdStore(hub.state_dir / "ledger.sqlite", migrate=False) as ids:
        uid = ids.all()["user"]
        gid = ids.all()["group"]["vision-lab"]
    assert len({uid["alice"], uid["bob"], uid["carol"]}) == 3
    alice.run_code("open('/shared/vision-lab/alice.txt', 'w').write('from alice')")
    bob.run_code("open('/shared/vision-lab/bob.txt', 'w').write('from bob')")
    out = alice.run_code(
        "import os, stat\n"
        "d = os.stat('/shared/vision-lab')\n"
        "home = os.stat(os.path.expanduser('~')).st_uid\n"
        "print(oct(stat.S_IMODE(d.st_mode)), d.st_uid, d.st_gid, os.getuid(), home)\n"
        "for f in ('alice.txt', 'bob.txt'): s = os.stat('/shared/vision-lab/' + f); print(f, s.st_uid, s.st_gid)"
    )
    folder, *files = out.strip().splitlines()
    # Root's, the group's gid, group-writable, setgid and sticky; alice runs as her uid, in her home.
    assert folder.split() == ["0o3775", "0", str(gid), str(uid["alice"]), str(uid["alice"])]
    assert files == [f"alice.txt {uid['alice']} {gid}", f"bob.txt {uid['bob']} {gid}"]
    # Bob may write in the folder but not remove alice's file.
    out = bob.run_code(
        "import os\ntry:\n    os.remove('/shared/vision-lab/alice.txt'); print('removed')\n"
        "except PermissionError: print('refused')"
    )
    assert out.strip() == "refused"


def test_the_group_page_and_its_manager_stopping_a_members_idle_server(hub, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    page = service(hub, bob, "GET", "groups/vision-lab")
    assert page.status_code == 200, page.text
    report = page.json()
    assert report["members"] == ["alice", "bob"] and report["managers"] == ["alice"]
    assert report["pool"] == {"size": 1, "held": 1}
    assert [(h["label"], len(h["gpus"])) for h in report["holders"]] == [("bob", 1)]
    assert report["shared_folder"]["path"] == "/shared/vision-lab"
    assert report["may_stop"] is False
    assert service(hub, carol, "GET", "groups/vision-lab").status_code == 403
    # Only a manager stops a member's server, and only once telemetry shows its GPUs idle.
    refused = service(hub, bob, "POST", "groups/vision-lab/stop", json={"user": "bob", "server": ""})
    assert refused.status_code == 403
    wait_until(
        lambda: (
            service(hub, alice, "POST", "groups/vision-lab/stop", json={"user": "bob", "server": ""}).status_code == 202
        ),
        60,
        "alice (vision-lab's manager) to stop bob's idle GPU server",
        interval=2,
    )
    wait_until(lambda: bob.server_model() is None, 60, "bob's server to stop")


def test_a_share_link_works_for_dave_until_it_expires(hub, people, alice_running):
    dave, eve = people["dave"], people["eve"]
    link, made_at = alice_running["link"], alice_running["made_at"]
    if time.monotonic() - made_at > LINK_SECONDS - 20:
        # The module's link (made early, to expire during the module) is about to expire: on a
        # loaded machine the tests before this one took most of its minute. Make a fresh one.
        r = service(hub, people["alice"], "POST", "share-links", json={"server": "", "expires_in": LINK_SECONDS})
        assert r.status_code == 201, r.text
        link, made_at = r.json(), time.monotonic()
    accept_url = link["accept_url"]
    assert accept_url.startswith(hub.url + "/hub/accept-share?code=")
    code = accept_url.split("code=", 1)[1]
    assert alices_server(hub, dave).status_code == 403
    page = dave.session.get(accept_url, timeout=30)
    assert page.status_code == 200 and "alice" in page.text
    r = dave.session.post(
        f"{hub.url}/hub/accept-share", data={"code": code, "_xsrf": dave.xsrf}, allow_redirects=False, timeout=30
    )
    assert r.status_code == 302, r.text
    wait_until(lambda: alices_server(hub, dave).status_code == 200, 40, "dave to get into alice's server")
    # Once the link has expired, nobody else gets in with it.
    left = LINK_SECONDS + 2 - (time.monotonic() - made_at)
    wait_until(
        lambda: eve.session.get(accept_url, timeout=30).status_code == 404,
        max(left, 0) + 30,
        "the share link to expire",
        interval=2,
    )
    r = eve.session.post(
        f"{hub.url}/hub/accept-share", data={"code": code, "_xsrf": eve.xsrf}, allow_redirects=False, timeout=30
    )
    assert r.status_code == 400
    assert alices_server(hub, eve).status_code == 403
