"""The whole study from the Home page under a real `streamlit run`: the run's progress shows in the
sidebar, it finishes with its headline, and the server's terminal stays quiet (no "missing
ScriptRunContext!" or "Session state does not function" lines from the background worker)."""

from __future__ import annotations

from playwright.sync_api import expect

from .helpers import assert_no_errors, open_page, settle, shot, wait_for_text

NOISE = ("ScriptRunContext", "Session state does not function", "Traceback")


def test_run_the_whole_study_keeps_the_server_quiet(browser, app, screenshot_dir) -> None:
    folder = screenshot_dir / "7-study"
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    open_page(page, app.url, "home")
    page.get_by_text("Study settings").click()
    for label, value in (("Hidden size 1", "64"), ("Hidden size 2", "64"), ("Fine-tuning steps", "40")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        settle(page)
    page.get_by_role("button", name="Run the whole study").click()
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar.get_by_text("Running the whole study").first).to_be_visible(timeout=60_000)
    shot(page, folder, "0-running")
    wait_for_text(page, r"Finished in", timeout=300)
    settle(page)
    assert_no_errors(page)
    expect(page.get_by_text("Base accuracy").first).to_be_visible()
    expect(page.get_by_role("button", name="Run the whole study")).to_be_enabled()
    shot(page, folder, "1-done")
    page.close()
    log = app.log.read_text()
    noise = [line for line in log.splitlines() if any(n in line for n in NOISE)]
    assert noise == [], "\n".join(noise[:10])
