"""Disk quotas: the hub measures each home on a schedule, shows it on the spawn page, and
refuses a spawn whose home is over the quota file's `disk`, saying the size and the limit."""

from __future__ import annotations

import pytest

from labgpu.db.disk_store import VolumeSizeStore
from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.e2e

MiB = 1024**2

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch], disk: 50M}}
"""


def test_a_home_over_its_disk_quota_is_measured_shown_and_its_next_spawn_refused(real_parts):
    hub = HubProcess(users=["alice"], quotas=QUOTAS, extra_env={"LABGPU_DISK_INTERVAL": "2s"})
    home = f"{hub.hub_id}-home-alice"
    try:
        hub.start()
        sizes = VolumeSizeStore(hub.state_dir / "ledger.sqlite")

        def home_size():
            measured = sizes.sizes([home]).get(home)
            return measured.size if measured else None

        alice = hub.client("alice")
        assert alice.start_server().status_code in (201, 202)
        alice.wait_ready()
        alice.run_code("open('/home/jovyan/data.bin', 'wb').write(b'x' * (80 * 1024 * 1024))")
        alice.stop_server()

        size = wait_until(lambda: (home_size() or 0) >= 80 * MiB and home_size(), 120, "the home to measure >= 80M")
        shown = f"{size / MiB:.1f}".rstrip("0").rstrip(".") + "M"  # as format_size spells it
        # The spawn page says how full the home is, and of which quota.
        page = alice.session.get(f"{hub.url}/hub/spawn", timeout=30).text
        assert f"Disk: your home uses {shown} of your 50M quota" in page

        refused = alice.start_server()
        assert refused.status_code == 400
        assert refused.json()["message"] == (
            f"Your home uses {shown} of your 50M disk quota (set by defaults): delete files (from a server of "
            "yours that is still running, or ask the hub's admin), then start again."
        )
        assert hub.containers(**{LABEL_USER: "alice"}) == []
        # The admin is told, by the service's round and by the refusal.
        wait_until(lambda: "alice's home" in hub.log_tail(400), 30, "the disk service's warning")
        assert "Disk quota: refused a start of alice" in hub.log_tail(400)
        sizes.close()
    finally:
        hub.cleanup()
