"""What a user does in the browser: open a page, wait for the app to settle, look for errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

PAGES = {
    "home": "",
    "training": "training",
    "evaluation": "evaluation",
    "parameters": "parameters",
    "finetune": "finetune",
    "draw": "draw",
    "experiments": "experiments",
    "insight": "insight",
    "mydigits": "mydigits",
}


def settle(page: Page, timeout: float = 60.0) -> None:
    """Wait until the script run has finished (fragments may still poll afterwards): the app must read as idle,
    with no skeleton, three times in a row, 100 ms apart, so that the gap between a run and the rerun it asks
    for is not taken for the end."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        state = page.get_attribute('[data-testid="stApp"]', "data-test-script-state")
        loading = page.locator('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]').count()
        calm = calm + 1 if state == "notRunning" and not loading else 0
        if calm >= 3:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"the app was still running after {timeout} s")


def open_page(page: Page, base_url: str, name: str) -> None:
    """Open a page of the app: by its link in the sidebar when the tab shows the app already (as a user moves
    between pages, without loading the app again), else by its address."""
    url = f"{base_url}/{PAGES[name]}"
    link = page.locator(f'[data-testid="stSidebarNav"] a[href="{url}"]')
    if page.url.startswith(base_url) and link.count():
        wait_idle(page)  # a click while a script run ends can be lost with it
        link.first.click()
        try:
            # the page adds its settings to the address as query parameters (a link for every view)
            page.wait_for_url(lambda at: at.split("?")[0].rstrip("/") == url.rstrip("/"), timeout=10_000)
        except PlaywrightError:
            page.goto(url)
    else:
        page.goto(url)
    settle(page)


def assert_no_errors(page: Page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body, body[:2000]


def shot(page: Page, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_for_text(page: Page, pattern: str, timeout: float = 120.0) -> None:
    expect(page.get_by_text(re.compile(pattern)).first).to_be_visible(timeout=timeout * 1000)


def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """Draw one stroke with the mouse through `points` given as fractions of the canvas (0..1)."""
    canvas = page.locator("canvas.upper-canvas").first
    canvas.scroll_into_view_if_needed()
    expect(canvas).to_be_visible(timeout=30_000)
    box = canvas.bounding_box()
    assert box is not None

    def at(p: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"]

    page.mouse.move(*at(points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*at(p), steps=8)
    page.mouse.up()


def metric_value(page: Page, label: str, timeout: float = 60.0) -> str:
    """The value shown by the st.metric whose label contains `label`."""
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    expect(metric).to_be_visible(timeout=timeout * 1000)
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def draw_strokes(
    page: Page,
    canvas: Locator,
    strokes: list[list[tuple[float, float]]],
    size: float = 280,
    shown: Locator | None = None,
    timeout: float = 30.0,
) -> None:
    """Draw `strokes` (polylines in canvas pixels, 0..size, e.g. benchmarks.writers.strokes) with the mouse the
    way a person does: press, follow each polyline, release; one press per stroke.

    Each stroke starts once the app is idle (a stroke begun while the app redraws the canvas can lose its
    start). shown: an <img> where the app shows the drawing as it read it (the 28x28 preview); after each
    stroke, wait until it shows a new picture and the app is idle again, as a person glances at the result:
    the app has then taken that stroke, so a click that follows acts on the whole drawing.
    """
    expect(canvas).to_be_visible(timeout=timeout * 1000)
    for stroke in strokes:
        wait_idle(page, timeout)
        box = _box(page, canvas)  # again for each stroke: the page may have moved meanwhile
        sx, sy = box["width"] / size, box["height"] / size
        before = _src(shown) if shown is not None else None
        points = [(box["x"] + x * sx, box["y"] + y * sy) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)  # the polylines are dense already (a few pixels apart)
        page.mouse.up()
        if shown is not None:
            deadline = time.monotonic() + timeout
            while _src(shown) in (before, None):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the app did not show the drawing after a stroke within {timeout} s")
                page.wait_for_timeout(50)
    if shown is not None:
        wait_idle(page, timeout)


def wait_idle(page: Page, timeout: float = 30.0) -> None:
    """Until the app's script is not running (checked every 50 ms; lighter than `settle`)."""
    deadline = time.monotonic() + timeout
    while page.get_attribute('[data-testid="stApp"]', "data-test-script-state") == "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"the app was still running after {timeout} s")
        page.wait_for_timeout(50)


def _box(page: Page, element: Locator, timeout: float = 30.0) -> dict[str, float]:
    """The element's box on screen, once it is in view; retried while a rerun replaces the element."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            element.scroll_into_view_if_needed(timeout=2_000)
            box = element.bounding_box(timeout=2_000)
            if box is not None:
                return dict(box)
        except PlaywrightError:
            if time.monotonic() > deadline:
                raise
        page.wait_for_timeout(100)


def _src(image: Locator) -> str | None:
    return image.first.get_attribute("src") if image.count() else None
