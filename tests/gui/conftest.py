"""GUI fixtures: the app served on a free local port, and headless Chromium driven by playwright."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "gui"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gui_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gui")
    return {"root": root, "browse": root, "demo": root / "demo"}


@pytest.fixture(scope="module")
def gui_url(gui_dirs):
    """The whole app, served by this test process (the training worker still spawns its own)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from lorasmith.gui.app import build_app, launch

    app = build_app(browse_root=gui_dirs["browse"], demo_root=gui_dirs["demo"])
    port = _free_port()
    launch(app, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, gui_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(gui_url)
    page.get_by_role("tab", name="Training").wait_for()
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
