"""Sharing and group pages in a real browser: alice shares her running server with her group from
the Sharing page, makes a share link, then revokes; bob sees it under "Shared with me"; the group
page shows the members, the pool, who holds which GPU and the shared folder. Screenshots go to
test-output/."""

from __future__ import annotations

import re

import pytest

from tests.harness import WORKSPACE_IMAGE, HubProcess

pytestmark = pytest.mark.browser

QUOTAS = f"""
images:
  pytorch: {{image: "{WORKSPACE_IMAGE}", display: "PyTorch workspace"}}
defaults: {{gpus: 0, gpus_total: 0, memory: 2G, cpus: 1, shm: 1G, images: [pytorch]}}
groups:
  vision-lab: {{members: [alice, bob], managers: [alice], gpus: 1, pool: 2, shared_volume: true}}
"""


@pytest.fixture(scope="module")
def hub(real_parts, request):
    h = HubProcess(users=["alice", "bob"], quotas=QUOTAS, extra_env={"LABGPU_DEMO_GPUS": "2xH100"})
    try:
        h.start()
        yield h
    finally:
        if request.session.testsfailed:
            print(f"\n--- hub log ({h.hub_id}) ---\n{h.log_tail(120)}")
        h.cleanup()


def log_in(page, hub, user: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.password)
    page.click("input[type=submit], button[type=submit]")
    # Logged in: the spawn page, the home page, or (a running server) that server.
    page.wait_for_url(re.compile(r".*/(hub/spawn|hub/home|user/).*"), timeout=30_000)


def test_alice_shares_from_the_sharing_page_and_bob_finds_it(hub, browser, output_dir):
    alice = hub.client("alice")
    assert alice.start_server(options={"gpus": 1}).status_code in (201, 202)
    alice.wait_ready()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, hub, "alice")
    page.goto(f"{hub.url}/services/labgpu/share")
    page.wait_for_selector(".labgpu-share-server")
    assert page.locator(".labgpu-not-shared").count() == 1
    page.select_option("#labgpu-share-with-1", "group:vision-lab")
    page.click(".labgpu-share")
    page.wait_for_selector(".labgpu-shared-with li[data-name='vision-lab']")
    page.click(".labgpu-make-link")
    link = page.wait_for_selector("#labgpu-link-url")
    assert "/hub/accept-share?code=" in (link.get_attribute("href") or "")
    page.screenshot(path=str(output_dir / "sharing-share-my-server.png"), full_page=True)

    bob_context = browser.new_context(viewport={"width": 1280, "height": 800})
    bob = bob_context.new_page()
    log_in(bob, hub, "bob")
    bob.goto(f"{hub.url}/services/labgpu/shared")
    row = bob.wait_for_selector("#labgpu-shared tr[data-owner='alice']")
    assert "group vision-lab" in row.inner_text() and "GPU" in row.inner_text()
    bob.screenshot(path=str(output_dir / "sharing-shared-with-me.png"), full_page=True)
    # Bob opens it: alice's JupyterLab, as bob.
    bob.click("a.labgpu-open")
    bob.wait_for_url(re.compile(r".*(/user/alice/|oauth2/authorize).*"), timeout=60_000)
    if "oauth2/authorize" in bob.url:  # JupyterHub asks bob to confirm opening someone else's server
        bob.screenshot(path=str(output_dir / "sharing-authorize.png"), full_page=True)
        bob.click("form input[type=submit], form button[type=submit]")
    bob.wait_for_url(re.compile(r".*/user/alice/.*"), timeout=60_000)
    bob.wait_for_selector(".jp-Launcher, #jp-main-dock-panel", timeout=120_000)

    # Alice revokes from the page; the row goes.
    page.click(".labgpu-revoke[data-name='vision-lab']")
    page.wait_for_selector(".labgpu-not-shared")
    bob.goto(f"{hub.url}/services/labgpu/shared")
    bob.wait_for_selector("#labgpu-nothing-shared")
    bob_context.close()

    # The group page: members, the pool, who holds which GPU, the shared folder.
    page.goto(f"{hub.url}/services/labgpu/groups/vision-lab")
    page.wait_for_selector("#labgpu-group-holders")
    assert page.locator("#labgpu-group-members li").count() == 2
    assert "1 of 2 GPUs held now" in page.inner_text("#labgpu-group-pool")
    assert "alice" in page.inner_text("#labgpu-group-holders") and "GPU" in page.inner_text("#labgpu-group-holders")
    assert "/shared/vision-lab" in page.inner_text("#labgpu-group-folder")
    page.screenshot(path=str(output_dir / "sharing-group-page.png"), full_page=True)
    context.close()
    alice.stop_server()
