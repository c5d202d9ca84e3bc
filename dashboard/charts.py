"""Chart builders for the dashboard: small pure functions, no Streamlit, callable from tests.

Every builder takes plain numbers (lists or arrays computed by lora_core) and returns a chart. The sentences that
read these charts are written by lora_core.lab.readings, from the same numbers.

The accuracy bars (per digit, per task) and the weight maps are Vega-Lite specs, drawn by st.vega_lite_chart: they
open pages or follow a control, Vega-Lite's script loads in a fraction of Plotly's time in a fresh tab (Home draws
no other chart), and a drawn Vega-Lite chart whose spec is unchanged takes new numbers in place (the weight maps'
spec never depends on the chosen pair), where Streamlit mounts a Plotly chart anew whenever its figure changes.
Everything else is a Plotly go.Figure, drawn by st.plotly_chart: the curves, heat maps and scatter plots a reader
zooms and hovers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import plotly.graph_objects as go

from dashboard import palette
from lora_core.lab.readings import METHOD_NAMES
from lora_core.numbers import digits_named

DIGITS = list(range(10))
OUTLINE = {"width": 1, "color": palette.MARK}  # around a highlighted marker, which is light
HEATMAP_MAX_CELLS = 200  # per side: bigger matrices are block-averaged before drawing
VegaLiteSpec = dict[str, Any]  # drawn by st.vega_lite_chart


def _fixed_margins(fig: go.Figure, left: int, right: int, top: int, bottom: int) -> go.Figure:
    """Margins that already hold the chart's titles, legend and colour bar, and are not grown to fit them: growing
    draws the chart a second time, which doubles its drawing time in the browser (charts that follow a control)."""
    fig.update_layout(margin={"l": left, "r": right, "t": top, "b": bottom, "autoexpand": False})
    return fig


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        colorway=list(palette.COLORWAY),
        margin={"l": 50, "r": 20, "t": 50, "b": 45},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
    )
    return fig


def _grouped_bars(
    rows: Sequence[dict[str, Any]],
    x: dict[str, Any],
    series: Sequence[str],
    colors: Sequence[str],
    y_range: tuple[float, float],
    title: str,
    behind: Sequence[dict[str, Any]] = (),
    height: int = 380,
) -> VegaLiteSpec:
    """Bars of `rows` (fields: x's field, "series", "accuracy" in percent) grouped by x, one bar per series in the
    given order and colours, each with its value on top; `behind` are layers drawn under the bars; `height` is the
    whole chart's, title and legend included.

    A plain Vega-Lite spec, data inline: building it takes well under a millisecond (an Altair chart takes tens, its
    schema checked on every rerun), and tests check it against Vega-Lite's schema."""
    order = list(series)
    encoding = {
        "x": x,
        "xOffset": {"field": "series", "type": "nominal", "sort": order},
        "y": {"field": "accuracy", "type": "quantitative", "title": "accuracy (%)", "scale": {"domain": list(y_range)}},
        "color": {
            "field": "series",
            "type": "nominal",
            "sort": order,
            "scale": {"domain": order, "range": list(colors)},
            "legend": {"title": None, "orient": "top", "labelLimit": 400},
        },
        "tooltip": [
            {"field": "series", "type": "nominal", "title": "model"},
            {"field": x["field"], "type": x["type"], "title": x.get("title") or x["field"]},
            {"field": "accuracy", "type": "quantitative", "title": "accuracy (%)", "format": ".2f"},
        ],
    }
    # the axis may start above 0: a bar is cut at the axis, not drawn below it
    bars = {"mark": {"type": "bar", "clip": True}, "encoding": encoding}
    values = {
        "mark": {"type": "text", "baseline": "bottom", "dy": -2, "fontSize": 10, "color": palette.OVERALL},
        "encoding": {**encoding, "text": {"field": "accuracy", "type": "quantitative", "format": ".1f"}, "color": None},
    }
    values["encoding"] = {k: v for k, v in values["encoding"].items() if v is not None}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "title": {"text": title, "anchor": "start"},
        "height": height,
        "data": {"values": list(rows)},
        "layer": [*behind, bars, values],
    }


def per_digit_bars(
    before: Sequence[float],
    after: Sequence[float] | None = None,
    targets: Sequence[int] = (),
    labels: tuple[str, str] = ("Base model", "With adapter"),
    title: str = "Per-digit test accuracy",
) -> VegaLiteSpec:
    """Grouped bars of per-digit accuracy (fractions 0..1) before and after; target digits marked."""
    shown = [(labels[0], before, palette.FROZEN)]
    if after is not None:
        shown.append((labels[1], after, palette.ADAPTED))
    first = labels[0]
    rows = [
        {"digit": d, "series": name, "accuracy": 100 * float(v), "target": name == first and d in targets}
        for name, values, _ in shown
        for d, v in enumerate(values)
    ]
    # the axis starts 3 points below the lowest bar, at a multiple of 5: it stays put while a control moves the bars
    low = max(0.0, 5 * np.floor((min((r["accuracy"] for r in rows), default=100.0) - 3.0) / 5))
    x = {"field": "digit", "type": "ordinal", "title": "digit", "axis": {"labelAngle": 0}, "scale": {"domain": DIGITS}}
    marked = {"filter": "datum.target"}  # one row per target digit
    behind = [
        {
            "transform": [marked],
            "mark": {"type": "rect", "color": palette.HIGHLIGHT, "opacity": 0.3},
            "encoding": {"x": x},
        },
        {  # above the plot area (y = 0 px is its top edge), under the legend
            "transform": [marked, {"calculate": "'target ' + datum.digit", "as": "label"}],
            "mark": {"type": "text", "baseline": "bottom", "dy": -4},
            "encoding": {"x": x, "y": {"value": 0}, "text": {"field": "label", "type": "nominal"}},
        },
    ]
    names, colors = [n for n, _, _ in shown], [c for _, _, c in shown]
    return _grouped_bars(rows, x, names, colors, (float(low), 100.5), title, behind if targets else ())


def _control_curve(
    xs: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float], str]],
    current: float,
    mark: str,
    x_title: str,
    title: str,
) -> go.Figure:
    """Accuracy (fractions 0..1) against a control's values, one line per (name, values, colour), with the
    control's current value marked (the first shape) as `mark`."""
    fig = go.Figure()
    for name, values, color in lines:
        fig.add_scatter(x=list(xs), y=[100 * v for v in values], name=name, mode="lines+markers", line_color=color)
    fig.add_vline(x=current, line_dash="dot", line_color=palette.MARK, annotation_text=mark)
    fig.update_xaxes(title_text=x_title, tickvals=list(xs))
    fig.update_yaxes(title_text="accuracy (%)")
    _layout(fig, title, height=380)
    # below the axis: three names side by side would run into the title in a half-width column
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.3, "xanchor": "left", "x": 0.0})
    return _fixed_margins(fig, left=60, right=20, top=60, bottom=130)  # bottom: the axis title, two rows of legend


def strength_curve(
    strengths: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float], str]],
    current: float,
    title: str = "Accuracy against the adapter's strength",
    zero: str = "base model",
) -> go.Figure:
    """Accuracy against the adapter's strength, with the current strength marked; 0 is `zero` (the base model, or
    a QLoRA adapter's NF4 base), 1 the adapter as trained."""
    x_title = f"strength (0 = {zero}, 1 = the adapter as trained)"
    fig = _control_curve(strengths, lines, current, f"strength {current:g}", x_title, title)
    fig.add_vline(x=1.0, line_width=1, line_color=palette.GUIDE)  # the adapter as trained
    return fig


class AdapterCurve(Protocol):
    """A curve of evaluations of one adapter along a control (lora_core.lab.strength, .truncation)."""

    def overall(self) -> list[float]: ...
    def accuracy_on(self, digits: Sequence[int]) -> list[float]: ...


def accuracy_lines(
    plain: AdapterCurve, on_task: AdapterCurve | None, targets: Sequence[int]
) -> tuple[list[tuple[str, list[float], str]], str]:
    """The lines a curve chart draws, as (name, accuracy at each point, colour), and what they were measured on: a
    domain task's adapter on its task's test set and on plain MNIST; a digit adapter on its target digits, the
    other digits and all of them."""
    if on_task is not None:
        lines = [
            ("on the task's test set", on_task.overall(), palette.ADAPTED),
            ("on plain MNIST", plain.overall(), palette.ELSEWHERE),
        ]
        return lines, "the task's own test set and the 10,000 plain MNIST test images"
    lines = [("all digits", plain.overall(), palette.OVERALL)]
    if targets:
        others = [d for d in DIGITS if d not in targets]
        named = f"target {digits_named(targets)}"
        lines = [
            (named, plain.accuracy_on(targets), palette.ADAPTED),
            ("the other digits", plain.accuracy_on(others), palette.ELSEWHERE),
            *lines,
        ]
    return lines, "the 10,000 MNIST test images"


def truncation_curve(
    ranks: Sequence[int],
    lines: Sequence[tuple[str, Sequence[float], str]],
    current: int,
    title: str = "Accuracy against the directions kept",
) -> go.Figure:
    """Accuracy against k, the top singular directions kept of each layer's update, with the current k marked;
    the last k is the whole update."""
    x_title = "directions kept per layer (k; the last is the whole update)"
    return _control_curve(ranks, lines, current, f"k = {current}", x_title, title)


def nf4_levels(
    edges: Sequence[float], counts: Sequence[int], levels: Sequence[float], shares: Sequence[float]
) -> go.Figure:
    """A histogram of W's block-normalised values with NF4's 16 levels drawn over it, each labelled with the share
    of weights rounded to it."""
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure()
    fig.add_bar(x=centres, y=list(counts), width=edges[1] - edges[0], marker_color=palette.FROZEN, name="weights of W")
    for i, (level, share) in enumerate(zip(levels, shares)):
        fig.add_vline(
            x=level,
            line={"color": palette.ADAPTED, "width": 1.5},
            annotation_text=f"{100 * share:.0f}%",
            annotation_position="top" if i % 2 else "bottom",
        )
    fig.add_scatter(x=[None], y=[None], mode="lines", line={"color": palette.ADAPTED}, name="NF4's 16 levels")
    fig.update_xaxes(title="w / absmax of its block", range=[-1.05, 1.05])
    fig.update_yaxes(title="weights")
    return _layout(fig, "W against NF4's levels (labels: the share of weights at each)", height=380)


def confusion_heatmap(matrix: Sequence[Sequence[int]], title: str, difference: bool = False) -> go.Figure:
    """confusion[true][predicted] as a heatmap. With `difference` (adapter − base counts) each cell is coloured
    by whether the change is for the better, not by its sign: on the diagonal more is better (more images
    right), off it more is worse (more of that mistake); the cell's text is the signed change itself."""
    z = np.asarray(matrix, dtype=float)
    text = [[f"{int(v):+d}" if difference and v else f"{int(v)}" for v in row] for row in z]
    if difference:
        better = np.where(np.eye(len(z), dtype=bool), z, -z)
        verdict = [["better" if b > 0 else "worse" if b < 0 else "no change" for b in row] for row in better]
        bound = max(1.0, float(np.abs(better).max()))
        heat = go.Heatmap(
            z=better,
            x=DIGITS,
            y=DIGITS,
            colorscale=palette.BETTER_WORSE_SCALE,
            zmin=-bound,
            zmax=bound,
            zmid=0.0,
            customdata=verdict,
            colorbar={"tickvals": [-bound, 0, bound], "ticktext": ["worse", "no change", "better"]},
            hovertemplate="true %{y}, predicted %{x}: %{text} (%{customdata})<extra></extra>",
        )
    else:
        # log-like scale so the few errors off the diagonal are visible next to ~1,000 correct ones
        heat = go.Heatmap(
            z=np.log10(1.0 + z),
            x=DIGITS,
            y=DIGITS,
            colorscale="Blues",
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    heat.update(text=text, texttemplate="%{text}")
    fig = go.Figure(heat)
    fig.update_xaxes(title_text="predicted", tickvals=DIGITS, side="bottom")
    fig.update_yaxes(title_text="true digit", tickvals=DIGITS, autorange="reversed")
    return _layout(fig, title, height=420)


def loss_curve(
    losses: Sequence[float],
    phases: Sequence[str] | None = None,
    title: str = "Training loss",
    max_points: int | None = None,
) -> go.Figure:
    """Loss per optimisation step; one line per phase (train, finetune) when phases are given.

    With `max_points`, a phase with more steps is drawn as the means of consecutive equal buckets of
    steps (at each bucket's last step): the curve keeps its shape while the chart stays small enough
    to redraw live without taking CPU from the training it shows.
    """
    fig = go.Figure()
    phases = list(phases) if phases is not None else ["loss"] * len(losses)
    order: list[str] = []
    for p in phases:
        if p not in order:
            order.append(p)
    values = np.asarray(losses, dtype=float)
    for phase in order:
        steps = np.flatnonzero(np.asarray(phases) == phase) + 1
        ys = values[steps - 1]
        if max_points is not None and steps.size > max_points:
            size = -(-steps.size // max_points)  # ceil: at most max_points buckets
            ends = np.arange(size, steps.size + size, size).clip(max=steps.size)
            starts = ends - size
            sums = np.concatenate(([0.0], np.cumsum(ys)))
            ys = (sums[ends] - sums[starts.clip(min=0)]) / (ends - starts.clip(min=0))
            steps = steps[ends - 1]
        line = {"width": 1.5, "color": palette.PHASE.get(phase)}
        fig.add_scatter(x=steps.tolist(), y=ys.tolist(), mode="lines", name=phase, line=line)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="cross-entropy loss", rangemode="tozero")
    return _layout(fig, title, height=300)


def probability_bars(probabilities: Sequence[float], title: str, color: str = palette.FROZEN) -> go.Figure:
    """Ten class probabilities as bars in the model's colour: the top prediction solid, the others light."""
    probs = [float(p) for p in probabilities]
    top = int(np.argmax(probs)) if probs else -1
    colors = [color if d == top else palette.light(color) for d in range(len(probs))]
    fig = go.Figure(go.Bar(x=DIGITS[: len(probs)], y=probs, marker_color=colors, text=[f"{p:.0%}" for p in probs]))
    fig.update_traces(textposition="outside", cliponaxis=False)
    fig.update_xaxes(title_text="digit", tickvals=DIGITS)
    fig.update_yaxes(title_text="probability", range=[0, 1.08])
    return _layout(fig, title, height=300)


def singular_values(update_sv: Sequence[float], weight_sv: Sequence[float], rank: int | None = None) -> go.Figure:
    """Singular values of the update scale*B*A beside those of W (log y): the update is low-rank.

    With `rank`, only the update's first `rank` values are drawn: the rest are round-off (about 1e-8).
    """
    fig = go.Figure()
    w = np.asarray(weight_sv, dtype=float)
    u = np.asarray(update_sv, dtype=float)
    if rank:
        u = u[:rank]
    fig.add_scatter(
        x=np.arange(1, w.size + 1), y=w, mode="lines", name="W (frozen base weight)", line_color=palette.FROZEN
    )
    fig.add_scatter(
        x=np.arange(1, u.size + 1), y=u, mode="lines+markers", name="update scale·B·A", line_color=palette.ADAPTER
    )
    if rank:
        fig.add_vline(x=rank, line_dash="dot", annotation_text=f"r = {rank}")
    positive = np.concatenate([w[w > 0], u[u > 0]])
    low = float(positive.min()) if positive.size else 1e-12
    high = float(positive.max()) if positive.size else 1.0
    # a label at each power of ten only: Plotly's default also labels 2 and 5 within each decade, which reads as
    # "5, 2, 1, 5, 2, 0.1" on a narrow chart
    fig.update_xaxes(
        title_text="index (largest first)", type="log", range=[0, np.log10(max(2, w.size, u.size))], dtick=1
    )
    fig.update_yaxes(
        title_text="singular value", type="log", range=[np.log10(low) - 0.2, np.log10(high) + 0.2], dtick=1
    )
    return _layout(fig, "Singular values: update vs W", height=340)


def downsample(matrix: np.ndarray, max_cells: int = HEATMAP_MAX_CELLS) -> tuple[np.ndarray, int, int]:
    """Block-average a 2-D array so neither side exceeds max_cells; returns it and the block sizes."""
    m = np.asarray(matrix, dtype=float)
    rows, cols = m.shape
    by = int(np.ceil(rows / max_cells)) or 1
    bx = int(np.ceil(cols / max_cells)) or 1
    if by == 1 and bx == 1:
        return m, 1, 1
    pad_r, pad_c = (-rows) % by, (-cols) % bx
    padded = np.pad(m, ((0, pad_r), (0, pad_c)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // by, by, padded.shape[1] // bx, bx)
    return np.nanmean(blocks, axis=(1, 3)), by, bx


def update_heatmap(delta: np.ndarray, title: str = "Update scale·B·A") -> go.Figure:
    """Heatmap of a weight update (out x in), diverging around 0; large matrices are block-averaged."""
    small, by, bx = downsample(np.asarray(delta, dtype=float))
    bound = float(np.nanmax(np.abs(small))) if small.size else 1.0
    bound = bound or 1.0
    x = np.arange(small.shape[1]) * bx
    y = np.arange(small.shape[0]) * by
    fig = go.Figure(go.Heatmap(z=small, x=x, y=y, colorscale="RdBu_r", zmin=-bound, zmax=bound, zmid=0.0))
    note = f" (blocks of {by}x{bx} averaged)" if by * bx > 1 else ""
    fig.update_xaxes(title_text="input unit")
    fig.update_yaxes(title_text="output unit", autorange="reversed")
    return _layout(fig, title + note, height=420)


def digit_image(pixels: np.ndarray, scale: int = 6) -> np.ndarray:
    """A 28x28 array in 0..1 enlarged with hard pixel edges, as uint8 for st.image."""
    p = np.clip(np.asarray(pixels, dtype=float), 0.0, 1.0)
    big = np.kron(p, np.ones((scale, scale)))
    return (big * 255).round().astype(np.uint8)


# --- experiments: methods side by side (METHOD_NAMES: the names the readings use too) ------------------


def digit_grid(rows: Sequence[np.ndarray], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Rows of 28x28 digits in 0..1 (each row an (N, 28, 28) array, all N equal) tiled into one uint8
    image with `gap` grey pixels between digits, for st.image: e.g. originals above, transformed below."""
    arrays = [np.clip(np.asarray(r, dtype=float), 0.0, 1.0) for r in rows]
    if not arrays or any(a.ndim != 3 or a.shape[1:] != (28, 28) for a in arrays):
        raise ValueError("digit_grid needs rows of (N, 28, 28) arrays")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays) or n == 0:
        raise ValueError("every row of digit_grid needs the same, non-zero number of digits")
    cell = 28 * scale
    out = np.full((len(arrays) * (cell + gap) - gap, n * (cell + gap) - gap), 0.35)
    for i, row in enumerate(arrays):
        for j, digit in enumerate(row):
            y, x = i * (cell + gap), j * (cell + gap)
            out[y : y + cell, x : x + cell] = np.kron(digit, np.ones((scale, scale)))
    return (out * 255).round().astype(np.uint8)


def method_accuracy_bars(
    methods: Sequence[str],
    task_accuracy: Sequence[float],
    plain_accuracy: Sequence[float],
    task_label: str = "task test set",
    plain_label: str = "plain MNIST",
    title: str = "Accuracy per method",
) -> go.Figure:
    """Grouped bars per method (fractions 0..1): accuracy on the task and on plain MNIST with the method
    applied. `methods` are keys of METHOD_NAMES ("base" first for the reference) or any label."""
    names = [METHOD_NAMES.get(m, m) for m in methods]
    fig = go.Figure()
    for label, values, color in (
        (task_label, task_accuracy, palette.ADAPTED),
        (plain_label, plain_accuracy, palette.ELSEWHERE),
    ):
        fig.add_bar(
            x=names,
            y=[100 * v for v in values],
            name=label,
            marker_color=color,
            text=[f"{100 * v:.1f}" for v in values],
        )
    values = [*task_accuracy, *plain_accuracy]
    low = max(0.0, min(100 * v for v in values) - 5.0) if values else 0.0
    fig.update_traces(textposition="outside", cliponaxis=False)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="accuracy (%)", range=[low, 101])
    return _layout(fig, title)


def accuracy_vs_parameters(
    methods: Sequence[str],
    trainable: Sequence[int],
    accuracy: Sequence[float],
    front: Sequence[str],
    accuracy_label: str = "accuracy on the task's test set (%)",
    title: str = "Accuracy against what each method trains",
) -> go.Figure:
    """One point per method at (trainable parameters, log scale; accuracy), in the method's colour, and the
    Pareto front (`front`, fewest parameters first) joined by a dotted line."""
    fig = go.Figure()
    at = dict(zip(methods, zip(trainable, accuracy)))
    fig.add_scatter(
        x=[at[m][0] for m in front],
        y=[100 * at[m][1] for m in front],
        mode="lines",
        line={"dash": "dot", "color": palette.GUIDE},
        name="Pareto front",
        hoverinfo="skip",
    )
    for method, params, acc in zip(methods, trainable, accuracy):
        fig.add_scatter(
            x=[params],
            y=[100 * acc],
            mode="markers+text",
            text=[METHOD_NAMES.get(method, method)],
            textposition="top center",
            marker={"color": palette.METHOD.get(method, palette.MARK), "size": 13},
            name=METHOD_NAMES.get(method, method),
            hovertemplate=f"{METHOD_NAMES.get(method, method)}: %{{x:,}} trainable, %{{y:.2f}}%<extra></extra>",
        )
    fig.update_xaxes(title_text="trainable parameters (log scale)", type="log", dtick=1)
    fig.update_yaxes(title_text=accuracy_label)
    _layout(fig, title, height=380)
    fig.update_layout(showlegend=False)
    return fig


def learned_vs_forgot(
    methods: Sequence[str],
    task_accuracy: Sequence[float],
    kept_accuracy: Sequence[float],
    base: tuple[float, float] | None = None,
    kept_label: str = "plain MNIST accuracy with the method applied (%)",
    title: str = "Learned vs forgot",
    base_label: str = METHOD_NAMES["base"],
) -> go.Figure:
    """One point per method: what it learned (task accuracy, y) against what it kept of the original task
    (x; further left = forgot more). `base` = (task, kept) of the base model, drawn as a reference and
    named `base_label`. Points are named in the legend (below the chart): close points would hide labels."""
    fig = go.Figure()
    if base is not None:
        fig.add_scatter(
            x=[100 * base[1]],
            y=[100 * base[0]],
            mode="markers",
            name=base_label,
            marker={"color": palette.FROZEN, "size": 13, "symbol": "x"},
        )
    for method, task, kept in zip(methods, task_accuracy, kept_accuracy, strict=True):
        fig.add_scatter(
            x=[100 * kept],
            y=[100 * task],
            mode="markers",
            name=METHOD_NAMES.get(method, method),
            marker={
                "color": palette.METHOD.get(method, palette.HIGHLIGHT),
                "size": 14,
                "line": {"width": 1, "color": "white"},
            },
        )
    fig.update_traces(hovertemplate="%{fullData.name}: learned %{y:.2f}%, kept %{x:.2f}%<extra></extra>")
    fig.update_xaxes(title_text=kept_label)
    fig.update_yaxes(title_text="task accuracy (%): learned")
    _layout(fig, title, height=400)
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.3, "xanchor": "left", "x": 0.0})
    fig.update_layout(margin={"b": 120})
    return fig


# --- insight: the LoRA paper's analysis and the memory of training ------------------------------------
MEMORY_PARTS = (
    ("weights_bytes", "weights", palette.MEMORY["weights"]),
    ("gradient_bytes", "gradients", palette.MEMORY["gradients"]),
    ("adam_bytes", "Adam states", palette.MEMORY["adam"]),
    ("activation_bytes", "activations saved for backward", palette.MEMORY["activations"]),
)


def subspace_heatmap(phi: Sequence[Sequence[float]], title: str, names: tuple[str, str]) -> go.Figure:
    """The paper's figure 3: phi(A1, A2, i, j) for i (rows, top down) and j (columns), from 0 to 1."""
    z = np.asarray(phi, dtype=float)
    rows, cols = z.shape if z.ndim == 2 else (0, 0)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=np.arange(1, cols + 1),
            y=np.arange(1, rows + 1),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": "φ"}},
            hovertemplate="i=%{y}, j=%{x}: φ=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=f"j (top directions of {names[1]})")
    fig.update_yaxes(title_text=f"i ({names[0]})", autorange="reversed")
    return _layout(fig, title, height=max(260, 80 + 22 * rows))


def direction_images(images: Sequence[Sequence[Sequence[float]]], singular_values: Sequence[float]) -> go.Figure:
    """linear1's top input directions as 28x28 pictures, diverging around 0 (red positive, blue negative)."""
    from plotly.subplots import make_subplots

    count = len(images)
    columns = max(1, min(count, 4))
    rows = max(1, -(-count // columns))
    titles = [f"#{i + 1} · σ = {singular_values[i]:.3g}" for i in range(count)]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.02, vertical_spacing=0.08)
    for i, image in enumerate(images):
        z = np.asarray(image, dtype=float)
        bound = float(np.abs(z).max()) or 1.0
        fig.add_trace(
            go.Heatmap(z=z, zmin=-bound, zmax=bound, zmid=0.0, colorscale="RdBu_r", showscale=False),
            row=i // columns + 1,
            col=i % columns + 1,
        )
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x", constrain="domain")
    for i in range(2, count + 1):  # every picture square: each y axis anchored to its own x axis
        fig.update_layout({f"yaxis{i}": {"scaleanchor": f"x{i}"}})
    return _layout(fig, "linear1's top input directions (rows of Vᵀ of the update)", height=60 + 200 * rows)


def memory_bars(rows: Sequence[dict], unit: float = 1e6) -> go.Figure:
    """Stacked bars of the exact bytes (weights, gradients, Adam, activations) per method and rank, in MB, with
    each run's measured peak as a marker beside its bar."""
    labels = [str(r["label"]) for r in rows]
    fig = go.Figure()
    for key, name, color in MEMORY_PARTS:
        values = [(r[key] + (r.get("adam_step_bytes", 0) if key == "adam_bytes" else 0)) / unit for r in rows]
        fig.add_bar(x=labels, y=values, name=name, marker_color=color)
    peaks = [r.get("peak_bytes") for r in rows]
    if any(p is not None for p in peaks):
        fig.add_scatter(
            x=labels,
            y=[None if p is None else p / unit for p in peaks],
            mode="markers",
            name="measured peak",
            marker={"symbol": "diamond", "size": 12, "color": palette.MARK},
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="MB (10⁶ bytes)")
    return _layout(fig, "Memory of training: exact parts and the measured peak", height=420)


# --- several adapters at once (lora_core.lab.combine) -----------------------------------------------------

RING_PX = 17  # the weight map's ring (radius, in pixels): around a square of 37
PICK = "pick"  # the weight maps' selection parameter: the pair of weights clicked


def weight_maps(
    weights: Sequence[float],
    maps: Sequence[tuple[str, Sequence[Sequence[float]]]],
    current: tuple[float, float] | None,
    names: tuple[str, str],
) -> VegaLiteSpec:
    """One map per (title, grid) of two adapters' accuracy (fractions 0..1; grid[i][j] at w1 = weights[j],
    w2 = weights[i]), two a row, each with its own colour scale: one square per pair of weights, and a click on a
    square selects its pair (the selection parameter PICK, fields "w1" and "w2"); the current pair is ringed in every
    map, on the grid or between its squares (None: no ring, for a pair the map does not show).

    Only the data changes with the pair and the numbers (the spec's other parts depend on the grid, the titles and
    the names alone), so that a drawn chart takes a new pair in place rather than being drawn anew."""
    titles = [title for title, _ in maps]
    rows: list[dict[str, Any]] = [
        {"map": title, "w1": float(w1), "w2": float(w2), "accuracy": 100 * float(grid[i][j]), "ring": False}
        for title, grid in maps
        for i, w2 in enumerate(weights)
        for j, w1 in enumerate(weights)
    ]
    if current is not None:
        rows += [{"map": title, "w1": current[0], "w2": current[1], "accuracy": None, "ring": True} for title in titles]
    half = (weights[1] - weights[0]) / 2 if len(weights) > 1 else 0.125
    domain = [min(weights) - half, max(weights) + half]
    ticks = [float(w) for w in weights]
    x = {"field": "w1", "type": "quantitative", "title": f"weight of {names[0]}", "scale": {"domain": domain}}
    y = {"field": "w2", "type": "quantitative", "title": f"weight of {names[1]}", "scale": {"domain": domain}}
    x["axis"] = y["axis"] = {"values": ticks, "grid": False, "format": ".3~g"}
    # each square's accessible name (its aria-label in the drawn chart): the pair and the accuracy
    pair = (
        f"{json.dumps(names[0])} + ' ×' + format(datum.w1, '~g') + ' + ' + {json.dumps(names[1])} + ' ×' + "
        "format(datum.w2, '~g') + ': ' + format(datum.accuracy, '.2f') + '%'"
    )
    squares = {
        # one pair at a time: a shift-click replaces the pick too, instead of adding a second one
        "params": [{"name": PICK, "select": {"type": "point", "fields": ["w1", "w2"], "on": "click", "toggle": False}}],
        "transform": [
            {"filter": "!datum.ring"},
            {"calculate": f"datum.w1 - {half}", "as": "w1_low"},
            {"calculate": f"datum.w1 + {half}", "as": "w1_high"},
            {"calculate": f"datum.w2 - {half}", "as": "w2_low"},
            {"calculate": f"datum.w2 + {half}", "as": "w2_high"},
            {"calculate": pair, "as": "pair"},
        ],
        "mark": {"type": "rect", "stroke": palette.GAP, "strokeWidth": 1, "cursor": "pointer"},
        "encoding": {
            "x": {**x, "field": "w1_low"},
            "x2": {"field": "w1_high"},
            "y": {**y, "field": "w2_low"},
            "y2": {"field": "w2_high"},
            # perceptually uniform and colour-blind safe; each map its own scale (resolve below)
            "color": {"field": "accuracy", "type": "quantitative", "scale": {"scheme": "viridis"}, "title": "%"},
            "description": {"field": "pair", "type": "nominal"},
            "tooltip": [
                {"field": "w1", "type": "quantitative", "title": f"weight of {names[0]}"},
                {"field": "w2", "type": "quantitative", "title": f"weight of {names[1]}"},
                {"field": "accuracy", "type": "quantitative", "title": "accuracy (%)", "format": ".2f"},
            ],
        },
    }
    ring = {
        "transform": [{"filter": "datum.ring"}],
        "mark": {"type": "point", "shape": "circle", "filled": False, "size": (2 * RING_PX) ** 2, "clip": True},
        "encoding": {"x": x, "y": y, "stroke": {"value": palette.MARK}, "strokeWidth": {"value": 3}},
    }
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": rows},
        "facet": {"field": "map", "type": "nominal", "sort": titles, "title": None, "header": {"labelFontSize": 13}},
        "columns": 2,
        "spec": {"width": 260, "height": 260, "layer": [squares, ring]},
        "resolve": {"scale": {"color": "independent"}, "axis": {"x": "independent", "y": "independent"}},
    }


def combination_bars(
    columns: Sequence[str], models: Sequence[str], kinds: Sequence[str], accuracy: Sequence[Sequence[float]]
) -> VegaLiteSpec:
    """Grouped bars: one group per task column, one bar per model (base, each adapter alone, the combination).

    `accuracy[m][c]` is model m's accuracy (0..1) on column c; `kinds[m]` is "base", "alone" or "combined"."""
    names, colors = [], []
    alone = 0
    for model, kind in zip(models, kinds):
        if kind == "base":
            colors.append(palette.FROZEN)
        elif kind == "combined":
            colors.append(palette.ADAPTED)
        else:
            colors.append(palette.ALONE[alone % len(palette.ALONE)])
            alone += 1
        names.append(model if kind != "alone" else f"{model} alone")
    rows = [
        {"task": column, "series": name, "accuracy": 100 * float(v)}
        for name, values in zip(names, accuracy)
        for column, v in zip(columns, values)
    ]
    x = {"field": "task", "type": "nominal", "title": None, "sort": list(columns)}
    x["axis"] = {"labelAngle": 0, "labelLimit": 300}
    title = "Each adapter alone and the combination, per task"
    return _grouped_bars(rows, x, names, colors, (0.0, 105.0), title, height=400)


# --- experiments: sweeps ----------------------------------------------------------------------------------


def _compact(n: float) -> str:
    """27176 -> '27.2k', 2807010 -> '2.81M': tick labels that fit side by side."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:g}"


def rank_sweep_accuracy(
    ranks: Sequence[float],
    trainable_params: Sequence[int],
    task_accuracy: Sequence[float],
    plain_accuracy: Sequence[float],
    marked: float | None,
    within_points: float,
    base_task: float | None = None,
    task_label: str = "task test set",
    plain_label: str = "plain MNIST (adapter applied)",
    title: str = "Accuracy against rank and against trainable parameters",
) -> go.Figure:
    """Two panels sharing the accuracy axis (fractions in, percent drawn): against the rank (log2 axis,
    ticks at the ranks tried) and against the trainable parameters (log axis). `marked` (a rank, as the
    sweep's result says: the smallest within `within_points` of the best) is starred in both panels;
    `base_task` draws the base model's task accuracy as a dashed reference."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    for col, xs in ((1, list(ranks)), (2, list(trainable_params))):
        for label, values, color in (
            (task_label, task_accuracy, palette.ADAPTED),
            (plain_label, plain_accuracy, palette.ELSEWHERE),
        ):
            fig.add_scatter(
                x=xs,
                y=[100 * v for v in values],
                mode="lines+markers",
                name=label,
                legendgroup=label,
                showlegend=col == 1,
                marker={"color": color, "size": 8},
                line={"color": color},
                customdata=list(ranks),
                hovertemplate=f"{label}: %{{y:.2f}}% at rank %{{customdata:g}}<extra></extra>",
                row=1,
                col=col,
            )
        if marked is not None and marked in list(ranks):
            i = list(ranks).index(marked)
            name = f"rank {marked:g}: the smallest within {within_points:g} points of the best"
            fig.add_scatter(
                x=[xs[i]],
                y=[100 * task_accuracy[i]],
                mode="markers",
                name=name,
                legendgroup="marked",
                showlegend=col == 1,
                marker={"symbol": "star", "size": 18, "color": palette.HIGHLIGHT, "line": OUTLINE},
                hovertemplate=f"{name}: %{{y:.2f}}%<extra></extra>",
                row=1,
                col=col,
            )
    if base_task is not None:
        fig.add_hline(
            y=100 * base_task,
            line={"dash": "dot", "color": palette.FROZEN},
            annotation_text=f"base model on the task: {100 * base_task:.1f}%",
            annotation_position="bottom right",
        )
    fig.update_xaxes(
        type="log",
        tickvals=list(ranks),
        ticktext=[f"{r:g}" for r in ranks],
        title_text="rank r (log2 scale)",
        row=1,
        col=1,
    )
    fig.update_xaxes(
        type="log",
        tickvals=list(trainable_params),
        ticktext=[_compact(n) for n in trainable_params],
        title_text="trainable parameters (log scale)",
        row=1,
        col=2,
    )
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    _layout(fig, title, height=420)
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0})
    fig.update_layout(margin={"b": 110})
    return fig


def rank_sweep_cost(
    ranks: Sequence[float],
    seconds: Sequence[float],
    stored_bytes: Sequence[int],
    marked: float | None = None,
    title: str = "What each rank costs",
) -> go.Figure:
    """Training time per rank (bars, left axis, seconds) and the adapter's file size (line, right axis, KB);
    the marked rank's bar is drawn in the mark's colour."""
    from plotly.subplots import make_subplots

    labels = [f"r={r:g}" for r in ranks]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    colors = [palette.HIGHLIGHT if marked is not None and r == marked else palette.FROZEN for r in ranks]
    fig.add_bar(
        x=labels,
        y=list(seconds),
        name="training time (s)",
        marker_color=colors,
        text=[f"{s:.1f}" for s in seconds],
        textposition="outside",
        cliponaxis=False,
        secondary_y=False,
    )
    fig.add_scatter(
        x=labels,
        y=[b / 1000 for b in stored_bytes],
        mode="lines+markers",
        name="adapter file (KB)",
        marker={"color": palette.ADAPTED},
        line={"color": palette.ADAPTED},
        secondary_y=True,
    )
    fig.update_yaxes(title_text="training time (s)", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="adapter file (KB)", rangemode="tozero", secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="rank")
    return _layout(fig, title, height=320)


def replay_sweep_tradeoff(
    values: Sequence[float],
    task_gain: Sequence[float],
    kept_change: Sequence[float],
    default: float | None,
    others_label: str = "the other digits",
    title: str = "Target gain against the change on the other digits, per replay share",
) -> go.Figure:
    """One point per replay share (fractions in, percentage points drawn): the gain on the target digits
    (y) against the change on `others_label` (x; left of 0 = forgotten), joined in order of the share and
    labelled with it; the default share is starred."""
    xs = [100 * c for c in kept_change]
    ys = [100 * g for g in task_gain]
    fig = go.Figure()
    fig.add_scatter(
        x=xs,
        y=ys,
        mode="lines+markers+text",
        name="replay share",
        text=[f"{v:g}" for v in values],
        textposition="top center",
        marker={"color": palette.ADAPTED, "size": 10},
        line={"color": palette.ADAPTED, "dash": "dot"},
        customdata=list(values),
        hovertemplate="replay %{customdata:g}: target %{y:+.2f} points, others %{x:+.2f} points<extra></extra>",
    )
    if default is not None and default in list(values):
        i = list(values).index(default)
        fig.add_scatter(
            x=[xs[i]],
            y=[ys[i]],
            mode="markers",
            name=f"default replay {default:g}",
            marker={"symbol": "star", "size": 20, "color": palette.HIGHLIGHT, "line": OUTLINE},
            hovertemplate=f"default replay {default:g}: target %{{y:+.2f}}, others %{{x:+.2f}} points<extra></extra>",
        )
    fig.add_vline(x=0, line={"dash": "dash", "color": palette.FROZEN})
    fig.add_hline(y=0, line={"dash": "dash", "color": palette.FROZEN})
    fig.update_xaxes(title_text=f"change on {others_label} (points; left = forgotten)")
    fig.update_yaxes(title_text="gain on the target (points)")
    return _layout(fig, title, height=400)


def training_curves(curves: dict[str, list[list[float]]], accuracy_label: str) -> go.Figure:
    """Accuracy against training step, one line per method in its colour (step 0: the base)."""
    fig = go.Figure()
    for method, points in curves.items():
        name = METHOD_NAMES.get(method, method)
        fig.add_scatter(
            x=[step for step, _ in points],
            y=[100 * accuracy for _, accuracy in points],
            mode="lines+markers",
            name=name,
            line={"color": palette.METHOD.get(method, palette.MARK)},
            hovertemplate=f"{name}: step %{{x}}, %{{y:.2f}}%<extra></extra>",
        )
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=accuracy_label)
    return _layout(fig, "How fast each method learns", height=360)


def magnitude_direction(decompositions: dict[str, list[list[float]]], layer: str) -> go.Figure:
    """The DoRA paper's figure 2: per method, its checkpoints at (direction change dD, magnitude change dM) of
    `layer`'s weight against the base's, the start left out, joined in training order."""
    fig = go.Figure()
    for method, points in decompositions.items():
        name = METHOD_NAMES.get(method, method)
        kept = [p for p in points if p[0] > 0]
        fig.add_scatter(
            x=[d for _, _, d in kept],
            y=[m for _, m, _ in kept],
            mode="lines+markers",
            name=name,
            line={"color": palette.METHOD.get(method, palette.MARK)},
            customdata=[int(step) for step, _, _ in kept],
            hovertemplate=f"{name}: step %{{customdata}}, ΔD %{{x:.3g}}, ΔM %{{y:.3g}}<extra></extra>",
        )
    fig.update_xaxes(title_text=f"direction change ΔD of {layer} (mean 1 − cos per row)")
    fig.update_yaxes(title_text="magnitude change ΔM (mean |Δ‖row‖|)")
    return _layout(fig, "Magnitude against direction over training", height=360)


def sweep_methods(points: dict[str, list[tuple[int, float, float]]], kind: str, accuracy_label: str) -> go.Figure:
    """A sweep of several methods: per method, its points at (trainable parameters, log axis; task accuracy), each
    labelled with its value of the swept setting, joined in the sweep's order, in the method's colour."""
    fig = go.Figure()
    for method, rows in points.items():
        name = METHOD_NAMES.get(method, method)
        fig.add_scatter(
            x=[params for params, _, _ in rows],
            y=[100 * accuracy for _, accuracy, _ in rows],
            mode="lines+markers+text",
            text=[f"{value:g}" for _, _, value in rows],
            textposition="top center",
            name=name,
            line={"color": palette.METHOD.get(method, palette.MARK)},
            hovertemplate=f"{name}: {kind} %{{text}}, %{{x:,}} trainable, %{{y:.2f}}%<extra></extra>",
        )
    fig.update_xaxes(title_text="trainable parameters (log scale)", type="log", dtick=1)
    fig.update_yaxes(title_text=accuracy_label)
    return _layout(fig, f"Each method across the {kind} sweep", height=380)


def intruders_vs_forgetting(runs: Sequence[Any], k: int, eps: float) -> go.Figure:
    """One point per run (lora_core.lab.analysis.intruders.IntruderRun) at (intruders over its layers at k and eps,
    what it forgot in points), in its method's colour, one marker shape per task, labelled with the run."""
    fig = go.Figure()
    tasks = list(dict.fromkeys(run.task for run in runs))
    symbols = ("circle", "square", "diamond", "triangle-up")
    for run in runs:
        fig.add_scatter(
            x=[run.total(k, eps)],
            y=[run.forgot],
            mode="markers+text",
            text=[run.label],
            textposition="top center",
            marker={
                "color": palette.METHOD.get(run.method, palette.MARK),
                "size": 12,
                "symbol": symbols[tasks.index(run.task) % len(symbols)],
            },
            name=f"{run.label} on {run.task}",
            hovertemplate=f"{run.label} on {run.task}: %{{x}} intruders, %{{y:+.2f}} points on {run.forgot_on}"
            "<extra></extra>",
        )
    fig.update_xaxes(title_text=f"intruders among each layer's top {k} (ε {eps:g}), summed")
    fig.update_yaxes(title_text="what the run forgot (points)")
    return _layout(fig, "Intruder dimensions against forgetting", height=380)
