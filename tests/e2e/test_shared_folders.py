"""A lab group's shared folder: members read and write it, others do not see it."""

from __future__ import annotations

import pytest

from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess

pytestmark = pytest.mark.e2e


def test_group_members_share_a_folder_and_others_do_not_see_it(real_parts):
    hub = HubProcess(users=["alice", "bob", "carol"], quotas=None)
    volume = f"{hub.hub_id}-group-vision"
    hub.quotas = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}"}}
defaults: {{memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision: {{members: [alice, bob], shared_volume: "{volume}"}}
"""
    hub.quotas_file.write_text(hub.quotas)
    try:
        hub.start()
        users = {name: hub.client(name) for name in ("alice", "bob", "carol")}
        for client in users.values():
            assert client.start_server().status_code in (201, 202)
        for client in users.values():
            client.wait_ready()

        users["alice"].run_code("open('/home/jovyan/shared/vision/plan.txt', 'w').write('train on Friday')")
        seen = users["bob"].run_code("print(open('/home/jovyan/shared/vision/plan.txt').read())")
        assert seen.strip() == "train on Friday"
        # Bob can write there too (the folder belongs to the workspace user, setgid group).
        users["bob"].run_code("open('/home/jovyan/shared/vision/bob.txt', 'w').write('ok')")
        # Carol is not in the group: no such folder, and no such mount.
        assert users["carol"].run_code("import os; print(os.path.exists('/home/jovyan/shared'))").strip() == "False"
        (carols,) = hub.containers(**{LABEL_USER: "carol"})
        assert volume not in {m.get("Name") for m in carols.attrs["Mounts"]}
        # The volume outlives the servers; the helper that prepared it is gone.
        for client in users.values():
            client.stop_server()
        assert hub.docker.volumes.get(volume).attrs["Labels"]["org.labgpu.kind"] == "group-share"
        assert hub.containers() == []
    finally:
        hub.cleanup()
