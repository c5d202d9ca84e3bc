"""The Experiments page's sweeps: a rank or replay sweep runs on small settings (few steps of a small batch) as
one stoppable background job; its charts, the sentence reading them and the marked value show, and show
again from the saved JSON in a new session; bad values are refused next to the field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import assert_clean, click, new_app, texts, visit, wait_for_job

from dashboard import charts, jobs, palette
from lora_core.lab import readings
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.sweeps import WITHIN_POINTS, SweepPoint, SweepResult, list_sweeps, load_sweep, smallest_within_best
from lora_core.lab.tasks import parse_task
from lora_core.store.artifacts import ArtifactStore


def figures(at) -> list[dict]:  # noqa: ANN001 - AppTest
    """Every Plotly chart on the page as the figure dict the browser gets."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def titled(at, title: str) -> dict:  # noqa: ANN001 - AppTest
    found = [f for f in figures(at) if f["layout"].get("title", {}).get("text") == title]
    assert len(found) == 1, [f["layout"].get("title", {}).get("text") for f in figures(at)]
    return found[0]


def sweep_settings(at, task: str, kind: str, values: str, param: str | None = None) -> None:  # noqa: ANN001
    at.selectbox(key="exp_kind").set_value(task).run()
    if param is not None:
        at.text_input(key=f"exp_param_{task}").input(param).run()
    at.number_input(key="exp_steps").set_value(6)
    at.number_input(key="exp_batch").set_value(32)
    at.number_input(key="exp_rank").set_value(2)
    at.radio(key="sweep_kind").set_value(kind).run()
    at.text_input(key=f"sweep_values_{kind}").input(values).run()


def sweep_table(at):  # noqa: ANN001, ANN201 - AppTest, DataFrame
    (table,) = [d.value for d in at.dataframe if "marked" in d.value.columns]
    return table


def check_rank_sweep_shown(at, result: SweepResult) -> None:  # noqa: ANN001 - AppTest
    assert_clean(at)
    ranks = [p.value for p in result.points]
    accuracy = titled(at, "Accuracy against rank and against trainable parameters")
    marked_name = f"rank {result.marked:g}: the smallest within {WITHIN_POINTS:g} points of the best"
    lines = {(t["name"], t["xaxis"]): t for t in accuracy["data"]}
    task_line = lines[("task: invert", "x")]
    assert task_line["x"] == ranks
    assert task_line["y"] == pytest.approx([100 * p.task_accuracy for p in result.points])
    params_line = lines[("task: invert", "x2")]
    assert params_line["x"] == [p.trainable_params for p in result.points]
    plain = lines[("plain MNIST (adapter applied)", "x")]
    assert plain["y"] == pytest.approx([100 * p.plain_accuracy for p in result.points])
    star = lines[(marked_name, "x")]
    assert star["x"] == [result.marked]
    assert star["y"] == pytest.approx([100 * result.point(result.marked).task_accuracy])
    assert accuracy["layout"]["xaxis"]["type"] == "log" and accuracy["layout"]["xaxis"]["tickvals"] == ranks
    cost = titled(at, "What each rank costs")
    assert cost["data"][0]["y"] == pytest.approx([p.seconds for p in result.points])
    shown = texts(at)
    assert result.reading in shown  # the library's sentence, from the measured numbers
    assert f"rank {result.marked:g}" in result.reading
    seconds, sizes = [p.seconds for p in result.points], [p.stored_bytes for p in result.points]
    assert readings.read_rank_cost(ranks, seconds, sizes) in shown
    table = sweep_table(at)
    assert list(table["Rank r"]) == ranks
    assert [bool(m) for m in table["marked"]] == [r == result.marked for r in ranks]
    assert list(table["trainable parameters"]) == [p.trainable_params for p in result.points]
    assert table["task accuracy"].tolist() == pytest.approx([100 * p.task_accuracy for p in result.points])


def test_a_rank_sweep_runs_as_a_job_and_shows_again_after_a_restart(trained_dir: Path) -> None:
    at = visit(new_app(), "experiments")
    assert_clean(at)
    assert "No sweep yet" in texts(at)
    assert at.text_input(key="sweep_values_rank").value == "1, 2, 4, 8, 16, 32, 64"
    sweep_settings(at, "invert", "rank", "16, 1, 4")
    click(at, "Run the sweep")
    assert_clean(at)
    job = wait_for_job(at)
    assert job.kind == "sweep" and job.status == jobs.DONE, job.error
    assert set(job.phases) >= {"rank 1 (1/3)", "rank 4 (2/3)", "rank 16 (3/3)"}  # progress per value

    (saved,) = list_sweeps(ArtifactStore(trained_dir))
    result = load_sweep(saved)
    assert result.kind == "rank" and result.values == [1, 4, 16]
    assert result.settings["steps"] == 6 and result.settings["batch_size"] == 32
    assert result.marked == smallest_within_best(result.values, [p.task_accuracy for p in result.points])
    check_rank_sweep_shown(at, result)

    restarted = visit(new_app(), "experiments")  # a new session: read back from the saved JSON
    assert restarted.session_state["job"] is None
    assert saved.name in restarted.selectbox(key="sweep_pick").options[0]
    check_rank_sweep_shown(restarted, result)


def test_a_replay_sweep_marks_the_default_and_a_domain_task_is_refused(trained_dir: Path) -> None:
    at = visit(new_app(), "experiments")
    at.radio(key="sweep_kind").set_value("replay").run()
    assert at.text_input(key="sweep_values_replay").value == "0, 0.1, 0.25, 0.5, 0.75, 0.9"
    assert any("A replay sweep needs a digit task" in str(i.value) for i in at.info)  # rotate is the default task
    assert next(b for b in at.button if b.label == "Run the sweep").disabled

    sweep_settings(at, "digits", "replay", "0.5, 0", param="3")
    assert not any("A replay sweep needs a digit task" in str(i.value) for i in at.info)
    click(at, "Run the sweep")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    assert_clean(at)
    result = load_sweep(list_sweeps(ArtifactStore(trained_dir))[0])
    default = ExperimentSettings().replay_for("digits")
    assert result.kind == "replay" and result.values == [0.0, 0.5] and result.marked == default

    figure = titled(at, "Target gain against the change on the other digits, per replay share")
    points, star = figure["data"]
    assert points["x"] == pytest.approx([100 * p.kept_change for p in result.points])
    assert points["y"] == pytest.approx([100 * p.task_gain for p in result.points])
    assert star["name"] == f"default replay {default:g}"
    assert star["y"] == pytest.approx([100 * result.point(default).task_gain])
    assert result.reading in texts(at) and "At replay 0 the target gains" in result.reading
    table = sweep_table(at)
    assert list(table["Replay share"]) == [0.0, 0.5]
    assert list(table["marked"]) == ["", "★"]
    assert any(c.value == "★ marks the default." for c in at.caption)
    assert table["other digits change (points)"].tolist() == pytest.approx([100 * p.kept_change for p in result.points])


def test_a_stopped_sweep_saves_nothing_and_holds_the_only_writer_slot(trained_dir: Path) -> None:
    at = visit(new_app(), "experiments")
    sweep_settings(at, "thick", "rank", "1, 2")
    at.number_input(key="exp_steps").set_value(100_000)
    click(at, "Run the sweep")
    job = at.session_state["job"]
    assert job.kind == "sweep" and job.running
    # one writer per artifacts folder: every start button is disabled and a second run is refused
    assert all(b.disabled for b in at.button if b.label in ("Run the sweep", "Run the comparison"))
    store = ArtifactStore(trained_dir)
    with pytest.raises(jobs.RunInProgress):
        jobs.start_sweep(store, parse_task("invert"), "rank", (1,), ExperimentSettings(steps=1))
    job.stop()
    wait_for_job(at)
    assert job.status == jobs.STOPPED, job.error
    assert any("Stopped" in str(w.value) for w in at.warning)
    assert "A stopped sweep saves nothing" in texts(at)
    assert list_sweeps(store) == []
    assert "No sweep yet" in texts(at)


def test_bad_values_and_an_unreadable_sweep_are_explained(trained_dir: Path) -> None:
    (trained_dir / "experiments").mkdir()
    (trained_dir / "experiments" / "sweep-rank-broken.json").write_text("{not json")
    at = visit(new_app(), "experiments")
    assert_clean(at)
    assert any("cannot be read" in str(w.value) and "sweep-rank-broken.json" in str(w.value) for w in at.warning)
    assert "No readable sweep yet" in texts(at)
    for typed, expected in (("1, x", "'x'"), ("4, 4", "lists a value twice"), ("0", "from 1 to"), ("", "at least one")):
        at.text_input(key="sweep_values_rank").input(typed).run()
        click(at, "Run the sweep")
        errors = [str(e.value) for e in at.error]
        assert any("Values" in e and expected in e for e in errors), (typed, errors)
        assert at.session_state["job"] is None
    at.radio(key="sweep_kind").set_value("replay").run()
    at.selectbox(key="exp_kind").set_value("weakest").run()
    at.text_input(key="sweep_values_replay").input("0.5, 1").run()
    click(at, "Run the sweep")
    assert any("Values" in str(e.value) and "below 1" in str(e.value) for e in at.error)
    assert at.session_state["job"] is None
    assert list((trained_dir / "experiments").iterdir()) == [trained_dir / "experiments" / "sweep-rank-broken.json"]


def test_the_rank_chart_stars_the_rank_it_is_given_on_log_axes() -> None:
    ranks, params = [1, 2, 4], [6794, 13588, 27176]
    fig = charts.rank_sweep_accuracy(ranks, params, [0.90, 0.952, 0.955], [0.97, 0.96, 0.95], 2, 0.5, base_task=0.5)
    stars = [t for t in fig.data if t.name.startswith("rank 2: the smallest within 0.5 points")]
    assert [list(t.x) for t in stars] == [[2], [13588]]  # one per panel
    assert [list(t.y) for t in stars] == [pytest.approx([95.2])] * 2
    assert fig.layout.xaxis.type == fig.layout.xaxis2.type == "log"
    assert list(fig.layout.xaxis.tickvals) == ranks and list(fig.layout.xaxis2.ticktext) == ["6.79k", "13.6k", "27.2k"]
    plain = [list(t.y) for t in fig.data if t.name == "plain MNIST (adapter applied)"]
    assert plain == [pytest.approx([97.0, 96.0, 95.0])] * 2
    unmarked = charts.rank_sweep_accuracy(ranks, params, [0.9] * 3, [0.9] * 3, None, 0.5)
    assert not [t for t in unmarked.data if t.name.startswith("rank ")]


def test_the_cost_chart_draws_the_measured_times_and_sizes() -> None:
    fig = charts.rank_sweep_cost([1, 4, 16], [0.9, 1.4, 1.2], [28_200, 55_400, 387_700], marked=4)
    bars, sizes = fig.data
    assert list(bars.y) == [0.9, 1.4, 1.2] and list(sizes.y) == [28.2, 55.4, 387.7]
    assert list(bars.marker.color) == [palette.FROZEN, palette.HIGHLIGHT, palette.FROZEN]


def test_the_replay_chart_plots_gain_against_change_in_points_and_stars_the_default() -> None:
    fig = charts.replay_sweep_tradeoff([0.0, 0.5, 0.9], [0.13, 0.10, 0.03], [-0.93, -0.04, 0.001], 0.5)
    points, star = fig.data
    assert list(points.x) == pytest.approx([-93.0, -4.0, 0.1]) and list(points.y) == pytest.approx([13.0, 10.0, 3.0])
    assert list(points.text) == ["0", "0.5", "0.9"]
    assert star.name == "default replay 0.5" and list(star.x) == pytest.approx([-4.0])
    assert len(charts.replay_sweep_tradeoff([0.0, 0.9], [0.1, 0.0], [-0.5, 0.0], 0.5).data) == 1  # default not run


def test_a_hand_edited_sweep_is_named_not_a_traceback(trained_dir: Path) -> None:
    folder = trained_dir / "experiments"
    folder.mkdir()
    point = {f.name: 1 for f in dataclasses.fields(SweepPoint)}  # a complete point...
    result = {
        "format": "lora_core.sweep.v1",
        "kind": "sweep-rank",
        "task": {},
        "settings": {},
        "base": {},
    }  # ...no task
    result |= {"points": [point], "marked": 1, "reading": "x", "created": "now", "seconds": 1, "environment": {}}
    (folder / "sweep-rank-edited.json").write_text(json.dumps(result))
    at = visit(new_app(), "experiments")
    assert_clean(at)
    warnings = [str(w.value) for w in at.warning]
    assert any("sweep-rank-edited.json is not a readable sweep result: " in w for w in warnings), warnings


def test_a_sweep_of_several_methods_charts_each_and_names_them_in_the_table(trained_dir: Path) -> None:
    at = visit(new_app(), "experiments")
    sweep_settings(at, "invert", "rank", "1, 2")
    at.multiselect(key="sweep_methods").set_value(["lora", "vera"]).run()
    click(at, "Run the sweep")
    job = wait_for_job(at)
    assert job.kind == "sweep" and job.status == jobs.DONE, job.error
    assert_clean(at)
    result = load_sweep(list_sweeps(ArtifactStore(trained_dir))[0])
    assert result.methods == ["lora", "vera"] and result.values == [1, 2]
    chart = titled(at, "Each method across the rank sweep")
    lines = {trace["name"]: (trace["x"], trace["y"]) for trace in chart["data"]}
    for method, name in (("lora", "LoRA"), ("vera", "VeRA")):
        own = result.points_of(method)
        assert lines[name][0] == [p.trainable_params for p in own]
        assert lines[name][1] == pytest.approx([100 * p.task_accuracy for p in own])
    table = sweep_table(at)
    assert list(table["method"]) == ["LoRA", "VeRA", "LoRA", "VeRA"]
    assert result.reading in texts(at) and "VeRA: " in result.reading
