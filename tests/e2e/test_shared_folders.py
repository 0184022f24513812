"""A lab group's shared folder: members read and write it, others do not see it; a quota file
names folders, never another volume; a folder left to root by a failed preparation is repaired."""

from __future__ import annotations

import pytest

from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess

pytestmark = pytest.mark.e2e


def test_group_members_share_a_folder_and_others_do_not_see_it(real_parts):
    hub = HubProcess(users=["alice", "bob", "carol"], quotas=None)
    volume = f"{hub.hub_id}-group-vision"  # automatic: named after the group, in this hub's namespace
    hub.quotas = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}"}}
defaults: {{memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision: {{members: [alice, bob], shared_volume: true}}
  # a quota file may name a folder, not another volume: this is not alice's home
  raid: {{members: [bob], shared_volume: "{hub.hub_id}-home-alice"}}
"""
    hub.quotas_file.write_text(hub.quotas)
    # A preparation that failed before (or a hub that died between creating and handing it over)
    # left the folder to root: the next spawn repairs it.
    hub.docker.volumes.create(volume)
    try:
        hub.start()
        users = {name: hub.client(name) for name in ("alice", "bob", "carol")}
        for client in users.values():
            assert client.start_server().status_code in (201, 202)
        for client in users.values():
            client.wait_ready()

        # Through the link in the home, as JupyterLab's file browser shows it.
        users["alice"].run_code("open('/home/jovyan/shared/vision/plan.txt', 'w').write('train on Friday')")
        seen = users["bob"].run_code("print(open('/shared/vision/plan.txt').read())")
        assert seen.strip() == "train on Friday"
        # Bob can write there too (the folder belongs to the workspace user, setgid group).
        users["bob"].run_code("open('/shared/vision/bob.txt', 'w').write('ok')")
        # The folders are mounted outside the home, which the user can change.
        (bobs,) = hub.containers(**{LABEL_USER: "bob"})
        mounts = {m.get("Name"): m["Destination"] for m in bobs.attrs["Mounts"] if m.get("Type") == "volume"}
        assert mounts[volume] == "/shared/vision"
        assert mounts[f"{hub.hub_id}-group-{hub.hub_id}-home-alice"] == "/shared/raid"
        assert f"{hub.hub_id}-home-alice" not in mounts
        # Alice's home stays hers: bob's "raid" folder is a folder of its own.
        users["alice"].run_code("open('/home/jovyan/diary.txt', 'w').write('private')")
        assert users["bob"].run_code("import os; print(sorted(os.listdir('/shared/raid')))").strip() == "[]"
        # Carol is not in a group: no such folder, and no such mount.
        assert users["carol"].run_code("import os; print(os.path.exists('/shared'))").strip() == "False"
        (carols,) = hub.containers(**{LABEL_USER: "carol"})
        assert volume not in {m.get("Name") for m in carols.attrs["Mounts"]}
        # The volume outlives the servers; the helper that prepared it is gone.
        for client in users.values():
            client.stop_server()
        assert hub.containers() == []
        assert hub.docker.volumes.get(f"{hub.hub_id}-group-{hub.hub_id}-home-alice").attrs["Labels"] == {
            "org.labgpu.managed": "true",
            "org.labgpu.kind": "group-share",
        }
    finally:
        hub.cleanup()
