"""Scenarios 1, 2, 3 and 5 in a real browser, in the order a user takes them, on one fresh app.

1. A newcomer opens every page of the fresh app, in order: no traceback, no dead end (each page that needs a
   base model offers to train it right there), and Home's study button in the first screen.
2. Train the base model from the Training page and watch the live progress reach the end.
3. Fine-tune an adapter from the LoRA page; see the before/after chart and the new adapter.
5. The parameter page shows the hashes that fine-tuning recorded (unchanged), and its live check, with a
   control that moves W, says PASS.
Afterwards the server's terminal is quiet: no "missing ScriptRunContext!" or "Session state does not function"
lines from the background runs (every run, the whole study from the Home page included, is one dashboard.jobs.Job).
(Scenario 4, drawing, runs on the full-size model in test_draw.py.)
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .helpers import PAGES, assert_no_errors, metric_value, open_page, settle, shot, wait_for_text


@pytest.fixture(scope="module")
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    yield page
    page.close()


def test_1_every_page_on_a_fresh_start(page, app, screenshot_dir) -> None:
    folder = screenshot_dir / "1-fresh-start"
    page.set_viewport_size({"width": 1400, "height": 1000})
    for i, name in enumerate(PAGES):
        open_page(page, app.url, name)
        assert_no_errors(page)
        expect(page.locator("h1").first).to_be_visible()
        shot(page, folder, f"{i}-{name}")
        if name == "home":  # the study's button in the first screen, not below the diagram
            box = page.get_by_role("button", name="Run the whole study").bounding_box()
            assert box is not None and box["y"] + box["height"] <= 1000, box
        if name != "home":  # pages that need a base model must offer to train it right there
            expect(page.get_by_role("button", name="Train the base model").first).to_be_visible()
    page.set_viewport_size({"width": 1400, "height": 1100})


def test_2_train_base_model(page, app, screenshot_dir) -> None:
    folder = screenshot_dir / "2-train"
    open_page(page, app.url, "training")
    # A 512-512 network, one epoch of batch 128: long enough (8 s here) that the live progress is on screen
    # for several polls (a 200-200 network at batch 512 finished in about 2 s, before the first poll), and a
    # quarter of the full-size network's arithmetic (test_draw.py uses the full-size model).
    for label, value in (("Hidden size 1", "512"), ("Hidden size 2", "512"), ("Epochs", "1"), ("Batch size", "128")):
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Train the base model", exact=True).click()
    expect(page.get_by_text("samples/s").first).to_be_visible(timeout=60_000)  # live progress
    shot(page, folder, "0-training-running")
    wait_for_text(page, r"Finished in", timeout=240)
    settle(page)
    accuracy = float(metric_value(page, "Test accuracy").rstrip("%"))
    assert accuracy >= 90.0, accuracy
    assert_no_errors(page)
    shot(page, folder, "1-training-done")


def test_3_finetune_adapter(page, app, screenshot_dir) -> None:
    folder = screenshot_dir / "3-finetune"
    open_page(page, app.url, "finetune")
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("150")
    steps.press("Enter")
    settle(page)
    page.get_by_role("button", name="Fine-tune the adapter").click()
    wait_for_text(page, r"Finished in", timeout=240)
    settle(page)
    assert_no_errors(page)
    trainable = metric_value(page, "Trainable parameters")
    assert int(trainable.replace(",", "")) > 0, trainable
    assert metric_value(page, "Overall accuracy").endswith("%")
    expect(page.locator("svg text", has_text="Per-digit test accuracy").first).to_be_attached()
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar.get_by_text("digit-", exact=False).first).to_be_visible()
    shot(page, folder, "0-finetune-done")
    for name in ("evaluation",):
        open_page(page, app.url, name)
        assert_no_errors(page)
        shot(page, folder, f"1-{name}")
    open_page(page, app.url, "home")  # overview first: the headline chart lies whole in the first screen
    expect(page.locator("svg text", has_text="Per-digit accuracy on the MNIST test set").first).to_be_attached()
    box = page.locator('[data-testid="stVegaLiteChart"]').first.bounding_box()
    assert box is not None and box["y"] + box["height"] <= page.viewport_size["height"], box
    shot(page, folder, "2-home")


def test_5_parameters_checks(page, app, screenshot_dir) -> None:
    open_page(page, app.url, "parameters")
    expect(page.get_by_text("recorded by the fine-tune run on").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"^PASS"))).to_have_count(0)  # only the live check says PASS
    page.get_by_role("button", name="Run the live check").click()
    expect(page.get_by_text(re.compile(r"^PASS: after 20 steps")).first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"^FAIL"))).to_have_count(0)
    assert_no_errors(page)
    shot(page, screenshot_dir / "5-parameters", "0-checks")


NOISE = ("ScriptRunContext", "Session state does not function", "Traceback")


def test_the_server_stayed_quiet(app) -> None:
    noise = [line for line in app.log.read_text().splitlines() if any(n in line for n in NOISE)]
    assert noise == [], "\n".join(noise[:10])
