"""The widget of notebook 02 in a real browser: JupyterLab on localhost, driven by Playwright in Debian's
headless Chromium (no browser download). Slow (the whole notebook runs): about 5 minutes."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = os.path.join(ROOT, "media", "widget_in_jupyterlab.png")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the project (so the browser run never rewrites committed files)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(os.path.join(ROOT, "t2i_utils.py"), root)
    os.makedirs(root / "notebooks")
    os.makedirs(root / "media")
    shutil.copy(os.path.join(ROOT, "notebooks", "02_train_generator.ipynb"), root / "notebooks")
    os.symlink(os.path.join(ROOT, "models"), root / "models")
    port, token = _free_port(), "t2i-test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start")
    yield f"{url}/lab/tree/notebooks/02_train_generator.ipynb?token={token}"
    server.terminate()
    server.wait(timeout=30)


def test_widget_in_jupyterlab(lab, tmp_path):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(lab)
        try:
            page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # the kernel is up
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            # The widget cell: wait for its chars text box, then for the kernel to finish every cell.
            chars = page.locator(".jupyter-widgets input[type='text']").first
            chars.wait_for(timeout=420_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=300_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise AssertionError(f"the notebook did not run to the widget; screenshot: {tmp_path / 'failure.png'}")
        assert page.get_by_text("Error displaying widget").count() == 0
        widget = chars.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
        widget.scroll_into_view_if_needed()
        images = widget.locator("img")
        before = images.first.get_attribute("src")
        chars.fill("Zq")
        expect(images.first).not_to_have_attribute("src", before, timeout=30_000)
        good = [images.nth(i).get_attribute("src") for i in range(images.count())]
        page.screenshot(path=SCREENSHOT, clip=widget.bounding_box())
        chars.fill("a b")
        expect(widget).to_contain_text("not allowed", timeout=30_000)
        assert [images.nth(i).get_attribute("src") for i in range(images.count())] == good
        browser.close()
