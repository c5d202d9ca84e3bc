"""Two adapters at once on the evaluation and draw pages, and the architecture diagram on home and parameters."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_clean, click, new_app, texts, visit
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import run_experiment
from lora_core.lab.tasks import parse_task
from lora_core.store.artifacts import ArtifactStore


@pytest.fixture(scope="module")
def two_adapter_artifacts(trained_artifacts: Path, small_mnist, tmp_path_factory) -> Path:
    """The small trained artifacts ('small', a digit adapter) plus a few-step rotate:45 LoRA adapter."""
    root = tmp_path_factory.mktemp("combine-page") / "artifacts"
    shutil.copytree(trained_artifacts, root)
    settings = ExperimentSettings(methods=("lora",), steps=30, batch_size=64, rank=2, seed=0, device="cpu")
    # the adapter is what matters here: its own figures are measured on the first 1,000 test images only
    data = dataclasses.replace(small_mnist, test_x=small_mnist.test_x[:1000], test_y=small_mnist.test_y[:1000])
    run_experiment(ArtifactStore(root), data, parse_task("rotate:45"), settings)
    return root


@pytest.fixture
def two_dir(two_adapter_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    shutil.copytree(two_adapter_artifacts, root)
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(root))
    return root


def _set(at, kind: str, key: str, value):  # noqa: ANN001, ANN202 - AppTest widgets
    widget = next(w for w in getattr(at, kind) if w.key == key)
    return widget.set_value(value).run()


def _table(at) -> dict[str, dict[str, str]]:  # noqa: ANN001 - AppTest
    frame = at.dataframe[-1].value
    return {row["model"]: row for row in frame.to_dict("records")}


def test_evaluation_page_combines_two_adapters(two_dir: Path) -> None:
    at = visit(new_app(), "evaluation")
    assert_clean(at)
    assert "Combine two adapters" in [h.value for h in at.header]
    _set(at, "toggle", "eval_combine_on", True)
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    rows = _table(at)
    base, first, second, combined = list(rows)
    assert {first, second} == {"small", "rotate-45"} and (base, combined) == ("base model", f"{first} ×1 + {second} ×1")
    rotated = next(column for column in rows[base] if "rotated 45 degrees" in column)
    assert rows[combined][rotated] != rows[first][rotated]
    assert "the combination reads" in texts(at)
    # weight 0 on the second: the combination is the first adapter alone, figure for figure
    _set(at, "slider", "eval_combine_w2", 0.0)
    rows = _table(at)
    scores = {model: [row[k] for k in row if k != "model"] for model, row in rows.items()}
    assert scores[f"{first} ×1 + {second} ×0"] == scores[first]


def _map_chart(at) -> tuple[str, pd.DataFrame] | None:  # noqa: ANN001 - AppTest
    """The weight maps' chart as drawn: its spec (as sent) and its rows (sent apart from it, as Arrow)."""
    charts = [c for c in at.get("vega_lite_chart") if "weight of" in c.proto.spec]
    assert len(charts) <= 1, "every map is in one chart"
    if not charts:
        return None
    return charts[0].proto.spec, convert_arrow_bytes_to_pandas_df(charts[0].proto.data.data)


def _map_spec(at, timeout: float = 240.0) -> tuple[str, pd.DataFrame]:  # noqa: ANN001 - AppTest
    """The weight maps' chart, once the map has been computed in the background (rerunning until then)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        chart = _map_chart(at)
        if chart is not None:
            return chart
        assert time.monotonic() < deadline, "the weight map never arrived"
        time.sleep(1.0)  # each rerun runs the whole page again
        at.run()


def _cells(rows: pd.DataFrame, title: str) -> dict[tuple[float, float], float]:
    squares = rows[(rows["map"] == title) & ~rows["ring"]]
    return {(w1, w2): accuracy for w1, w2, accuracy in zip(squares["w1"], squares["w2"], squares["accuracy"])}


def _rings(rows: pd.DataFrame) -> dict[str, tuple[float, float]]:
    return {title: (w1, w2) for title, w1, w2 in rows[rows["ring"]][["map", "w1", "w2"]].itertuples(index=False)}


def test_the_weight_map_shows_every_pair_with_the_chosen_one_ringed(
    two_dir: Path, small_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map, its figures against the library's, the sliders' pair ringed; and once it is there, a pair on its
    grid takes the map's figures: a click answers without a new pass over the test sets."""
    from dashboard import combination
    from lora_core.lab.combine import MAP_WEIGHTS, combination_map, score_columns, scoring_sets
    from lora_core.lab.study import load_base_for_lora

    at = visit(new_app(), "evaluation")
    _set(at, "toggle", "eval_combine_on", True)
    _set(at, "slider", "eval_combine_w1", 0.5)
    spec, rows = _map_spec(at)
    assert_clean(at)
    store = ArtifactStore(two_dir)
    base, model = load_base_for_lora(store, "cpu")
    first = at.selectbox(key="eval_combine_first").value
    second = at.selectbox(key="eval_combine_second").value
    for name in (first, second):
        store.load_adapter(model, name, base.fingerprint)
    from lora_core.evaluate import evaluate
    from lora_core.lab.combine import adapter_task

    tasks = [t for t in (adapter_task(model.adapter_meta(n)) for n in (first, second)) if t is not None]
    columns = score_columns(tasks, evaluate(base.model, small_mnist.test_x, small_mnist.test_y).weakest_digit)
    sets = scoring_sets(small_mnist, columns)
    # the two cells checked below, not the whole map again
    expected = combination_map(model, [first, second], columns, sets, small_mnist.test_y, weights=(0.0, 0.5, 1.25))
    # one map per column, in the columns' order, each with its ring on the sliders' pair, in one chart
    assert json.loads(spec)["facet"]["sort"] == [column.label for column in columns]
    assert _rings(rows) == {column.label: (0.5, 1.0) for column in columns}
    for column in columns:
        shown = _cells(rows, column.label)
        assert len(shown) == len(MAP_WEIGHTS) ** 2
        assert shown[(0.5, 1.25)] == pytest.approx(100 * expected.at(0.5, 1.25)[column.key])
        assert shown[(0.0, 0.0)] == pytest.approx(100 * expected.at(0.0, 0.0)[column.key])  # the base model

    shown = _cells(rows, columns[0].label)
    calls: list[object] = []
    scored = combination.score
    monkeypatch.setattr(combination, "score", lambda *args: calls.append(args) or scored(*args))
    _set(at, "slider", "eval_combine_w1", 1.5)
    row = _table(at)[f"{first} ×1.5 + {second} ×1"]
    assert calls == []
    # only the rings move, in every map; the spec stays as it was, so the browser redraws the chart in place
    moved_spec, moved = _map_chart(at)
    assert _rings(moved) == {column.label: (1.5, 1.0) for column in columns}
    assert moved_spec == spec and moved[~moved["ring"]].equals(rows[~rows["ring"]])
    plain = next(value for column, value in row.items() if column != "model" and "rotated" not in column)
    assert plain == f"{shown[(1.5, 1.0)]:.2f}%"
    _set(at, "slider", "eval_combine_w1", 1.4)  # off the grid: scored
    assert len(calls) == 1
    _set(at, "slider", "eval_combine_w1", 1.8)  # off the map: no ring, and the caption says why
    assert _rings(_map_chart(at)[1]) == {}
    assert "the chosen pair lies outside the map" in texts(at)


def test_a_square_clicked_on_the_map_sets_both_weights_once_and_again_after_the_sliders_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The map's selection (kept by the chart) sets the sliders at the click; afterwards they are the user's, and
    once they have moved, a click on the same square sets them again."""
    from dashboard import charts, combination

    state: dict[str, object] = {"eval_combine_w1": 1.0, "eval_combine_w2": 1.0}
    monkeypatch.setattr(combination.st, "session_state", state)

    def click(w1: float, w2: float) -> None:  # what the chart's selection puts in the session
        state[combination._map_key()] = {"selection": {charts.PICK: [{"w1": w1, "w2": w2}]}}

    def rerun() -> tuple[object, object]:  # what the section does around its sliders
        combination._apply_picked_weights()
        combination._forget_pick_once_moved((state["eval_combine_w1"], state["eval_combine_w2"]))
        return state["eval_combine_w1"], state["eval_combine_w2"]

    assert rerun() == (1.0, 1.0)  # nothing clicked yet
    click(0.5, 1.25)
    assert rerun() == (0.5, 1.25)
    assert rerun() == (0.5, 1.25)
    state["eval_combine_w1"] = 0.8  # the user moves a slider; the chart still holds the old click
    assert rerun() == (0.8, 1.25)
    assert combination._picked() is None  # the map starts again with nothing selected
    click(0.5, 1.25)
    assert rerun() == (0.5, 1.25)
    # a double-click clears the chart's selection (so does switching the section off and on): moving a slider and
    # clicking that square again still counts
    state[combination._map_key()] = {"selection": {charts.PICK: []}}
    assert rerun() == (0.5, 1.25)
    state["eval_combine_w2"] = 0.3
    assert rerun() == (0.5, 0.3)
    click(0.5, 1.25)
    assert rerun() == (0.5, 1.25)


def test_combining_needs_two_adapters(trained_dir: Path) -> None:
    at = visit(new_app(), "evaluation")
    _set(at, "toggle", "eval_combine_on", True)
    assert_clean(at)
    assert "Combining needs two saved adapters" in texts(at)


def test_draw_page_shows_the_combination_beside_each_adapter(two_dir: Path) -> None:
    at = visit(new_app(), "draw")
    click(at, "Random test digit")
    _set(at, "toggle", "draw_combine_on", True)
    _set(at, "selectbox", "draw_combine_first", "small")
    _set(at, "slider", "draw_combine_w2", 0.5)
    assert_clean(at)
    labels = [m.label for m in at.metric]
    assert {"small alone says", "rotate-45 alone says", "small ×1 + rotate-45 ×0.5 says"} <= set(labels), labels


def _dot(at) -> str:  # noqa: ANN001 - AppTest
    charts = at.get("graphviz_chart")
    assert charts, "no diagram on the page"
    return charts[0].proto.spec


def test_diagram_on_home_and_parameters_follows_the_adapter(two_dir: Path, small_sizes) -> None:
    at = new_app()
    at.session_state["home_network"] = True  # Home draws the picture once its expander is open
    at.run()
    assert_clean(at)
    home = _dot(at)
    h1 = small_sizes.hidden[0]
    assert f"W: {h1:,} × 784 = {h1 * 784:,}" in home
    visit(at, "parameters")
    _set(at, "selectbox", "params_adapter", "small")
    small = _dot(at)
    _set(at, "selectbox", "params_adapter", "rotate-45")
    rotate = _dot(at)
    assert "A: 4 × 784 = 3,136" in small  # rank 4 (the small fine-tune's)
    assert "A: 2 × 784 = 1,568" in rotate and "A: 4 × 784" not in rotate  # rank 2 (the experiment's)
    assert "Adapter rotate-45: rank 2" in rotate


def test_combination_bars_group_each_model_per_task() -> None:
    import altair as alt

    from dashboard import palette
    from dashboard.charts import combination_bars

    spec = combination_bars(
        ["plain", "rotate:45"],
        ["base model", "a", "b", "a ×1 + b ×1"],
        ["base", "alone", "alone", "combined"],
        [[0.97, 0.46], [0.97, 0.46], [0.59, 0.97], [0.58, 0.96]],
    )
    alt.LayerChart.from_dict(spec)  # a spec Vega-Lite draws
    bars = spec["layer"][0]["encoding"]
    assert bars["xOffset"]["sort"] == ["base model", "a alone", "b alone", "a ×1 + b ×1"]
    colors = bars["color"]["scale"]["range"]
    assert colors[0] == palette.FROZEN and colors[3] == palette.ADAPTED and colors[1] != colors[2]
    b_alone = [r for r in spec["data"]["values"] if r["series"] == "b alone"]
    assert [(r["task"], r["accuracy"]) for r in b_alone] == [("plain", 59.0), ("rotate:45", 97.0)]
