"""The chart builders are plain functions: they run without Streamlit and draw what they are given."""

from __future__ import annotations

import altair as alt
import numpy as np
import pytest

from dashboard import charts, palette


def _bar_rows(spec: dict) -> dict[str, list[float]]:
    """A bar chart's values per series, in its order (checked against Vega-Lite's schema first)."""
    alt.LayerChart.from_dict(spec)  # raises on a spec Vega-Lite would not draw
    bars = spec["layer"][-2]
    assert bars["mark"]["type"] == "bar"
    order = bars["encoding"]["xOffset"]["sort"]
    return {name: [r["accuracy"] for r in spec["data"]["values"] if r["series"] == name] for name in order}


def test_per_digit_bars_groups_before_and_after_and_marks_the_target() -> None:
    before = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90]
    after = [v + 0.005 for v in before]
    spec = charts.per_digit_bars(before, after, targets=[9], labels=("Base", "Adapted"))
    bars = _bar_rows(spec)
    assert list(bars) == ["Base", "Adapted"]
    assert bars["Base"][9] == 90.0 and abs(bars["Adapted"][9] - 90.5) < 1e-9
    color = spec["layer"][-2]["encoding"]["color"]["scale"]
    assert color == {"domain": ["Base", "Adapted"], "range": [palette.FROZEN, palette.ADAPTED]}
    assert [r["digit"] for r in spec["data"]["values"] if r["target"]] == [9]  # one band and one label per target
    band, label = spec["layer"][:2]
    assert band["mark"]["type"] == "rect" and band["transform"] == [{"filter": "datum.target"}]
    assert label["mark"]["type"] == "text" and "'target '" in label["transform"][1]["calculate"]
    # the axis starts at a multiple of 5 at least 3 points below the lowest bar (90 %): it holds while bars move
    assert spec["layer"][-2]["encoding"]["y"]["scale"]["domain"] == [85.0, 100.5]


def test_per_digit_bars_with_the_base_only() -> None:
    spec = charts.per_digit_bars([0.5] * 10)
    assert list(_bar_rows(spec)) == ["Base model"] and len(spec["layer"]) == 2  # bars and their values, no band


def test_confusion_heatmaps_show_counts_and_signed_differences() -> None:
    m = np.eye(10, dtype=int) * 1000
    m[9, 4] = 7
    fig = charts.confusion_heatmap(m.tolist(), "Base")
    assert fig.data[0].type == "heatmap"
    assert fig.data[0].text[9][4] == "7" and fig.data[0].text[0][0] == "1000"
    diff = np.zeros((10, 10), dtype=int)
    diff[9, 4] = -5
    diff[9, 9] = 5
    fig = charts.confusion_heatmap(diff.tolist(), "Difference", difference=True)
    heat = fig.data[0]
    assert heat.text[9][4] == "-5" and heat.text[9][9] == "+5" and heat.text[0][0] == "0"
    assert heat.zmin == -5 and heat.zmax == 5
    # fixing 5 images (9 read as 4 five times fewer, 9 right five times more) colours both cells "better",
    # a new mistake and a lost right answer both "worse": the colour never flips meaning on the diagonal
    diff[2, 7], diff[2, 2] = 3, -3
    heat = charts.confusion_heatmap(diff.tolist(), "Difference", difference=True).data[0]
    assert heat.z[9][4] == heat.z[9][9] == 5 and heat.z[2][7] == heat.z[2][2] == -3
    assert heat.customdata[9][4] == heat.customdata[9][9] == "better"
    assert heat.customdata[2][7] == heat.customdata[2][2] == "worse" and heat.customdata[0][0] == "no change"
    assert heat.colorscale[-1][1] == "#0072b2" and heat.colorscale[0][1] == "#d55e00"  # better is blue


def test_loss_curve_splits_phases() -> None:
    fig = charts.loss_curve([2.0, 1.0, 0.5, 0.4, 0.3], ["train", "train", "train", "finetune", "finetune"])
    assert [t.name for t in fig.data] == ["train", "finetune"]
    assert list(fig.data[1].x) == [4, 5] and list(fig.data[1].y) == [0.4, 0.3]
    assert fig.data[0].line.color == palette.FROZEN and fig.data[1].line.color == palette.ADAPTER
    other = charts.loss_curve([1.0, 0.5], ["rank 8, seed 0", "rank 8, seed 0"])
    assert other.data[0].line.color is None and list(other.layout.colorway) == list(palette.COLORWAY)
    assert len(charts.loss_curve([1.0, 0.5]).data) == 1
    assert len(charts.loss_curve([]).data) == 0


def test_a_long_live_loss_curve_is_drawn_as_bucket_means() -> None:
    losses = [float(i) for i in range(1, 1001)] + [5.0] * 10
    phases = ["train"] * 1000 + ["finetune"] * 10
    fig = charts.loss_curve(losses, phases, max_points=300)
    train, finetune = fig.data
    assert len(train.x) <= 300 and train.x[-1] == 1000  # the last step is always drawn
    size = train.x[0]  # steps 1..size form the first bucket
    assert train.y[0] == sum(range(1, size + 1)) / size
    assert abs(sum(train.y[:-1]) * size + train.y[-1] * (1000 - size * (len(train.x) - 1)) - sum(losses[:1000])) < 1e-6
    assert list(finetune.x) == list(range(1001, 1011))  # short phases keep every step
    assert charts.loss_curve(losses, phases).data[0].x[-1] == 1000
    assert len(charts.loss_curve(losses, phases).data[0].x) == 1000


def test_probability_bars_draw_the_top_prediction_solid_in_the_models_colour() -> None:
    probs = np.full(10, 0.02)
    probs[7] = 0.82
    fig = charts.probability_bars(probs, "Base")
    colors = list(fig.data[0].marker.color)
    assert colors[7] == palette.FROZEN and colors.count(palette.FROZEN) == 1  # the base model's colour, solid
    assert set(colors[:7] + colors[8:]) == {palette.light(palette.FROZEN)}
    assert fig.data[0].text[7] == "82%"


def test_singular_values_and_update_heatmap() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 100))
    delta = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 100))
    sv_w, sv_u = np.linalg.svd(w, compute_uv=False), np.linalg.svd(delta, compute_uv=False)
    fig = charts.singular_values(sv_u, sv_w, rank=4)
    assert len(fig.data) == 2 and fig.layout.yaxis.type == "log"
    assert len(fig.data[0].y) == 100 and len(fig.data[1].y) == 4
    assert fig.data[0].line.color == palette.FROZEN and fig.data[1].line.color == palette.ADAPTER
    assert fig.layout.xaxis.dtick == 1 and fig.layout.yaxis.dtick == 1  # labels at powers of ten only
    fig = charts.update_heatmap(np.zeros((1000, 784)))
    z = np.asarray(fig.data[0].z)
    assert z.shape[0] <= charts.HEATMAP_MAX_CELLS and z.shape[1] <= charts.HEATMAP_MAX_CELLS
    assert "averaged" in fig.layout.title.text


def test_downsample_averages_blocks_exactly() -> None:
    m = np.arange(16, dtype=float).reshape(4, 4)
    small, by, bx = charts.downsample(m, max_cells=2)
    assert (by, bx) == (2, 2)
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    same, by, bx = charts.downsample(m, max_cells=4)
    assert (by, bx) == (1, 1) and np.array_equal(same, m)
    odd, _, _ = charts.downsample(np.ones((5, 3)), max_cells=2)
    assert odd.shape == (2, 2) and np.allclose(odd, 1.0)


def test_digit_image_enlarges_with_hard_edges() -> None:
    pixels = np.zeros((28, 28))
    pixels[0, 0] = 1.0
    img = charts.digit_image(pixels, scale=4)
    assert img.shape == (112, 112) and img.dtype == np.uint8
    assert img[:4, :4].min() == 255 and img[4:, :].max() == 0


def test_charts_module_does_not_import_streamlit() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(charts.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(str(n).startswith("streamlit") for n in names)


def test_digit_grid_tiles_rows_of_digits_with_gaps() -> None:
    top = np.zeros((3, 28, 28))
    bottom = np.ones((3, 28, 28))
    img = charts.digit_grid([top, bottom], scale=2, gap=1)
    assert img.dtype == np.uint8 and img.shape == (2 * 56 + 1, 3 * 56 + 2)
    assert img[0, 0] == 0 and img[-1, -1] == 255  # originals black, transformed white
    assert img[56, 0] == round(0.35 * 255)  # the gap between the rows
    with pytest.raises(ValueError, match="same"):
        charts.digit_grid([top, bottom[:2]])


def test_method_accuracy_bars_group_task_and_plain_accuracy_per_method() -> None:
    fig = charts.method_accuracy_bars(["base", "lora", "full"], [0.468, 0.971, 0.977], [0.976, 0.95, 0.53])
    assert [t.type for t in fig.data] == ["bar", "bar"] and fig.layout.barmode == "group"
    assert list(fig.data[0].x) == ["base model", "LoRA", "full fine-tuning"]
    assert abs(fig.data[0].y[1] - 97.1) < 1e-9 and abs(fig.data[1].y[2] - 53.0) < 1e-9
    assert fig.layout.yaxis.range[0] == 0.468 * 100 - 5


def test_learned_vs_forgot_puts_one_point_per_method_and_the_base() -> None:
    fig = charts.learned_vs_forgot(
        ["lora", "full"], [0.97, 0.98], [0.96, 0.53], base=(0.47, 0.976), base_label="base = LoRA off"
    )
    assert [t.name for t in fig.data] == ["base = LoRA off", "LoRA", "full fine-tuning"]
    full = fig.data[2]
    assert abs(full.x[0] - 53.0) < 1e-9 and abs(full.y[0] - 98.0) < 1e-9  # x: kept, y: learned


def test_weight_maps_one_per_task_with_a_pickable_square_per_pair_and_the_current_pair_ringed() -> None:
    weights = [0.0, 0.25, 0.5]
    grid = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]  # grid[i][j] at w1 = weights[j], w2 = weights[i]
    spec = charts.weight_maps(weights, [("plain", grid), ("task", grid)], (0.4, 0.25), ("a", "b"))
    alt.FacetChart.from_dict(spec)  # raises on a spec Vega-Lite would not draw
    rows = spec["data"]["values"]
    cells = {(r["map"], r["w1"], r["w2"]): r["accuracy"] for r in rows if not r["ring"]}
    assert len(cells) == 2 * 9 and cells[("task", 0.5, 0.0)] == pytest.approx(30.0)  # w1 = 0.5, w2 = 0
    # the current pair is ringed in every map, between squares too
    assert [(r["map"], r["w1"], r["w2"]) for r in rows if r["ring"]] == [("plain", 0.4, 0.25), ("task", 0.4, 0.25)]
    squares = spec["spec"]["layer"][0]
    assert squares["params"] == [
        {"name": charts.PICK, "select": {"type": "point", "fields": ["w1", "w2"], "on": "click", "toggle": False}}
    ]
    # the pair moves the data only: the rest of the spec is the same for any pair and any numbers
    other = charts.weight_maps(weights, [("plain", grid[::-1]), ("task", grid)], None, ("a", "b"))
    assert {k: v for k, v in other.items() if k != "data"} == {k: v for k, v in spec.items() if k != "data"}
    assert not [r for r in other["data"]["values"] if r["ring"]]  # no pair given (one off the map): no ring
