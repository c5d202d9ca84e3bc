"""Experiments page: pick a task (a domain shift, chosen digits, unseen digits), preview it, compare LoRA,
full fine-tuning and the last layer alone on it in the background, and read the saved comparisons.

Sections, in order: the task, the methods and settings, the live run, the saved comparisons (read back from
lora_core.lab.experiments' saved JSON, so they show again after a restart); then the sweeps of dashboard/sweeps.py
(LoRA's rank or the replay share over several values on the same task and settings, job kind "sweep").
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import torch

from dashboard import charts, jobs, state, sweeps, ui, widgets
from lora_core.data import denormalize
from lora_core.errors import ConfigError
from lora_core.evaluate import accuracy_on
from lora_core.lab import readings
from lora_core.lab.analysis.dora import LAYER as DORA_LAYER
from lora_core.lab.experiment_settings import DEFAULT_METHODS, METHOD_LABELS, METHODS, ExperimentSettings
from lora_core.lab.experiments import ExperimentResult, list_experiments, load_experiment
from lora_core.lab.tasks import Task, parse_task
from lora_core.numbers import pct
from lora_core.train import resolve_device

PREVIEW_DIGITS = 10  # one test image of each digit (of the target digits for a digit task)
KIND_HELP = {
    "rotate": ("Angle in degrees", "45", "Counter-clockwise; negative turns clockwise (from -180 to 180)."),
    "shift": ("Pixels right (DX or DX,DY)", "3", "Whole pixels; DX,DY also moves the digits DY pixels down."),
    "digits": ("Digits", "", "One or more digits, comma-separated: the adapter is trained on them with replay."),
    "unseen": ("Digits the base never sees", "8,9", "A second base model is trained without them (once)."),
}
KIND_LABELS = {
    "weakest": "weakest: the base model's weakest digit",
    "digits": "digits: chosen digits",
    "rotate": "rotate: rotated digits",
    "invert": "invert: dark ink on white",
    "thick": "thick: thick strokes",
    "thin": "thin: thin strokes",
    "shift": "shift: translated digits",
    "unseen": "unseen: digits a base never saw",
}
FIELD_LABELS = {
    "task": "Task parameter",
    "methods": "Methods",
    "curve_every": "Training curve: accuracy every N steps",
    "rank": "Rank r",
    "steps": "Steps",
    "batch_size": "Batch size",
    "seed": "Seed",
    "device": "Device",
    "values": "Values",
}
NOT_APPLICABLE = "—"  # a cell whose measure does not apply to the row (the base model trains nothing)

st.title("Experiments")
st.write(
    "Give the model a new task and compare **LoRA**, **full fine-tuning** and the **last layer** alone on the "
    "same steps, batches and seed."
)
with st.expander("What are the tasks and the methods?"):
    st.markdown(
        "A task is rotated, inverted, thicker or thinner digits, shifted ones, chosen digits, or digits a base "
        "model never saw. **LoRA** keeps the base frozen and trains a small adapter; **LoRA+** trains the same "
        "adapter with B learning faster than A; **DoRA** adds a trainable magnitude per output row; **full "
        "fine-tuning** trains every weight of a copy of the base; the **last layer** trains only linear3 of such "
        "a copy."
    )

base = ui.require_base("An experiment")
base_eval = state.base_evaluation(base)
defaults = ExperimentSettings()
slots = ui.FieldSlots()


# --- the task ------------------------------------------------------------------------------------------------------
def linked_task() -> Task | None:
    """The task a link names (?task=rotate:45), when the task's widgets first appear in this session; a task that
    cannot be read is said on the page, and the default is shown."""
    raw = st.query_params.get("task")
    if raw is None or "exp_kind" in st.session_state:
        return None
    try:
        return parse_task(raw)
    except ConfigError as exc:
        st.warning(f"The link asks for task `{raw}`, which is not a task here ({exc.reason}); showing the default.")
        return None


def chosen_task() -> Task | None:
    """The task the select and the parameter make, or None after an st.error saying what to change."""
    linked = linked_task()
    kinds = list(KIND_LABELS)
    first = kinds.index(linked.kind) if linked is not None else kinds.index("rotate")
    kind = st.selectbox("Task", kinds, format_func=KIND_LABELS.get, index=first, key="exp_kind")
    value = ""
    if kind in KIND_HELP:
        label, default, help_text = KIND_HELP[kind]
        default = default or str(base_eval.weakest_digit)
        if linked is not None and linked.kind == kind:
            default = linked.spec.split(":", 1)[1]
        value = st.text_input(label, value=default, key=f"exp_param_{kind}", help=help_text)
    slots.add("task")
    spec = f"{kind}:{value.strip()}" if kind in KIND_HELP else kind
    try:
        task = parse_task(spec)
    except ConfigError as exc:
        slots.show(exc, FIELD_LABELS["task"])
        return None
    ui.link("task", task.spec)
    return task


def preview(task: Task) -> None:
    """A few test digits as they are and as the task shows them to the model."""
    data = state.data()
    digits = task.target_digits(base_eval.weakest_digit) if not task.is_domain else tuple(range(10))
    if task.kind == "unseen" or not task.is_domain:
        wanted = [digits[i % len(digits)] for i in range(min(PREVIEW_DIGITS, 5 * len(digits)))]
    else:
        wanted = list(range(PREVIEW_DIGITS))
    picks, seen = [], {d: 0 for d in set(wanted)}
    for d in wanted:  # the first, second... test image of each wanted digit
        index = (data.test_y == d).nonzero().flatten()[seen[d]]
        seen[d] += 1
        picks.append(int(index))
    pixels = denormalize(data.test_x[torch.tensor(picks)]).reshape(-1, 28, 28)
    if task.is_domain:
        transformed = task.transform_pixels(pixels)
        st.image(
            charts.digit_grid([pixels.numpy(), transformed.numpy()]),
            caption=f"Test digits as they are (top) and as the task shows them (bottom): {task.label}.",
        )
        st.caption("The same transform is applied to the 60,000 training images the methods train on.")
    else:
        st.image(
            charts.digit_grid([pixels.numpy()]),
            caption=f"Test digits of the task: {task.label}. Digit tasks use MNIST as it is.",
        )
        if task.kind == "unseen":
            st.caption(
                "The first run trains a second base model without these digits (saved under bases/, never "
                "replacing the main one); later runs reuse it. Its adapter is saved with that base."
            )


st.header("Task")
left, right = st.columns([1, 2])
with left:
    task = chosen_task()
    if task is not None:
        st.caption(f"`{task.spec}`: {task.label}.")
with right:
    if task is not None:
        preview(task)

# --- the methods ---------------------------------------------------------------------------------------------------
st.header("Methods and settings")
c1, c2, c3 = st.columns(3)
with c1:
    methods = st.multiselect(
        "Methods",
        list(METHODS),
        default=list(DEFAULT_METHODS),
        format_func=charts.METHOD_NAMES.get,
        key="exp_methods",
        help="; ".join(f"{charts.METHOD_NAMES[m]}: {METHOD_LABELS[m]}" for m in METHODS),
    )
    slots.add("methods")
with c2:
    linked_rank = ui.linked_choice("rank", "exp_rank", list(range(1, 1001)), "rank", defaults.rank)
    rank = st.number_input("Rank r (LoRA)", min_value=1, max_value=1000, value=linked_rank, key="exp_rank")
    ui.link("rank", int(rank))
    slots.add("rank")
    seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=defaults.seed, key="exp_seed")
    slots.add("seed")
with c3:
    steps = st.number_input("Steps", min_value=1, max_value=1_000_000, value=defaults.steps, key="exp_steps")
    slots.add("steps")
    batch = st.number_input("Batch size", min_value=1, max_value=60000, value=defaults.batch_size, key="exp_batch")
    slots.add("batch_size")
    curve_every = st.number_input(
        "Training curve: accuracy every N steps",
        min_value=0,
        max_value=1_000_000,
        value=defaults.curve_every,
        key="exp_curve",
        help="0: none. Each checkpoint evaluates the method on the task's test set while it trains.",
    )
    slots.add("curve_every")
st.caption(
    f"Learning rates: LoRA {defaults.lora_lr:g}, LoRA+ {defaults.loraplus_lr:g} for A and "
    f"{defaults.loraplus_ratio:g} × that for B, DoRA {defaults.dora_lr:g}, PiSSA {defaults.pissa_lr:g}, VeRA "
    f"{defaults.vera_lr:g} (its shared A and B at rank {defaults.vera_rank}), full fine-tuning {defaults.full_lr:g}, "
    f"last layer {defaults.head_lr:g}; LoRA alpha = 2 × r on all layers. Every method trains on the same batches. "
    "The LoRA, LoRA+, DoRA, PiSSA and VeRA adapters are saved like any adapter (under a new name, never replacing "
    "one; PiSSA's converted to plain LoRA on the untouched W); the full and last-layer copies are measured and "
    "dropped."
)

if st.button("Run the comparison", type="primary", disabled=ui.busy() or task is None, key="exp_start"):
    assert task is not None
    settings = ExperimentSettings(
        methods=tuple(methods),
        rank=int(rank),
        steps=int(steps),
        batch_size=int(batch),
        seed=int(seed),
        curve_every=int(curve_every),
    )
    try:
        settings.validate(base.model)
        resolve_device(settings.device)
    except ConfigError as exc:
        slots.show(exc, FIELD_LABELS.get(exc.field))
    else:
        ui.start_job(jobs.start_experiment, state.store(), task, settings)
st.caption(
    "When a comparison you started here finishes, its LoRA adapter becomes this tab's active adapter: the "
    "Evaluation, Parameters and Draw pages show it right away (an unseen task's adapter belongs to its own base "
    "model and stays out of them)."
)
ui.busy_note()
ui.job_panel(("experiment",))


def experiment_outcome_note(job: jobs.Job | None) -> None:
    """Under the finished comparison: the stopped run's rule, or which adapter became active."""
    if job is None or job.kind != "experiment" or job.running:
        return
    if job.status == jobs.STOPPED:
        st.caption("A stopped comparison saves no result; a LoRA adapter finished before the stop stays saved.")
        return
    if job.status != jobs.DONE or job.owner != ui.tab_id():
        return
    name = jobs.experiment_adapter(job.result)
    lora = job.result.method("lora")
    if name is not None and state.active_adapter(base.fingerprint) == name:
        st.success(
            f"The new adapter `{name}` is now this tab's active adapter: the Evaluation, Parameters and Draw "
            "pages show it (switch it on the LoRA fine-tuning page)."
        )
    elif lora is not None and lora.adapter:
        st.caption(
            f"The adapter `{lora.adapter}` was saved with the base model `{job.result.base['name']}`, not the main "
            "one, so the other pages do not make it active."
        )


experiment_outcome_note(st.session_state.get(ui.JOB_KEY))


# --- saved results -------------------------------------------------------------------------------------------------
def method_rows(result: ExperimentResult) -> pd.DataFrame:
    """The table: one row per method, the base model first."""
    domain = bool(result.task["domain"])
    task_col = "task accuracy"
    plain_col = "plain MNIST (applied)"
    rows: list[dict[str, Any]] = [
        {  # None: not applicable to the base model; shown as NOT_APPLICABLE by methods_table
            "method": "base model (reference)",
            "trainable parameters": None,
            "bytes stored": None,
            "train time (s)": None,
            "peak memory (MB)": None,
            task_col: 100 * result.base["task_accuracy"],
            plain_col: 100 * result.base["plain_accuracy"],
            "plain MNIST (adapter off)": None,
        }
    ]
    for m in result.methods:
        rows.append(
            {
                "method": METHOD_LABELS.get(m.method, m.method),
                "trainable parameters": m.trainable_params,
                "bytes stored": m.stored_bytes,
                "train time (s)": round(m.seconds, 2),
                "peak memory (MB)": round(m.peak_memory_bytes / 1e6, 1),
                task_col: 100 * m.task_accuracy,
                plain_col: 100 * m.plain_accuracy,
                "plain MNIST (adapter off)": 100 * m.adapter_off_plain["accuracy"] if m.adapter_off_plain else None,
            }
        )
    frame = pd.DataFrame(rows)
    if not domain:  # digit tasks: what happened to the digits not targeted (the forgetting measure)
        frame["other digits"] = [100 * result.base["kept_accuracy"], *(100 * m.kept_accuracy for m in result.methods)]
    return frame


def methods_table(frame: pd.DataFrame) -> Any:
    """The methods table for st.table: numbers stay numbers and are shown through a pandas Styler whose missing
    cells read NOT_APPLICABLE. (st.dataframe draws every missing cell as "None" whatever the Styler says,
    checked in Chromium with Streamlit 1.67; st.table shows the Styler's text. Four rows need no sorting.)"""
    formats: dict[str, str] = {}
    for column in frame.columns:
        if "accuracy" in column or "MNIST" in column or column == "other digits":
            formats[column] = "{:.2f}%"
        elif column in ("trainable parameters", "bytes stored"):
            formats[column] = "{:,.0f}"
        elif column == "train time (s)":
            formats[column] = "{:.2f}"
        elif column == "peak memory (MB)":
            formats[column] = "{:.1f}"
    return frame.style.format(formats, na_rep=NOT_APPLICABLE)


def show_methods_result(result: ExperimentResult) -> None:
    task, settings = result.task, result.settings
    domain = bool(task["domain"])
    st.markdown(f"**{task['spec']}**: {task['label']} · base model `{result.base['name']}`")
    st.caption(
        f"{settings['steps']} steps of batch {settings['batch_size']}, seed {settings['seed']}; LoRA rank "
        f"{settings['rank']} (alpha {settings['alpha']:g}) on {', '.join(settings['targets'])} · "
        f"{result.seconds:.1f} s in all · {ui.when(result.created)}"
    )
    st.table(methods_table(method_rows(result)), hide_index=True)
    if busy := readings.read_machine_load(result.environment):
        st.warning(busy)
    st.caption(
        f"{NOT_APPLICABLE}: does not apply (the base model trains and stores nothing; only an adapter, LoRA's or "
        "its variants', can be switched off)."
        + (
            " PiSSA's adapter is switched off as saved, converted to run on the untouched W; the residual base "
            "W − s·B₀A₀ it trained on is not W and gives other logits (the Parameters page shows its hashes)."
            if result.method("pissa") is not None
            else ""
        )
    )
    qlora = result.method("qlora")
    if qlora is not None and qlora.quantized_base is not None:  # QLoRA's base alone: what the 4 bits cost
        task_what = "the task" if domain else "the target digits"
        st.info(
            readings.read_quantized_base(
                qlora.quantized_base, result.base["task_accuracy"], result.base["plain_accuracy"], task_what
            )
        )
    bought = {m.method: (m.trainable_params, m.task_accuracy) for m in result.methods}
    st.plotly_chart(
        charts.accuracy_vs_parameters(
            list(bought),
            [p for p, _ in bought.values()],
            [a for _, a in bought.values()],
            readings.pareto_front(bought),
            accuracy_label=f"accuracy on the task's test set, {task['spec']} (%)",
        ),
        width="stretch",
    )
    st.markdown(readings.read_pareto(bought))
    curves = {m.method: m.curve for m in result.methods if m.curve}
    if curves:
        label = f"accuracy on the task's test set, {task['spec']} (%)"
        st.plotly_chart(charts.training_curves(curves, label), width="stretch")
        st.markdown(readings.read_curves(result.base["task_accuracy"], curves))
        decompositions = {m.method: m.magnitude_direction for m in result.methods if m.magnitude_direction}
        if decompositions:
            st.plotly_chart(charts.magnitude_direction(decompositions, DORA_LAYER), width="stretch")
            st.markdown(readings.read_magnitude_direction(decompositions, DORA_LAYER))
        st.caption(
            f"Measured every {settings.get('curve_every')} steps on the same test images as the table's task "
            "column; the time it takes is left out of each method's training time, but its evaluations count in "
            "the peak memory."
        )

    names = [m.method for m in result.methods]
    task_acc = {m.method: m.task_accuracy for m in result.methods}
    plain_acc = {m.method: m.plain_accuracy for m in result.methods}
    lora = result.method("lora")
    off = lora.adapter_off_plain["accuracy"] if lora is not None and lora.adapter_off_plain else None
    plain_what = "upright digits" if task["kind"] == "rotate" else "plain MNIST"
    kept_acc = plain_acc  # what the reading says each method keeps of the original task
    kept_off = off
    if not domain:  # a digit task: what is kept is the other digits (the targets were meant to change)
        plain_what = "the other digits"
        kept_acc = {m.method: m.kept_accuracy for m in result.methods}
        others = [d for d in range(10) if d not in (task["target_digits"] or [])]
        kept_off = accuracy_on(lora.adapter_off_plain, others) if lora is not None and lora.adapter_off_plain else None
    c1, c2 = st.columns(2)
    with c1:
        st.plotly_chart(
            charts.method_accuracy_bars(
                ["base", *names],
                [result.base["task_accuracy"], *task_acc.values()],
                [result.base["plain_accuracy"], *plain_acc.values()],
                task_label=f"task: {task['spec']}",
                plain_label="plain MNIST (method applied)",
                title="What each method reads",
            ),
            width="stretch",
        )
        st.markdown(
            readings.read_methods(
                result.base["task_accuracy"],
                task_acc,
                kept_acc,
                {m.method: m.trainable_params for m in result.methods},
                kept_off,
                plain_what,
            )
        )
    kept_what = "plain MNIST" if domain else "the other digits"
    switch = lora is not None and lora.adapter_off_equals_base
    base_label = "base model = LoRA switched off" if switch else charts.METHOD_NAMES["base"]
    with c2:
        st.plotly_chart(
            charts.learned_vs_forgot(
                names,
                [m.task_accuracy for m in result.methods],
                [m.kept_accuracy for m in result.methods],
                base=(result.base["task_accuracy"], result.base["kept_accuracy"]),
                kept_label=f"accuracy on {kept_what}, method applied (%): kept",
                base_label=base_label,
            ),
            width="stretch",
        )
        points = {m.method: (m.task_accuracy, m.kept_accuracy) for m in result.methods}
        st.markdown(
            readings.read_learned_vs_forgot(
                (result.base["task_accuracy"], result.base["kept_accuracy"]), points, kept_what
            )
        )
    if lora is not None and lora.adapter:
        where = "" if result.base["name"] == "main" else f" (with the base model `{result.base['name']}`)"
        same = "exactly the base model's logits" if lora.adapter_off_equals_base else "NOT the base model's logits"
        st.caption(
            f"The LoRA adapter is saved as `{lora.adapter}`{where}; switched off it gives {same} "
            f"({pct(off) if off is not None else '?'} on plain MNIST)."
        )


def saved_result_label(name: str, result: ExperimentResult) -> str:
    """How the picker names a saved comparison."""
    methods = ", ".join(m.method for m in result.methods)
    return f"{result.task['spec']} · {methods} · {ui.when(result.created)} ({name})"


def show_saved_results() -> None:
    picked = widgets.pick_saved(
        list_experiments(state.store()),
        load_experiment,
        saved_result_label,
        label="Saved comparison (newest first)",
        key="exp_pick",
        noun="result",
        none_yet="No comparison yet: run one above. Results are saved and shown here again after a restart.",
        none_readable="No readable comparison yet: run one above.",
    )
    if picked is not None:
        show_methods_result(picked[1])


st.header("Results: methods side by side")
show_saved_results()


# --- sweeps (dashboard/sweeps.py) ----------------------------------------------------------------------------------
sweeps.sweeps_section(base, task, int(rank), int(steps), int(batch), int(seed), FIELD_LABELS)
