"""Scenario 4 and two sessions at once, on the full-size model from the session's `study` run.

4. On the Draw page a user draws a "1" (one vertical stroke) and a "0" (a closed loop) with the mouse
   and sees a base and an adapted prediction for each; the full-size model reads the "1" as 1. After
   "Random test digit", drawing again replaces the test digit (no "Clear" needed).
Concurrency: one browser session fine-tunes while another draws, predicts and switches adapters;
both finish without errors or mixed-up results.
"""

from __future__ import annotations

import math
import re
import shutil

import pytest
from playwright.sync_api import expect

from .conftest import start_app, stop_app
from .helpers import assert_no_errors, draw, metric_value, open_page, settle, shot, wait_for_text

ONE = [(0.5, 0.15), (0.5, 0.85)]
# Long enough that the drawer's first prediction falls inside the training run on a quiet machine (600 steps:
# about 4 s here); a faster run that ends before the page polls its progress shows its result instead.
SECOND_STEPS = 600
ZERO = [(0.5 + 0.22 * math.sin(t / 24 * 2 * math.pi), 0.5 - 0.33 * math.cos(t / 24 * 2 * math.pi)) for t in range(26)]


@pytest.fixture(scope="module")
def full_app(full_study, tmp_path_factory):
    assert full_study.returncode == 0, full_study.stderr[-2000:]
    folder = tmp_path_factory.mktemp("browser-full")
    shutil.copytree(full_study.artifacts, folder / "artifacts")
    server = start_app(folder / "artifacts", folder / "streamlit.log")
    yield server
    stop_app(server.process)


def test_4_draw_one_and_zero(browser, full_app, screenshot_dir) -> None:
    folder = screenshot_dir / "4-draw"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    open_page(page, full_app.url, "draw")
    draw(page, ONE)
    settle(page)
    assert metric_value(page, "Base model says") == "1"
    adapted = page.locator('[data-testid="stMetric"]').filter(has_text="With ")
    expect(adapted.first).to_be_visible()
    assert adapted.first.locator('[data-testid="stMetricValue"]').inner_text().strip().isdigit()
    assert_no_errors(page)
    shot(page, folder, "0-one")

    page.get_by_role("button", name="Clear").click()
    settle(page)
    draw(page, ZERO)
    settle(page)
    assert metric_value(page, "Base model says").isdigit()
    expect(adapted.first).to_be_visible()
    assert_no_errors(page)
    shot(page, folder, "1-zero")

    # A drawing replaces a random test digit, without pressing Clear first.
    page.get_by_role("button", name="Random test digit").click()
    settle(page)
    test_caption = page.get_by_text(re.compile(r"MNIST test image #\d+"))
    expect(test_caption.first).to_be_visible()
    draw(page, ONE)
    settle(page)
    expect(test_caption).to_have_count(0)
    expect(page.get_by_text("28 × 28, centred by mass")).to_be_visible()
    assert metric_value(page, "Base model says") == "1"
    assert_no_errors(page)
    shot(page, folder, "1-drawn-over-random")

    # the two pages whose figures are computed from the whole model (the strength curve over the test set, each
    # layer's singular values) open cleanly on the full-size one
    for name in ("evaluation", "parameters"):
        open_page(page, full_app.url, name)
        assert_no_errors(page)
        shot(page, folder, f"2-{name}")
    page.close()


def test_two_sessions_at_once(browser, full_app, screenshot_dir) -> None:
    folder = screenshot_dir / "6-two-sessions"
    trainer = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    drawer = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()

    open_page(trainer, full_app.url, "finetune")
    trainer.get_by_label("Adapter name", exact=True).fill("second")
    trainer.get_by_label("Adapter name", exact=True).press("Enter")
    steps = trainer.get_by_label("Steps", exact=True)
    steps.fill(str(SECOND_STEPS))
    steps.press("Enter")
    settle(trainer)
    trainer.get_by_role("button", name="Fine-tune the adapter").click()
    expect(trainer.get_by_text(re.compile("samples/s|Finished in")).first).to_be_visible(timeout=60_000)

    # Meanwhile the other session draws and predicts, twice, on its own canvas and models.
    open_page(drawer, full_app.url, "draw")
    draw(drawer, ONE)
    settle(drawer)
    assert metric_value(drawer, "Base model says") == "1"
    assert_no_errors(drawer)
    drawer.get_by_role("button", name="Random test digit").click()
    settle(drawer)
    assert metric_value(drawer, "Base model says").isdigit()
    assert_no_errors(drawer)

    wait_for_text(trainer, r"Finished in", timeout=300)
    settle(trainer)
    assert_no_errors(trainer)
    shot(trainer, folder, "0-trainer")

    # The drawer now sees the new adapter and can switch to it without reloading the base model.
    open_page(drawer, full_app.url, "draw")
    select = drawer.get_by_label("Adapter to compare with the base model", exact=True)
    select.click()
    drawer.get_by_role("option", name="second").click()
    settle(drawer)
    drawer.get_by_role("button", name="Random test digit").click()
    settle(drawer)
    expect(drawer.locator('[data-testid="stMetric"]').filter(has_text="With second").first).to_be_visible()
    assert_no_errors(drawer)
    shot(drawer, folder, "1-drawer")
    trainer.context.close()
    drawer.context.close()
