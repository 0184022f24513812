"""A researcher in a real browser: log in, start the server, land in JupyterLab."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser


def test_login_start_server_lands_in_jupyterlab(hub, page, output_dir):
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", hub.password)
    page.click("input[type=submit], button[type=submit]")
    # The spawn page offers what alice's quota allows (the test policy: no GPUs, one image).
    page.wait_for_url(re.compile(r".*/hub/spawn.*"), timeout=30_000)
    form = page.locator("#spawn_form")
    assert form.count() == 1
    page.screenshot(path=str(output_dir / "spawn-form.png"))
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_url(re.compile(r".*/user/alice/lab.*"), timeout=180_000)
    page.wait_for_selector(".jp-Launcher", timeout=120_000)
    assert "JupyterLab" in page.title()
    page.screenshot(path=str(output_dir / "jupyterlab-after-login.png"))
    # The launcher offers a Python kernel and a terminal.
    assert page.locator(".jp-LauncherCard[title*='Python 3']").count() >= 1
    assert page.locator(".jp-LauncherCard[title*='Terminal'], .jp-LauncherCard[data-category='Other']").count() >= 1
    hub.client("alice").stop_server()
