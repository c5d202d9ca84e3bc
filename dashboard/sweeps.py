"""The sweeps section of the Experiments page: LoRA's rank or the replay share over several values on the page's
task (job kind "sweep"), its live run, and the saved sweeps read back from lora_core's JSON
(lora_core.lab.sweeps), so they show again after a restart.

The page calls sweeps_section(...) once, under its own comparisons, with the task and settings its form holds.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, jobs, state, ui, widgets
from lora_core.errors import ConfigError
from lora_core.lab import readings
from lora_core.lab.experiment_settings import ADAPTER_METHODS, ExperimentSettings
from lora_core.lab.sweeps import (
    DEFAULT_RANKS,
    DEFAULT_REPLAYS,
    SWEEP_KINDS,
    WITHIN_POINTS,
    SweepResult,
    check_values,
    list_sweeps,
    load_sweep,
)
from lora_core.lab.tasks import Task
from lora_core.numbers import pct
from lora_core.store.artifacts import BaseModelRecord
from lora_core.train import resolve_device

SWEEP_LABELS = {"rank": "Rank r", "replay": "Replay share"}
SWEEP_DEFAULTS = {"rank": DEFAULT_RANKS, "replay": DEFAULT_REPLAYS}
SWEEP_HELP = {
    "rank": "Whole numbers, comma-separated. A rank above a layer's limit is capped there (linear3: 10), as "
    "PEFT's rank_pattern does; alpha follows the rank (2 × r), so only the rank changes.",
    "replay": "Shares from 0 to below 1, comma-separated: the part of each batch drawn from the other digits.",
}


def sweep_values(kind: str, text: str) -> tuple[float, ...]:
    """The values typed for a sweep of `kind`, checked by lora_core (ConfigError('values', ...))."""
    values: list[float] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        try:
            values.append(int(piece) if kind == "rank" else float(piece))
        except ValueError:
            what = "whole numbers (ranks)" if kind == "rank" else "numbers from 0 to below 1 (replay shares)"
            raise ConfigError("values", f"expected {what} separated by commas, got {piece!r}") from None
    return check_values(kind, values)


def marked_meaning(kind: str) -> str:
    """What the sweep's star marks (the table keeps the star alone, so that its column is never cut off)."""
    if kind == "rank":
        return f"the smallest rank within {WITHIN_POINTS:g} points of the best task accuracy"
    return "the default"


def sweep_rows(result: SweepResult) -> pd.DataFrame:
    """One row per value of the sweep, in the saved order (increasing); `marked` says which one the sweep marks."""
    domain = bool(result.task["domain"])
    others = "plain MNIST" if domain else "other digits"
    rows = []
    several = len(result.methods) > 1
    for p in result.points:
        row: dict[str, Any] = {
            **({"method": charts.METHOD_NAMES.get(p.method, p.method)} if several else {}),
            SWEEP_LABELS[result.kind]: p.value,
            "marked": "★" if p.value == result.marked and p.method == result.methods[0] else "",
            "task accuracy": 100 * p.task_accuracy,
            "task gain (points)": 100 * p.task_gain,
            "plain MNIST (applied)": 100 * p.plain_accuracy,
            f"{others} change (points)": 100 * p.kept_change,
            "trainable parameters": p.trainable_params,
            "bytes stored": p.stored_bytes,
            "train time (s)": p.seconds,
            "samples/s": p.samples_per_s,
        }
        if result.kind == "rank":
            capped = {name: r for name, r in p.layer_ranks.items() if r != p.value}
            row["capped layers"] = ", ".join(f"{name}: {r}" for name, r in capped.items())
        rows.append(row)
    return pd.DataFrame(rows)


def show_sweep(result: SweepResult) -> None:
    task, settings, base_info = result.task, result.settings, result.base
    domain = bool(task["domain"])
    st.markdown(
        f"**{result.kind.capitalize()} sweep on {task['spec']}**: {task['label']} · base model `{base_info['name']}`"
    )
    st.caption(
        f"Every point: {result.fixed_settings()} on {', '.join(settings['targets'])} · the base model reads "
        f"{pct(base_info['task_accuracy'])} of the task and {pct(base_info['plain_accuracy'])} of plain MNIST · "
        f"{result.seconds:.1f} s in all · {ui.when(result.created)}"
    )
    first = result.methods[0]
    points = result.points_of(first)  # the charts below follow the first method; the methods chart all of them
    if len(result.methods) > 1:
        st.plotly_chart(
            charts.sweep_methods(
                {
                    m: [(p.trainable_params, p.task_accuracy, p.value) for p in result.points_of(m)]
                    for m in result.methods
                },
                result.kind,
                accuracy_label=f"accuracy on the task's test set, {task['spec']} (%)",
            ),
            width="stretch",
        )
        st.caption(f"The charts below follow {charts.METHOD_NAMES.get(first, first)}, the sweep's first method.")
    if result.kind == "rank":
        st.plotly_chart(
            charts.rank_sweep_accuracy(
                [p.value for p in points],
                [p.trainable_params for p in points],
                [p.task_accuracy for p in points],
                [p.plain_accuracy for p in points],
                result.marked,
                WITHIN_POINTS,
                base_task=base_info["task_accuracy"],
                task_label=f"task: {task['spec']}",
            ),
            width="stretch",
        )
        st.markdown(result.reading)
        ranks = [p.value for p in points]
        left, right = st.columns([3, 2])
        with left:
            st.plotly_chart(
                charts.rank_sweep_cost(
                    ranks, [p.seconds for p in points], [p.stored_bytes for p in points], result.marked
                ),
                width="stretch",
            )
            st.markdown(readings.read_rank_cost(ranks, [p.seconds for p in points], [p.stored_bytes for p in points]))
            if busy := readings.read_machine_load(result.environment):
                st.warning(busy)
        with right:
            st.caption(
                f"The star marks the smallest rank within {WITHIN_POINTS:g} points of the best task accuracy. The "
                "adapter file is what a task must store: its A and B matrices and its config; a fully fine-tuned "
                f"copy stores all {base_info['parameters']:,} weights of the base."
            )
    else:
        others = "plain MNIST" if domain else "the other digits"
        st.plotly_chart(
            charts.replay_sweep_tradeoff(
                [p.value for p in points],
                [p.task_gain for p in points],
                [p.kept_change for p in points],
                result.marked,
                others_label=others,
            ),
            width="stretch",
        )
        st.markdown(result.reading)
    frame = sweep_rows(result)
    percent = st.column_config.NumberColumn(format="%.2f%%")
    points_format = st.column_config.NumberColumn(format="%+.2f")
    config: dict[str, Any] = {c: percent for c in ("task accuracy", "plain MNIST (applied)")}
    config.update({c: points_format for c in frame.columns if c.endswith("(points)")})
    config.update(ui.counts("trainable parameters", "bytes stored", "samples/s"))
    config["train time (s)"] = st.column_config.NumberColumn(format="%.2f")
    config[SWEEP_LABELS[result.kind]] = st.column_config.NumberColumn(format="%g")
    config["marked"] = st.column_config.TextColumn("★", help=marked_meaning(result.kind), width="small")
    st.dataframe(frame, hide_index=True, column_config=config, width="stretch")
    st.caption(
        f"★ marks {marked_meaning(result.kind)}"
        + (f" ({charts.METHOD_NAMES.get(first, first)}'s)." if len(result.methods) > 1 else ".")
    )
    if result.path:
        st.caption(f"Saved as `{result.path}`.")


def saved_sweep_label(name: str, result: SweepResult) -> str:
    """How the picker names a saved sweep."""
    spec = str((result.task or {}).get("spec", "?"))  # a hand-edited file may lack it
    values = ", ".join(f"{v:g}" for v in result.values)
    return f"{result.kind} sweep · {spec} · {values} · {ui.when(result.created)} ({name})"


def show_saved_sweeps() -> None:
    picked = widgets.pick_saved(
        list_sweeps(state.store()),
        load_sweep,
        saved_sweep_label,
        label="Saved sweep (newest first)",
        key="sweep_pick",
        noun="sweep",
        none_yet="No sweep yet: run one above. Sweeps are saved and shown here again after a restart.",
        none_readable="No readable sweep yet: run one above.",
    )
    if picked is None:
        return
    name, result = picked
    try:
        show_sweep(result)
    except (KeyError, TypeError, ValueError) as exc:  # a file edited by hand: say which, never a traceback
        st.warning(f"The saved sweep {name} is incomplete and cannot be shown ({type(exc).__name__}: {exc}).")


def sweeps_section(
    base: BaseModelRecord,
    task: Task | None,
    rank: int,
    steps: int,
    batch: int,
    seed: int,
    field_labels: dict[str, str],
) -> None:
    """The whole section: what a sweep is, its form, its live run and the saved sweeps. `task` (None while the
    page's task is invalid) and the rank, steps, batch and seed are the page's; `field_labels` names the fields
    a ConfigError may be about."""
    st.header("Sweeps: one setting over several values")
    st.write("Train LoRA (or its variants) on the task above once per value of one setting, every other setting fixed.")
    with st.expander("What does each sweep show?"):
        st.markdown(
            "The fixed settings are the steps, batch and seed above (and the rank above for a replay sweep). "
            "**Rank** shows what rank the task needs; **replay** what the share of other digits in each batch "
            "trades between learning the target and keeping the rest. The base model is loaded once for the whole "
            "sweep."
        )
    slots = ui.FieldSlots()
    k1, k2 = st.columns([1, 2])
    with k1:
        kind = st.radio("Sweep", list(SWEEP_KINDS), format_func=SWEEP_LABELS.get, horizontal=True, key="sweep_kind")
    with k2:
        values_text = st.text_input(
            f"Values ({SWEEP_LABELS[kind].lower()})",
            value=", ".join(f"{v:g}" for v in SWEEP_DEFAULTS[kind]),
            key=f"sweep_values_{kind}",
            help=SWEEP_HELP[kind],
        )
        slots.add("values")
    replay_refused = kind == "replay" and task is not None and not task.replays
    if replay_refused:
        assert task is not None
        st.info(
            f"A replay sweep needs a digit task (weakest, digits, unseen): `{task.spec}` trains on every digit, so "
            "there is nothing to replay. Pick such a task above, or sweep the rank."
        )
    methods = st.multiselect(
        "Methods",
        list(ADAPTER_METHODS),
        default=["lora"],
        format_func=charts.METHOD_NAMES.get,
        key="sweep_methods",
        help="Each method is measured at every value; for VeRA the rank is its shared pair's.",
    )
    slots.add("methods")
    slots.add("task")
    if st.button(
        "Run the sweep", type="primary", disabled=ui.busy() or task is None or replay_refused, key="sweep_start"
    ):
        assert task is not None
        settings = ExperimentSettings(
            methods=tuple(methods) or ("lora",), rank=rank, steps=steps, batch_size=batch, seed=seed
        )
        try:
            values = sweep_values(kind, values_text)
            settings.validate(base.model)
            resolve_device(settings.device)
        except ConfigError as exc:
            slots.show(exc, field_labels.get(exc.field))
        else:
            ui.start_job(jobs.start_sweep, state.store(), task, kind, values, settings)
    ui.busy_note()
    ui.job_panel(("sweep",))
    job = st.session_state.get(ui.JOB_KEY)
    if job is not None and job.kind == "sweep" and job.status == jobs.STOPPED:
        st.caption("A stopped sweep saves nothing: every value must be measured for a sweep to be saved.")

    st.header("Results: sweeps")
    show_saved_sweeps()
