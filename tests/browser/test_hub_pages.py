"""The hub's GPU pages in a real browser on a real hub (simulated GPUs, real Docker, proxy,
JupyterHub, Hub OAuth into the labgpu web service): a researcher, a group manager, an admin and a
plain user, with a held GPU, a queued spawn and a reclaim warning on the pages, screenshots in
test-output/.

One hub for the module with one H100: alice holds it (a real workspace), carol's spawn waits in
the queue. The reclaim warning is written into the ledger as the reclaimer writes it
(QueueStore.watch + record_warning): the real reclaimer would first need a minute of idleness.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from datetime import timedelta

import pytest

from labgpu.db.ledger import Ledger
from labgpu.db.queue_store import QueueStore
from labgpu.labels import LABEL_USER
from tests.harness import WORKSPACE_IMAGE, HubProcess, wait_until

pytestmark = pytest.mark.browser

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 1, gpus_total: 1, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision: {{members: [alice, bob], managers: [bob], pool: 1}}
fairshare: {{allow_queue: true}}
"""
SERVICE = "/services/labgpu/"


@pytest.fixture(scope="module")
def lab_hub(real_parts, request):
    """alice holds the one GPU (a real workspace), carol waits in the queue, alice got a warning."""
    hub = HubProcess(
        users=["alice", "bob", "carol", "root"],
        quotas=QUOTAS,
        extra_env={
            "LABGPU_DEMO_GPUS": "1xH100",
            "LABGPU_ADMIN_USERS": "root",
            "LABGPU_RECLAIM": "off",
            "LABGPU_QUEUE_POLL_INTERVAL": "2s",
            "LABGPU_QUEUE_TIMEOUT": "300",
        },
    )
    try:
        hub.start()
        alice = hub.client("alice").login()
        assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
        alice.wait_ready()
        carol = hub.client("carol").login()
        assert carol.start_server(options={"gpus": 1}).status_code == 202
        ledger_path = hub.state_dir / "ledger.sqlite"
        with Ledger(ledger_path, migrate=False) as ledger:
            store = QueueStore(ledger)
            wait_until(lambda: store.waiting_for("carol"), 60, "carol's spawn to wait in the GPU queue")
            held = ledger.allocation_for("alice", "")
            assert held is not None
            notice = store.watch("alice", "", held.since, 1)
            store.record_warning(
                notice.id,
                reason="idle",
                reclaim_at=store.now() + timedelta(minutes=15),
                message="Your GPUs have been idle for 30 min; your server will be stopped unless they get busy.",
            )
            store.close()
        hub.ledger_path = ledger_path
        yield hub
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({hub.hub_id}) ---\n{hub.log_tail(120)}")
        hub.cleanup()


def login(browser, hub, user):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Fhome")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(re.compile(r".*/hub/home"), timeout=30_000)
    return context, page


def test_researcher_sees_the_board_queue_warning_and_usage(lab_hub, browser, output_dir):
    context, page = login(browser, lab_hub, "alice")
    try:
        # The hub's own nav bar links the pages (hub_templates/page.html).
        page.goto(f"{lab_hub.url}/hub/home")
        page.click("nav >> text=GPUs")
        page.wait_for_url(re.compile(r".*/services/labgpu/gpus"), timeout=30_000)
        row = page.locator("#labgpu-gpus tbody tr").first
        assert "H100" in row.inner_text() and "you" in row.locator(".holder").inner_text()
        queue = page.locator("#labgpu-queue tbody tr")
        assert queue.count() == 1 and "carol" in queue.first.inner_text() and "1 GPU" in queue.first.inner_text()
        assert "Your server" in page.locator("#labgpu-warnings").inner_text()
        assert page.locator("#labgpu-gpus svg.labgpu-spark").count() == 1
        page.screenshot(path=str(output_dir / "pages-gpus-researcher.png"), full_page=True)

        page.goto(f"{lab_hub.url}{SERVICE}usage")
        assert page.locator("h1").inner_text() == "My usage"
        assert page.locator(".labgpu-chart svg[role=img] desc").count() == 1
        notices = page.locator("#labgpu-notices").inner_text()
        assert "idle for 30 min" in notices
        sessions = page.locator("#labgpu-sessions").inner_text()
        assert WORKSPACE_IMAGE in sessions and "running" in sessions
        page.screenshot(path=str(output_dir / "pages-usage-researcher.png"), full_page=True)

        # The figures are labgpu usage's for the same period (one code path).
        mine = page.request.get(f"{lab_hub.url}{SERVICE}api/usage?period=7d").json()["totals"]
        cli = subprocess.run(
            [sys.executable, "-m", "labgpu.cli", "usage", "--since", "7d", "--csv", "--db", str(lab_hub.ledger_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = next(r for r in csv.DictReader(io.StringIO(cli.stdout)) if r["user"] == "alice")
        assert mine["gpu_hours_held"] == pytest.approx(float(row["gpu_h_held"]), abs=0.06)
        assert mine["queued"] == int(row["queued"])

        # The home page: beside the server, its GPU; below, the limits.
        page.goto(f"{lab_hub.url}/hub/home")
        page.wait_for_selector(".labgpu-home-server", timeout=30_000)
        assert "1 GPU (0)" in page.locator("#labgpu-home-servers").inner_text()
        assert "1 GPU per server" in page.locator("#labgpu-home-limits").inner_text()
        page.screenshot(path=str(output_dir / "pages-home-researcher.png"), full_page=True)
    finally:
        context.close()


def test_the_workspace_has_the_gpu_dashboards_and_resource_usage(lab_hub):
    """jupyterlab-nvdashboard and jupyter-resource-usage are in the image, enabled (issue 14)."""
    (container,) = lab_hub.containers(**{LABEL_USER: "alice"})
    result = container.exec_run(["jupyter", "labextension", "list"])
    listed = result.output.decode()
    assert "jupyterlab-nvdashboard" in listed and "@jupyter-server/resource-usage" in listed, listed


def test_plain_user_gets_403_and_sees_the_queue_place_and_estimates(lab_hub, browser, output_dir):
    context, page = login(browser, lab_hub, "carol")
    try:
        r = page.request.get(f"{lab_hub.url}{SERVICE}api/usage?user=alice")
        assert r.status == 403 and "only your own usage" in r.json()["message"]
        assert page.request.get(f"{lab_hub.url}{SERVICE}api/lab").status == 403
        response = page.goto(f"{lab_hub.url}{SERVICE}lab")
        assert response.status == 403
        assert "admins" in page.locator("#labgpu-error").inner_text()
        page.screenshot(path=str(output_dir / "pages-lab-403.png"))
        # Nav bar: no lab link for carol.
        assert page.locator("nav >> text=Lab usage").count() == 0

        page.goto(f"{lab_hub.url}/hub/home")
        page.wait_for_selector(".labgpu-home-server", timeout=30_000)
        assert "#1 in the GPU queue" in page.locator("#labgpu-home-servers").inner_text()
        page.screenshot(path=str(output_dir / "pages-home-queued.png"), full_page=True)

        # The board updates itself: carol leaves the queue, the board's queue empties without a reload.
        page.goto(f"{lab_hub.url}{SERVICE}gpus")
        assert page.locator("#labgpu-queue tbody tr.empty").count() == 0
        lab_hub.client("carol").login().stop_server(timeout=60)
        page.wait_for_selector("#labgpu-queue tbody tr.empty", timeout=30_000)
    finally:
        context.close()


def test_spawn_page_shows_free_gpus_and_the_wait_per_choice(lab_hub, browser, output_dir):
    context, page = login(browser, lab_hub, "bob")
    try:
        page.goto(f"{lab_hub.url}/hub/spawn")
        page.wait_for_selector("#labgpu-free-now", timeout=30_000)
        assert page.locator("#labgpu-free-now").inner_text().startswith("0 GPUs free now")
        assert "#1 in the queue" in page.locator("#labgpu-spawn-estimates li").first.inner_text()
        assert "in queue" in page.locator('select[name="gpus"] option[value="1"]').inner_text()
        page.screenshot(path=str(output_dir / "pages-spawn-estimates.png"), full_page=True)
    finally:
        context.close()


def test_group_manager_sees_their_groups_lab_usage(lab_hub, browser, output_dir):
    context, page = login(browser, lab_hub, "bob")
    try:
        page.goto(f"{lab_hub.url}{SERVICE}lab")
        assert page.locator("h1").inner_text() == "Lab usage: group vision"
        users = page.locator("#labgpu-by-user").inner_text()
        assert "alice" in users and "carol" not in users
        assert "vision" in page.locator("#labgpu-pools").inner_text()
        assert "alice" in page.locator("#labgpu-idle").inner_text()
        page.screenshot(path=str(output_dir / "pages-lab-group-manager.png"), full_page=True)
        assert page.request.get(f"{lab_hub.url}{SERVICE}api/lab?group=other").status == 403
    finally:
        context.close()


def test_admin_sees_the_lab_and_the_profile_column(lab_hub, browser, output_dir):
    context, page = login(browser, lab_hub, "root")
    try:
        page.goto(f"{lab_hub.url}{SERVICE}lab")
        assert page.locator("h1").inner_text() == "Lab usage"
        assert "alice" in page.locator("#labgpu-by-user").inner_text()
        by_group = page.request.get(f"{lab_hub.url}{SERVICE}lab.csv?by=group")
        assert by_group.headers["content-type"].startswith("text/csv") and "vision" in by_group.text()
        page.screenshot(path=str(output_dir / "pages-lab-admin.png"), full_page=True)
        # JupyterHub 6's admin page: alice's server's Profile is its GPUs, memory and image.
        page.goto(f"{lab_hub.url}/hub/admin")
        profile = page.locator("[data-testid=user-row-profile-used]", has_text="1 GPU")
        profile.first.wait_for(timeout=30_000)
        assert "2G" in profile.first.inner_text() and "pytorch" in profile.first.inner_text()
        page.screenshot(path=str(output_dir / "pages-admin-profile.png"), full_page=True)
    finally:
        context.close()
