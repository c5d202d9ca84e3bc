"""The benchmark runs end to end and reports every item: `python -m pytest tests/bench`.

It runs `python -m benchmarks --quick` (tiny sizes) in two subprocesses side by side (items 1-9 and 11, and item 10), in
the background from the session's start (tests/conftest.py). Nothing here checks speed: that is what the full
benchmark is for (`python -m benchmarks`, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.report import TARGETS
from lora_core.train import TrainConfig

COLUMNS = ("item", "measurement", "ours", "reference", "ratio", "target", "met")
ITEM_NUMBERS = set(range(1, 12))


def _finished(background_result, name: str) -> tuple[subprocess.CompletedProcess[str], dict, Path]:  # noqa: ANN001
    folder, returncode, stdout, stderr = background_result(name)
    proc = subprocess.CompletedProcess(["python", "-m", "benchmarks", "--quick"], returncode, stdout, stderr)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads((folder / "bench.json").read_text(encoding="utf-8")), folder / "bench.md"


@pytest.fixture(scope="module")
def quick_pages(background_result) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    """`python -m benchmarks --quick --only 10` (the dashboard in a browser), started in the background when the
    session began, beside the other items' run (tests/conftest.py)."""
    return _finished(background_result, "quick_pages")


@pytest.fixture(scope="module")
def quick_run(
    background_result, quick_pages, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    """`python -m benchmarks --quick`: items 1-9 and 11 and item 10, run side by side in the background, as one run."""
    proc, result, table = _finished(background_result, "quick_run")
    pages_proc, pages, pages_table = quick_pages
    merged = {
        **result,
        "rows": result["rows"] + pages["rows"],
        "raw": {**result["raw"], **pages["raw"]},
        "failed": result["failed"] + pages["failed"],
    }
    both = subprocess.CompletedProcess(proc.args, 0, proc.stdout + pages_proc.stdout, proc.stderr + pages_proc.stderr)
    markdown = tmp_path_factory.mktemp("quick-bench") / "bench.md"
    markdown.write_text(table.read_text(encoding="utf-8") + pages_table.read_text(encoding="utf-8"), encoding="utf-8")
    return both, merged, markdown


def table_rows(text: str) -> list[list[str]]:
    """Data rows of the Markdown table in `text`, split into cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_every_item_is_printed(quick_run: tuple[subprocess.CompletedProcess[str], dict, Path]) -> None:
    proc, _, _ = quick_run
    rows = table_rows(proc.stdout)
    assert {int(r[0]) for r in rows} == ITEM_NUMBERS
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert not any("FAILED" in r[1] for r in rows)
    assert "Machine:" in proc.stdout and "torch" in proc.stdout
    assert "ratios" in proc.stdout  # the warning that absolute times vary


def test_json_holds_every_row_and_the_machine(quick_run: tuple[subprocess.CompletedProcess[str], dict, Path]) -> None:
    proc, result, _ = quick_run
    assert result["quick"] is True
    assert result["failed"] == []
    assert {row["item"] for row in result["rows"]} == ITEM_NUMBERS
    assert all(set(COLUMNS) <= set(row) for row in result["rows"])
    # every judged row is judged against the one table of targets, and every target there is used
    judged = [row for row in result["rows"] if row["met"] is not None]
    assert {row["goal"] for row in judged} == set(TARGETS)
    assert all(row["target"] == TARGETS[row["goal"]].text for row in judged)
    assert len(result["rows"]) == len(table_rows(proc.stdout))
    machine = result["machine"]
    for key in ("cpu_model", "torch_threads", "torch", "usable_cpus"):
        assert machine[key]
    raw = result["raw"]
    assert set(raw) == {"1-2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}
    assert raw["1-2"]["ours"]["samples_per_s"] > 0 and raw["1-2"]["baseline"]["samples_per_s"] > 0
    assert raw["1-2"]["peak_gflops"]["fp32"] > 0 and raw["1-2"]["peak_gflops"]["bf16"] > 0
    assert raw["6"]["fresh_clone"]["peak_rss_bytes"] > raw["6"]["import_only_peak_rss_bytes"] > 0
    assert raw["6"]["data_exists"]["peak_rss_bytes"] > raw["6"]["import_only_peak_rss_bytes"]
    assert [int(r) for r in raw["7"]["rank_sweep"]["extra_s"]] == [1, 4, 16, 64]
    assert 0 < raw["11"]["nf4_bytes"] <= raw["11"]["fp32_bytes"] / 5 and raw["11"]["qlora_vs_lora"] > 0


def test_bf16_and_fp32_epochs_alternate_for_every_seed(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, result, _ = quick_run
    compared = result["raw"]["1-2"]["precision"]
    epochs = [(e["seed"], e["precision_used"]) for e in compared["epochs"]]
    assert epochs == [(0, "fp32"), (0, "bf16"), (1, "bf16"), (1, "fp32"), (2, "fp32"), (2, "bf16")]
    assert all(0 < e["test_accuracy"] <= 1 for e in compared["epochs"])
    assert len(compared["per_seed_speedup"]) == 3 and compared["speedup"] > 0
    # item 1's own epoch runs in TrainConfig's default precision and its row says which one it used
    ours = result["raw"]["1-2"]["ours"]
    assert ours["precision_requested"] == TrainConfig().precision
    assert ours["precision_used"] in ("fp32", "bf16")
    throughput = next(r for r in result["rows"] if r["goal"] == "training speed-up over the tutorial loop")
    assert f"precision {ours['precision_requested']} → {ours['precision_used']}" in throughput["measurement"]


def test_lora_steps_are_timed_in_both_precisions_and_against_finetune(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, result, _ = quick_run
    raw = result["raw"]["3"]
    for batch in (64, 256):
        timings = raw[f"batch_{batch}"]
        assert {"ours", "full", "parametrize", "ours_bf16", "full_bf16"} <= set(timings)
        assert timings["ours_bf16_vs_full_bf16"] > 0
    loop = raw["finetune_loop"]
    assert loop["batch"] == 256 and loop["fp32"]["step_s"] > 0 and loop["bf16"]["step_s"] > 0
    measurements = [r["measurement"] for r in result["rows"] if r["item"] == 3]
    assert sum("lora_core.train.finetune's own loop" in m for m in measurements) == 2


def test_whole_processes_run_as_on_a_fresh_clone(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, result, _ = quick_run
    fresh = result["raw"]["6"]["fresh_clone"]
    # the study's empty data folder was filled: MNIST was built as on a fresh clone
    assert "MNIST/raw/train-images-idx3-ubyte" in fresh["data_files_built"]
    assert fresh["seconds"] > 0
    train = result["raw"]["8"]
    assert train["samples"] == 60_000
    assert train["seconds"] > train["epoch_seconds"] > 0
    assert train["precision_requested"] == TrainConfig().precision
    assert train["speedup"] == pytest.approx(train["samples_per_s"] / train["baseline_samples_per_s"])


def test_the_page_item_ran_the_study_in_the_browser_and_the_cli(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, result, _ = quick_run
    page = result["raw"]["9"]
    assert page["settings"] == {"Hidden size 1": 16, "Hidden size 2": 16, "Fine-tuning steps": 5}
    (round_,) = page["rounds"]
    assert round_["cli_s"] > 0 and round_["page_seconds"] > 0
    assert round_["page_server_cpu_s"] > 0 and round_["page_browser_cpu_s"] > 0  # both processes were watched
    assert page["ratio"] == pytest.approx(round_["cli_s"] / round_["page_seconds"])


def test_markdown_file_has_the_command_and_table(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, _, md_path = quick_run
    text = md_path.read_text(encoding="utf-8")
    assert "python -m benchmarks --quick" in text
    assert {int(r[0]) for r in table_rows(text)} == ITEM_NUMBERS


def test_the_dashboard_item_timed_every_page_and_every_control_in_the_browser(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    from benchmarks.context import QUICK

    _, result, _ = quick_run
    pages = result["raw"]["10"]
    assert QUICK.page_names is not None
    for kind in ("load_s", "load_new_profile_s", "switch_s"):
        assert set(pages[kind]) == set(QUICK.page_names)
        assert all(len(times) == pages["rounds"] and all(0 < t < 120 for t in times) for times in pages[kind].values())
    assert set(pages["controls_s"]) == {"strength", "k", "weight map"}
    assert all(len(times) == 2 and all(t > 0 for t in times) for times in pages["controls_s"].values())
    measured = [r["measurement"] for r in result["rows"] if r["item"] == 10]
    assert sum("complete in a fresh tab" in m for m in measured) == len(QUICK.page_names)
    assert sum("complete in a new browser profile" in m for m in measured) == len(QUICK.page_names)
    assert sum("by the sidebar's link" in m for m in measured) == len(QUICK.page_names)
