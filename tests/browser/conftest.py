"""Real headless Chromium (Debian's, driven by chromedriver through Selenium) against a real chain on
loopback: its own Orthanc, the app on it (``tools/ohif_chain.py``) and its own phantoms, on free ports.

On a machine without Orthanc or Chromium the browser tests skip and say why; with
``SLPT_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead, so CI can't pass by skipping them.
On failure the page is saved as ``logs/browser/<test>.png`` (with the browser console beside it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tools.orthanc import missing as orthanc_missing

ROOT = Path(__file__).resolve().parents[2]
FAILURES = ROOT / "logs" / "browser"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1000", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
)


def browser_missing() -> str | None:
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if not shutil.which(tool):
            return f"{tool} not found: apt-get install --no-install-recommends {package} (or: make system-deps)"
    return orthanc_missing()


@pytest.fixture(scope="session")
def browser_available():
    reason = browser_missing()
    if reason:
        if os.environ.get("SLPT_REQUIRE_BROWSER"):
            pytest.fail(f"SLPT_REQUIRE_BROWSER is set but the browser test can't run: {reason}")
        pytest.skip(reason)


@pytest.fixture
def driver(browser_available, request, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = tmp_path / "chromium-home"  # Chromium writes under $HOME; keep it out of the user's
    home.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})  # console, network
    # get() returns at once and the test waits for what it needs: on a busy machine OHIF's first load can
    # outlast Selenium's 120 s HTTP read timeout.
    options.page_load_strategy = "none"
    service = Service(shutil.which("chromedriver"), env={**os.environ, "HOME": str(home)})
    drv = webdriver.Chrome(service=service, options=options)
    yield drv
    report = getattr(request.node, "report_call", None)
    try:
        if report is not None and report.failed:
            FAILURES.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(FAILURES / f"{request.node.name}.png"))
            console = "\n".join(f"{e['level']} {e['message']}" for e in drv.get_log("browser"))
            (FAILURES / f"{request.node.name}.console.txt").write_text(console)
    finally:
        drv.quit()  # chromedriver stops Chromium and exits; Service.stop() ends chromedriver by its PID


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.report_call = report
