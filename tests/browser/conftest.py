"""Real-browser fixtures: the dashboard under `streamlit run`, driven by Playwright in Debian's Chromium.

Each server gets a fresh temporary artifacts folder and a free port, and is stopped (with its whole
process group) afterwards. Under CI=true a missing browser or Playwright is a failure, never a skip.
Screenshots go to test-output/screenshots/<scenario>/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.server import CHROMIUM, CHROMIUM_FLAGS, ROOT, AppServer, start_app, stop_app

SCREENSHOTS = ROOT / "test-output" / "screenshots"


def _missing(what: str) -> None:
    message = f"browser tests need {what}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: .ci/run must install it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright (pip install -r requirements-test.txt)")
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """One dashboard server per test module, on a fresh, empty artifacts folder."""
    folder = tmp_path_factory.mktemp("browser")
    server = start_app(folder / "artifacts", folder / "streamlit.log")
    yield server
    stop_app(server.process)
    assert server.process.poll() is not None


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def copy_artifacts(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
