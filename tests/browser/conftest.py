from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import chromium_path, require
from tests.e2e.conftest import hub, real_parts

__all__ = ["hub", "real_parts"]  # the same real hub fixtures as tests/e2e (re-exported, not unused)

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@pytest.fixture(scope="module")
def browser(real_parts):
    """Chromium for one test module (Playwright's sync API holds an event loop while open)."""
    path = chromium_path()
    require(path is not None, "chromium", "apt-get install chromium (scripts/setup.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright for Python", "pip install playwright (scripts/setup.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def output_dir():
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
