"""Scenario 1: a newcomer opens every page of a fresh app, in order; no traceback, no dead end."""

from __future__ import annotations

from playwright.sync_api import expect

from .helpers import PAGES, assert_no_errors, open_page, shot


def test_every_page_on_a_fresh_start(browser, app, screenshot_dir) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    folder = screenshot_dir / "1-fresh-start"
    for i, name in enumerate(PAGES):
        open_page(page, app.url, name)
        assert_no_errors(page)
        expect(page.locator("h1").first).to_be_visible()
        shot(page, folder, f"{i}-{name}")
        if name == "home":  # the study's button in the first screen (it was once 3,500 px down)
            box = page.get_by_role("button", name="Run the whole study").bounding_box()
            assert box is not None and box["y"] + box["height"] <= 1000, box
        if name != "home":  # pages that need a base model must offer to train it right there
            expect(page.get_by_role("button", name="Train the base model").first).to_be_visible()
    page.close()
