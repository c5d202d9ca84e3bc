"""The Insight page: the analysis runs as a background job on small settings (tiny ranks, a few steps), saves its
JSON under <artifacts>/analysis/, and the page shows the heat maps, the amplification table with its reading,
linear1's directions and the memory table and chart, again in a new session (after a restart)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import assert_clean, click, new_app, texts, visit, wait_for_job

from dashboard import jobs, ui

RUN = "Run the analysis"


def plotly_charts(at) -> list:  # noqa: ANN001 - AppTest
    return list(at.get("plotly_chart"))


def small_settings(at) -> None:  # noqa: ANN001 - AppTest
    at.number_input(key="insight_small_rank").set_value(2)
    at.number_input(key="insight_large_rank").set_value(4)
    at.number_input(key="insight_steps").set_value(4)
    at.number_input(key="insight_batch").set_value(16)
    at.number_input(key="insight_memory_steps").set_value(1).run()


def test_without_a_base_model_the_page_offers_training(fresh_dir: Path) -> None:
    at = visit(new_app(), "insight")
    assert_clean(at)
    assert "There is no base model yet" in texts(at)
    assert ui.TRAIN_LABEL in [b.label for b in at.button]
    assert list(fresh_dir.iterdir()) == [], "looking at the page must not write anything"


def test_a_large_rank_not_above_the_small_one_is_refused_naming_the_field(trained_dir: Path) -> None:
    at = visit(new_app(), "insight")
    assert_clean(at)
    assert "No analysis yet" in texts(at)
    at.number_input(key="insight_large_rank").set_value(8).run()
    errors = [str(e.value) for e in at.error]
    assert any("Large rank" in e and "larger than the small rank 8" in e for e in errors), errors
    assert next(b for b in at.button if b.label == RUN).disabled
    at.number_input(key="insight_large_rank").set_value(16).run()
    assert not at.error and not next(b for b in at.button if b.label == RUN).disabled


def test_the_analysis_runs_as_a_job_and_its_results_show_again_after_a_restart(trained_dir: Path) -> None:
    at = visit(new_app(), "insight")
    small_settings(at)
    click(at, RUN)
    assert_clean(at)
    job = wait_for_job(at, timeout=300)
    assert job.kind == "analysis" and job.status == jobs.DONE, job.error
    assert {"rank 2, seed 0", "rank 4, seed 0", "rank 2, seed 1", "memory: LoRA r=8"} <= set(job.phases)
    assert_clean(at)

    saved = {
        name: json.loads((trained_dir / "analysis" / name).read_text()) for name in ("adapters.json", "memory.json")
    }
    assert saved["adapters.json"]["settings"]["small_rank"] == 2 and saved["adapters.json"]["settings"]["steps"] == 4
    assert [r["label"] for r in saved["memory.json"]["rows"]][:2] == ["full fine-tuning", "LoRA r=1"]

    # a restart: a new session only reads what was saved
    at = visit(new_app(), "insight")
    assert_clean(at)
    charts = plotly_charts(at)
    assert len(charts) == 2 * 3 + 1 + 1  # phi per pair and layer, linear1's directions, the memory bars
    text = texts(at)
    assert "No analysis yet" not in text
    assert "amplifies directions W" in text  # the reading of table 7
    assert "Full fine-tuning needs" in text and "LoRA at rank 8" in text
    tables = [t.value for t in at.dataframe]
    memory = next(t for t in tables if "measured peak (MB)" in t.columns)
    assert list(memory["method"])[:2] == ["full fine-tuning", "LoRA r=1"]
    assert (memory["measured peak (MB)"] > 0).all()
    similarity = next(t for t in tables if "φ(1,1)" in t.columns)
    assert "φ(1, all) at init" in similarity.columns  # A's directions (the paper's): beside their random start

    at.radio(key="insight_basis").set_value("update").run()
    assert_clean(at)
    assert len(plotly_charts(at)) == 8
    similarity = next(t.value for t in at.dataframe if "φ(1,1)" in t.value.columns)
    assert "φ(1, all) at init" not in similarity.columns
