"""Scenario 6 in a real browser: the Experiments page shows a saved comparison (its table with "—" where a
measure does not apply, never "None") and a saved sweep (its charts, the sentence reading them), then runs a
small rank sweep from its own inputs and shows it as the newest."""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from lora_core.data import MnistData
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import run_experiment
from lora_core.lab.sweeps import list_sweeps, load_sweep, sweep_rank
from lora_core.lab.tasks import parse_task
from lora_core.store.artifacts import ArtifactStore

from .conftest import AppServer, start_app, stop_app
from .helpers import assert_no_errors, open_page, settle, shot, wait_for_text

SMALL = ExperimentSettings(steps=6, batch_size=32, rank=2, device="cpu")


@pytest.fixture(scope="module")
def saved_app(
    tmp_path_factory: pytest.TempPathFactory, trained_artifacts: Path, small_mnist: MnistData
) -> Iterator[AppServer]:
    """A server on a small base model with one saved comparison and one saved rank sweep (small settings)."""
    folder = tmp_path_factory.mktemp("browser-experiments")
    artifacts = folder / "artifacts"
    shutil.copytree(trained_artifacts, artifacts)
    store = ArtifactStore(artifacts)
    # what the page shows of them is what matters here: their figures come from the first 2,000 test images
    data = dataclasses.replace(
        small_mnist,
        train_x=small_mnist.train_images,
        test_x=small_mnist.test_x[:2000],
        test_y=small_mnist.test_y[:2000],
    )
    run_experiment(store, data, parse_task("invert"), SMALL)
    sweep_rank(store, data, parse_task("invert"), values=(1, 4), settings=SMALL)
    server = start_app(artifacts, folder / "streamlit.log")
    yield server
    stop_app(server.process)


def test_6_experiments_page_tables_charts_and_a_sweep(browser, saved_app, screenshot_dir) -> None:
    folder = screenshot_dir / "6-experiments"
    folder.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    open_page(page, saved_app.url, "experiments")
    assert_no_errors(page)
    (saved,) = list_sweeps(ArtifactStore(saved_app.artifacts))
    first = load_sweep(saved)
    expect(page.get_by_text(first.reading).first).to_be_visible(timeout=60_000)
    expect(page.locator("svg text", has_text="Accuracy against rank").first).to_be_attached()
    expect(page.locator("svg text", has_text="What each rank costs").first).to_be_attached()

    # the methods table: what does not apply to a row reads "—", never "None"
    table = page.locator('[data-testid="stTable"]').first
    table.scroll_into_view_if_needed()
    base_row = table.locator("tr", has_text="base model (reference)")
    cells = [c.strip() for c in base_row.locator("td, th").all_inner_texts()]
    assert cells[0] == "base model (reference)" and cells.count("—") == 5, cells
    shown = table.inner_text()
    assert "None" not in shown and "nan" not in shown, shown
    table.screenshot(path=str(folder / "0-methods-table.png"))
    shot(page, folder, "0-saved-results")

    # a small rank sweep from the page's own inputs, on a task whose transform is cheap
    task = page.get_by_role("combobox", name="Task", exact=True)
    task.click()
    task.fill("invert")  # the select box filters its options as one types; Enter takes the first left
    task.press("Enter")
    settle(page)
    expect(task).to_have_value("invert: dark ink on white")
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("6")
    steps.press("Enter")
    settle(page)
    values = page.get_by_label(re.compile(r"^Values"))
    values.fill("1, 2")
    values.press("Enter")
    settle(page)
    page.get_by_role("button", name="Run the sweep").click()
    wait_for_text(page, r"Finished in", timeout=240)
    settle(page)
    assert_no_errors(page)
    newest = load_sweep(list_sweeps(ArtifactStore(saved_app.artifacts))[0])
    assert newest.values == [1, 2] and newest.settings["steps"] == 6
    assert newest.task["spec"] == "invert"
    reading = page.get_by_text(newest.reading).first
    expect(reading).to_be_visible(timeout=60_000)
    reading.scroll_into_view_if_needed()
    shot(page, folder, "1-sweep-done")
    page.close()
