"""The Insight page: the analysis runs as a background job on small settings (tiny ranks, a few steps), saves its
JSON under <artifacts>/analysis/, and the page shows the heat maps, the amplification table with its reading,
linear1's directions and the memory table and chart, again in a new session (after a restart)."""

from __future__ import annotations

import json
import math
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


def assert_shows_similarity(at, basis: dict) -> None:  # noqa: ANN001 - AppTest
    """Each pair's table on the page holds the saved figures of its layers, and each layer's saved sentence."""
    shown = [t.value for t in at.dataframe if "φ(1,1)" in t.value.columns]
    assert len(shown) == len(basis) == 2
    markdown = [str(m.value) for m in at.markdown]
    for table, entries in zip(shown, basis.values(), strict=True):
        k = entries[0]["k"]
        expected = []
        for e in entries:
            row = {
                "layer": e["layer"],
                "ranks": f"{e['ranks'][0]} vs {e['ranks'][1]}",
                "φ(1,1)": e["top1"],
                f"φ({k},{k})": e["top_k"],
                "φ(1, all)": e["top1_in_all"],
                f"φ({k}, all)": e["top_k_in_all"],
                "random φ(1,1)": e["random_top1"],
                f"random φ({k},{k})": e["random_top_k"],
            }
            if e["init"]:
                row |= {"φ(1, all) at init": e["init"]["top1_in_all"], f"φ({k},{k}) at init": e["init"]["top_k"]}
            expected.append(row)
            assert f"- {e['reading']}" in markdown
            assert f"φ(1,1) = {e['top1']:.2f}" in e["reading"]
        assert table.to_dict("records") == expected


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
    markdown = [str(m.value) for m in at.markdown]
    adapters, memory_saved = saved["adapters.json"], saved["memory.json"]
    assert_shows_similarity(at, adapters["similarity"]["A"])  # the paper's basis first
    tables = [t.value for t in at.dataframe]
    moved = next(t for t in tables if "adapter" in t.columns)
    assert moved.to_dict("records") == [{"adapter": k, **v} for k, v in adapters["a_moved"].items()]
    shown_amp = [t for t in tables if "amplification factor" in t.columns]
    assert len(shown_amp) == len(adapters["amplification"]) == 2
    for table, (key, block) in zip(shown_amp, adapters["amplification"].items(), strict=True):
        assert f"Adapter {key}" in [str(h.value) for h in at.subheader]
        assert table.to_dict("records") == [
            {
                "layer": a["layer"],
                "r": a["rank"],
                "‖ΔW‖_F": a["delta_norm"],
                "‖UᵀWVᵀ‖_F": a["projected_norm"],
                "W's own top r": a["weight_top_norm"],
                "random directions": a["random_norm"],
                "amplification factor": a["factor"],
            }
            for a in block["rows"]
        ]
        assert block["summary"] in [str(i.value) for i in at.info]
        for a in block["rows"]:  # each sentence shown is the saved one, and its verdict is what its numbers say
            assert f"- {a['reading']}" in markdown
            position = math.log(a["projected_norm"] / a["random_norm"]) / math.log(
                a["weight_top_norm"] / a["random_norm"]
            )
            verdict = "already emphasises" if position >= 0.5 else "barely uses"
            assert f"its directions are ones W {verdict} (" in a["reading"], (position, a["reading"])
            if a["factor"] >= 1:
                assert f"amplifies them by a factor of {a['factor']:.3g}" in a["reading"]
            else:
                assert f"is {a['factor']:.3g}" in a["reading"] and "does not amplify them" in a["reading"]

    # the memory table and its ratio, from the saved rows
    memory = next(t for t in tables if "measured peak (MB)" in t.columns)
    rows = memory_saved["rows"]
    assert list(memory["method"]) == [r["label"] for r in rows] and list(memory["method"])[:2] == [
        "full fine-tuning",
        "LoRA r=1",
    ]
    assert list(memory["trainable parameters"]) == [r["trainable_params"] for r in rows]
    assert list(memory["total, exact (MB)"]) == [r["total_bytes"] / 1e6 for r in rows]
    assert list(memory["measured peak (MB)"]) == [r["peak_bytes"] / 1e6 for r in rows]
    assert (memory["measured peak (MB)"] > 0).all()
    by_label = {r["label"]: r for r in rows}
    full_over_lora = by_label["full fine-tuning"]["total_bytes"] / by_label["LoRA r=8"]["total_bytes"]
    assert memory_saved["ratio"]["rank"] == 8 and memory_saved["ratio"]["total"] == full_over_lora
    assert f"Full fine-tuning needs **{full_over_lora:.2f}×** the memory of LoRA at rank 8 in all" in text
    similarity = next(t for t in tables if "φ(1,1)" in t.columns)
    assert "φ(1, all) at init" in similarity.columns  # A's directions (the paper's): beside their random start

    at.radio(key="insight_basis").set_value("update").run()
    assert_clean(at)
    assert len(plotly_charts(at)) == 8
    similarity = next(t.value for t in at.dataframe if "φ(1,1)" in t.value.columns)
    assert "φ(1, all) at init" not in similarity.columns
    assert_shows_similarity(at, saved["adapters.json"]["similarity"]["update"])


def test_saved_intruder_dimensions_are_charted_read_and_tabled(trained_dir: Path, mnist) -> None:  # noqa: ANN001
    from lora_core.lab import readings
    from lora_core.lab.analysis.intruders import IntruderSettings, run_intruders, runs_of
    from lora_core.store.artifacts import ArtifactStore

    at = visit(new_app(), "insight")
    assert "Not measured yet" in texts(at)
    assert any(b.label == "Measure intruder dimensions" for b in at.button)
    store = ArtifactStore(trained_dir)
    settings = IntruderSettings(ranks=(1, 4), tasks=("weakest",), steps=3, batch_size=32, device="cpu")
    saved = run_intruders(store, mnist, settings)
    at = visit(new_app(), "insight")
    assert_clean(at)
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Intruder dimensions" in c.proto.spec)
    runs = runs_of(saved)
    assert [(t["x"][0], t["y"][0]) for t in chart["data"]] == [(r.total(10, 0.5), r.forgot) for r in runs]
    assert readings.read_intruders(saved) in texts(at)
    (table,) = [d.value for d in at.dataframe if "forgot (points)" in d.value.columns]
    assert list(table["run"]) == ["LoRA r=1", "LoRA r=4", "full fine-tuning"]
    assert list(table["ε 0.9"]) == [r.total(10, 0.9) for r in runs]
