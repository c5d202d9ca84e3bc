"""Two adapters at once, each with a weight (lora_core.lab.combine): the sections of the evaluation and draw pages.

Each page calls one function from one place: evaluation_section(base) and draw_section(base, digit). Both
run on the session's LoraModel (state.load_into_session) and put its single active adapter back afterwards,
so the rest of the page never sees the combination.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from dashboard import charts, palette, state, ui
from lora_core.errors import ArtifactError, ConfigError
from lora_core.lab.combine import (
    CombinationMap,
    CombinationReport,
    ScoreColumn,
    adapter_task,
    combination_label,
    score,
    score_columns,
)
from lora_core.lora import LoraModel
from lora_core.numbers import pct
from lora_core.preprocess import PreparedDigit, predict_probabilities
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord

WEIGHT_RANGE = (-1.0, 2.0)  # a negative weight subtracts an update (PEFT accepts any weight)
WEIGHT_STEP = 0.05  # fine enough to hold the weight map's grid (steps of 0.25)
MAP_KEY = "eval_combine_map"  # the weight map's key, followed by its generation (_map_key)
SCORES_KEY = "_combination_scores"


@dataclass
class Choice:
    """Two adapters and their weights, as chosen on a page."""

    names: list[str]
    weights: list[float]
    stamps: list[str]  # when each was saved: a re-saved adapter is scored again

    @property
    def weighted(self) -> list[tuple[str, float]]:
        return list(zip(self.names, self.weights))


def _controls(base: BaseModelRecord, prefix: str, first: str | None, where: ArtifactStore | None) -> Choice | None:
    """Two select boxes and a weight slider each; None (with a note) unless two adapters are usable."""
    if not state.adapters_enabled():
        st.caption(
            "The *Adapter enabled* switch is off: it applies to the single adapter above. Here both adapters act, "
            "with the weights below (weight 0 leaves an adapter out)."
        )
    usable = state.usable_adapters(base.fingerprint, where)
    if len(usable) < 2:
        st.info(
            "Combining needs two saved adapters of this base model, for example the study's digit adapter and "
            "a task adapter from the Experiments page (rotate:45)."
        )
        return None
    names = [a.name for a in usable]
    first_index = names.index(first) if first in names else 0
    c1, c2 = st.columns(2)
    one = c1.selectbox("First adapter", names, index=first_index, key=f"{prefix}_combine_first")
    others = [n for n in names if n != one]
    two = c2.selectbox("Second adapter", others, index=0, key=f"{prefix}_combine_second")
    low, high = WEIGHT_RANGE
    for key in (f"{prefix}_combine_w1", f"{prefix}_combine_w2"):  # 1 at first; a click on the map may set them
        st.session_state.setdefault(key, 1.0)
    w1 = c1.slider(f"Weight of {one}", low, high, step=WEIGHT_STEP, key=f"{prefix}_combine_w1")
    w2 = c2.slider(f"Weight of {two}", low, high, step=WEIGHT_STEP, key=f"{prefix}_combine_w2")
    info = {a.name: a for a in usable}
    stamps = [str((info[n].record.metrics or {}).get("created", "")) for n in (one, two)]
    return Choice([one, two], [float(w1), float(w2)], stamps)


def _session_model(base: BaseModelRecord, choice: Choice, where: ArtifactStore | None) -> LoraModel | None:
    """The session's LoraModel with both adapters loaded; None (with st.error) if one cannot be used."""
    try:
        model = None
        for name in choice.names:
            model = state.load_into_session(base, name, where)
        return model
    except (ArtifactError, ConfigError) as exc:
        st.error(f"These adapters cannot be combined: {state.describe_error(exc)}. Choose others.")
        return None


def _report(base: BaseModelRecord, model: LoraModel, choice: Choice, where: ArtifactStore | None) -> CombinationReport:
    """lora_core.lab.combine.combination_report's figures, with the base's and each adapter's cached per session
    (only the combination is scored again when a weight moves)."""
    tasks = [t for t in (adapter_task(model.adapter_meta(n)) for n in choice.names) if t is not None]
    weakest = state.base_evaluation(base, where).weakest_digit
    columns = score_columns(tasks, weakest)
    data = state.data()
    sets = {key: (data.test_x if key == "plain" else state._task_test_x(key)) for key in scoring_sets_keys(columns)}
    cache: dict[Any, dict[str, float]] = st.session_state.setdefault(SCORES_KEY, {})
    if len(cache) > 64:
        cache.clear()
    keys = tuple(c.key for c in columns)
    mapped = _weight_map(base, choice, columns, where)
    if mapped.done() and mapped.exception() is None:  # a weight pair on the map's grid needs no scoring again
        for pair, scores in mapped.result().scores.items():
            cache.setdefault((base.fingerprint, keys, tuple(choice.names), pair, tuple(choice.stamps)), scores)
    report = CombinationReport(choice.weighted, columns)
    previous = model.active_adapter
    try:
        with torch.no_grad():
            for kind, label, names, weights in (
                ("base", "base model", [], []),
                *[("alone", n, [n], [1.0]) for n in choice.names],
                ("combined", combination_label(choice.weighted), choice.names, choice.weights),
            ):
                stamps = [choice.stamps[choice.names.index(n)] for n in names]
                key = (base.fingerprint, keys, tuple(names), tuple(weights), tuple(stamps))
                if key not in cache:
                    if len(names) > 1:
                        model.set_adapter(names, list(weights))
                    else:
                        model.set_adapter(names[0] if names else None)
                    cache[key] = score(model, columns, sets, data.test_y)
                report.rows.append(
                    {"model": label, "kind": kind, "weights": dict(zip(names, weights)), "accuracy": cache[key]}
                )
    finally:
        model.set_adapter(previous)
    return report


def scoring_sets_keys(columns: Sequence[Any]) -> list[str]:
    """The test sets the columns need ('plain' and each domain task's spec), as lora_core.lab.combine.scoring_sets
    names them; the transformed ones come from the server-wide cache above."""
    return ["plain", *[c.key for c in columns if c.task is not None]]


@st.fragment
def evaluation_section(base: BaseModelRecord, first: str | None = None, where: ArtifactStore | None = None) -> None:
    """Evaluation page: per-task accuracy of each adapter alone and of their weighted sum. A fragment: moving a
    weight or clicking the map reruns only this section."""
    st.header("Combine two adapters")
    st.write(
        "Both adapters act at once: each layer computes W·x + b + w₁·(α/r)₁·B₁A₁·x + w₂·(α/r)₂·B₂A₂·x, the sum "
        "of their updates with a weight each (PEFT's weighted combination). How does the pair do on both tasks?"
    )
    if not st.toggle("Combine two adapters", value=False, key="eval_combine_on"):
        return
    _apply_picked_weights()
    choice = _controls(base, "eval", first, where)
    if choice is None:
        return
    model = _session_model(base, choice, where)
    if model is None:
        return
    try:
        with st.spinner("Scoring the base, each adapter and the combination on every task..."):
            report = _report(base, model, choice, where)
    except (ArtifactError, ConfigError) as exc:
        st.error(f"These adapters cannot be combined: {state.describe_error(exc)}. Choose others.")
        return
    st.vega_lite_chart(
        charts.combination_bars(
            [c.label for c in report.columns],
            [row["model"] for row in report.rows],
            [row["kind"] for row in report.rows],
            [[row["accuracy"][c.key] for c in report.columns] for row in report.rows],
        ),
        width="stretch",
    )
    table = pd.DataFrame(
        [
            {"model": row["model"], **{c.label: pct(row["accuracy"][c.key]) for c in report.columns}}
            for row in report.rows
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")
    for sentence in report.readings():
        st.caption(sentence)
    _weight_map_part(base, choice, report.columns, where)


def _map_key() -> str:
    """The weight map's key in this session. A chart keeps its selection for as long as its key: a new generation
    starts a map with nothing selected, so that a click on the square picked before counts again."""
    return f"{MAP_KEY}-{st.session_state.get(f'_{MAP_KEY}_generation', 0)}"


def _picked() -> tuple[float, float] | None:
    """The pair of weights selected on the weight map, if any."""
    points = ((st.session_state.get(_map_key()) or {}).get("selection") or {}).get(charts.PICK) or []
    return (float(points[0]["w1"]), float(points[0]["w2"])) if points else None


def _apply_picked_weights() -> None:
    """A square clicked on the weight map (a selection the chart keeps in its state) sets both weights, once per
    click: afterwards the sliders are the user's again."""
    picked = _picked()
    if picked is None:  # nothing selected (yet, or any more: a double-click, a new map): the next pick counts
        st.session_state.pop(f"_{MAP_KEY}_applied", None)
    elif st.session_state.get(f"_{MAP_KEY}_applied") != picked:
        st.session_state[f"_{MAP_KEY}_applied"] = picked
        st.session_state["eval_combine_w1"], st.session_state["eval_combine_w2"] = picked


def _forget_pick_once_moved(current: tuple[float, float]) -> None:
    """Once the sliders leave the pair picked on the map, the map starts again with nothing selected (a chart's
    selection cannot be cleared otherwise): a click on that same square then sets the weights again."""
    picked = _picked()
    if picked is not None and picked != current:
        st.session_state[f"_{MAP_KEY}_generation"] = st.session_state.get(f"_{MAP_KEY}_generation", 0) + 1
        st.session_state.pop(f"_{MAP_KEY}_applied", None)


def _weight_map(
    base: BaseModelRecord, choice: Choice, columns: Sequence[ScoreColumn], where: ArtifactStore | None
) -> Future[CombinationMap]:
    """The pair's map of weights, computed once in the server's background pool (state.combination_weight_map)."""
    records = {a.name: a.record for a in state.usable_adapters(base.fingerprint, where)}
    return state.combination_weight_map(base, (records[choice.names[0]], records[choice.names[1]]), columns, where)


def _weight_map_part(
    base: BaseModelRecord, choice: Choice, columns: Sequence[ScoreColumn], where: ArtifactStore | None
) -> None:
    st.subheader("Every pair of weights")
    results = ui.background_results(
        [_weight_map(base, choice, columns, where)],
        "Scoring the pair at every weight from 0 to 1.5 (once per pair)...",
        "The map of weights could not be computed",
    )
    if results is None:
        return
    (mapped,) = results
    current = (choice.weights[0], choice.weights[1])
    _forget_pick_once_moved(current)
    low, high = mapped.weights[0], mapped.weights[-1]
    outside = not all(low <= w <= high for w in current)
    maps = [(c.label, mapped.grid(c.key)) for c in mapped.columns]
    st.vega_lite_chart(  # keyed: a new pair redraws it in place; a new generation (_map_key) draws it anew
        charts.weight_maps(mapped.weights, maps, None if outside else current, mapped.names),
        on_select="rerun",
        selection_mode=charts.PICK,
        key=_map_key(),
    )
    st.caption(
        f"Accuracy at each pair of weights from {low:g} to {high:g} in steps of {mapped.weights[1] - low:g} (the "
        f"corner 0, 0 is the base model), on the same test sets as the table. Click a square to set both weights "
        f"to it{'; the chosen pair lies outside the map' if outside else '; the ring is the chosen pair'}."
    )


def draw_section(base: BaseModelRecord, digit: PreparedDigit | None, where: ArtifactStore | None = None) -> None:
    """Draw page: what the weighted sum of two adapters predicts for the digit, beside the base model."""
    st.subheader("Two adapters at once")
    if not st.toggle("Combine two adapters", value=False, key="draw_combine_on"):
        return
    choice = _controls(base, "draw", None, where)
    if choice is None or digit is None:
        return
    model = _session_model(base, choice, where)
    if model is None:
        return
    previous = model.active_adapter
    try:
        probabilities = {}
        for label, names, weights in (
            *[(f"{n} alone", n, None) for n in choice.names],
            (combination_label(choice.weighted), choice.names, choice.weights),
        ):
            model.set_adapter(names, weights)
            model.enable_adapters(True)
            probabilities[label] = predict_probabilities(model, digit)
    except (ArtifactError, ConfigError) as exc:
        st.error(f"These adapters cannot be combined: {state.describe_error(exc)}. Choose others.")
        return
    finally:
        model.set_adapter(previous)
        model.enable_adapters(state.adapters_enabled())
    columns = st.columns(len(probabilities))
    # the adapters alone first, the combination last: the colours of the evaluation's combination chart
    colors = [*palette.ALONE[: len(choice.names)], palette.ADAPTED]
    for column, color, (label, p) in zip(columns, colors, probabilities.items()):
        top = int(np.argmax(p))
        with column:
            st.metric(f"{label} says", str(top), f"{p[top]:.1%} sure", delta_color="off", delta_arrow="off")
            st.plotly_chart(charts.probability_bars(p, label, color=color), width="stretch")
