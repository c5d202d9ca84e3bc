"""Home page: the headline figures first (once there are any), the button that runs the whole study, its five
steps, and what LoRA is and where it sits in the network on demand."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, diagram, jobs, state, ui
from lora_core.errors import ConfigError
from lora_core.lab.proof import RecordedCheck, recorded_check
from lora_core.lab.study import Headline, headline_from_adapter, headline_from_study
from lora_core.model import MLP
from lora_core.numbers import digits_named, pct
from lora_core.train import FinetuneConfig, TrainConfig

STUDY_FIELDS = {"hidden": "Hidden size", "epochs": "Epochs", "steps": "Fine-tuning steps"}

st.title("LoRA on MNIST: see it work")
st.markdown(
    "A small network learns to read handwritten digits; then **LoRA** (Low-Rank Adaptation) improves its weakest "
    "digit while the original weights stay frozen, and the lab measures what changed."
)

# the headline figures go here, above the fold, once there are any (filled at the end of the script, after the
# study's own run has had its say); before that the button that runs the study is the first thing below
headline_slot = st.container()

# --- what is saved -------------------------------------------------------------------------------------
status = state.base_status()
base = status.record
base_eval = state.base_evaluation(base) if base is not None else None
active = state.active_adapter(status.sha)
usable = {a.name: a for a in state.usable_adapters(status.sha)}
active_info = usable.get(active) if active else None


def step(number: int, title: str, done: bool, text: str, page: str, link: str) -> None:
    with st.container(border=True):
        left, right = st.columns([3, 1])
        mark = ":material/check_circle:" if done else ":material/radio_button_unchecked:"
        left.markdown(f"{mark} **{number}. {title}**  \n{text}")
        with right:
            st.page_link(ui.PAGES[page], label=f"Open {link}", icon=":material/arrow_forward:")


def show_formula() -> None:
    st.latex(r"y \;=\; W x \;+\; B A x \cdot \frac{\alpha}{r}")
    c1, c2, c3 = st.columns(3)
    c1.markdown("**W** (frozen): the base layer's weight matrix. Fine-tuning never changes it.")
    c2.markdown(
        "**A** (r × in) and **B** (out × r): two thin matrices; only they are trained. B starts at zero, so "
        "the adapter starts as a no-op."
    )
    c3.markdown("**α / r**: a fixed scale. A small rank r means very few extra parameters.")


# --- run the whole study ---------------------------------------------------------------------------------
st.header("Run the whole study")
st.write(
    "One click does every step: trains the base model (or reuses the saved one), evaluates it, fine-tunes "
    "an adapter on its weakest digit, and checks that the base weights did not change."
)
timings = []  # measured here, by the runs that made the saved work (no guesses)
if base is not None and isinstance(base.meta.get("training", {}).get("seconds"), int | float):
    timings.append(f"the saved base model's training steps took {base.meta['training']['seconds']:.1f} s")
if active_info is not None and isinstance((active_info.record.metrics or {}).get("seconds"), int | float):
    timings.append(
        f"adapter `{active_info.name}`'s fine-tuning steps took {active_info.record.metrics['seconds']:.1f} s"
    )
if timings:
    st.caption("On this machine " + " and ".join(timings) + ".")
st.caption(ui.NEW_NAME_NOTE)
t_defaults, f_defaults = TrainConfig(), FinetuneConfig()
with st.expander("Study settings (the defaults are the study's)"):
    s1, s2, s3, s4 = st.columns(4)
    h1 = s1.number_input("Hidden size 1", 1, 16384, t_defaults.hidden[0], key="study_h1")
    h2 = s2.number_input("Hidden size 2", 1, 16384, t_defaults.hidden[1], key="study_h2")
    epochs = s3.number_input("Epochs", 1, 1000, t_defaults.epochs, key="study_epochs")
    steps = s4.number_input("Fine-tuning steps", 1, 1_000_000, f_defaults.steps, key="study_steps")
    retrain = st.checkbox("Train a new base model even if one is saved", value=base is None, key="study_retrain")

job = ui.job_panel(ui.JOB_PANELS["home"])
if st.button("Run the whole study", type="primary", disabled=ui.busy(), key="run_study"):
    train_config = TrainConfig(hidden=(int(h1), int(h2)), epochs=int(epochs))
    ft_config = FinetuneConfig(steps=int(steps))
    try:
        train_config.validate()
        ft_config.validate()
    except ConfigError as exc:
        label = STUDY_FIELDS.get(exc.field, exc.field)
        st.error(f"**{label}**: {exc.reason}. Change it in the study settings; nothing was run.")
    else:
        ui.start_job(jobs.start_study, state.store(), train_config, ft_config, retrain)
ui.busy_note()


# --- the five steps -------------------------------------------------------------------------------------
st.header("The study in five steps")
if base is not None and base_eval is not None:
    weakest = base_eval.weakest_digit
    step(1, "Train the base model", True, f"Test accuracy {pct(base_eval.accuracy)}.", "training", "Training")
    step(
        2,
        "Evaluate it digit by digit",
        True,
        f"Per-digit accuracy from {pct(min(base_eval.per_digit_accuracy))} to "
        f"{pct(max(base_eval.per_digit_accuracy))} on the 10,000 test images.",
        "evaluation",
        "Evaluation",
    )
    step(
        3,
        "Find the weakest digit",
        True,
        f"Digit **{weakest}**: {pct(base_eval.per_digit_accuracy[weakest])} "
        f"({base_eval.wrong_counts[weakest]} of {base_eval.support[weakest]} wrong).",
        "evaluation",
        "Evaluation",
    )
else:
    msg = status.error or "No base model yet."
    step(1, "Train the base model", False, msg, "training", "Training")
    step(2, "Evaluate it digit by digit", False, "Needs the base model.", "evaluation", "Evaluation")
    step(3, "Find the weakest digit", False, "Needs the evaluation.", "evaluation", "Evaluation")
if active_info is not None:
    cfg = active_info.record.config
    domain = active_info.domain_task
    if domain is not None:
        trained_on = f"task `{domain.spec}` ({domain.label})"
    else:
        digits = active_info.targets
        trained_on = digits_named(digits)
    step(
        4,
        "Fine-tune it with LoRA",
        True,
        f"Adapter `{active_info.name}` on {trained_on}: rank {cfg.r if cfg else '?'}, base weights frozen.",
        "finetune",
        "LoRA fine-tuning",
    )
    step(5, "Compare before and after", True, "The headline figures open this page.", "evaluation", "Evaluation")
else:
    step(4, "Fine-tune it with LoRA", False, "No adapter is active yet.", "finetune", "LoRA fine-tuning")
    step(5, "Compare before and after", False, "Needs an adapter.", "evaluation", "Evaluation")

# details on demand: a folded expander's content is drawn only once it is opened (a rerun), so the first page
# does not pay for KaTeX, Graphviz or a data grid nobody asked to see
formula = st.expander("What LoRA is: one formula", expanded=active_info is None, key="home_formula", on_change="rerun")
with formula:
    if formula.open:
        show_formula()

# --- the network as a picture (dashboard/diagram.py) -------------------------------------------------------------
# folded (drawn open, Graphviz adds about 0.6 s to Home's load in a fresh tab); the Parameters page shows it open
network = st.expander("The network, and where LoRA sits", expanded=False, key="home_network", on_change="rerun")
with network:
    if network.open:
        diagram.show(
            base.model if base is not None else MLP(),
            active_info.record.config if active_info is not None else None,
            active_info.name if active_info is not None else None,
        )


# --- headline figures ---------------------------------------------------------------------------------------
def saved_headline(info: state.AdapterInfo, check: RecordedCheck) -> Headline | None:
    """The active adapter's figures as recorded in its metrics.json, with its recorded base-tensor check."""
    assert base is not None
    try:
        return headline_from_adapter(info.name, info.record.metrics or {}, int(base.meta["parameters"]), check)
    except (KeyError, TypeError, IndexError) as exc:
        headline_slot.warning(f"Adapter `{info.name}`'s metrics.json lacks the figures for a headline ({exc}).")
        return None


figures = None
weights_table = None  # per base tensor, what the headline's weights sentence rests on
if job is not None and job.status == jobs.DONE and isinstance(job.result, dict):
    figures = headline_from_study(job.result)
    weights_table = pd.DataFrame(job.result["weights_proof"]).rename(
        columns={"tensor": "base tensor", "max_abs_diff": "max |fine-tuned − checkpoint|", "identical": "bit-identical"}
    )
elif active_info is not None and base is not None:
    check = recorded_check(active_info.record.metrics, base.model)
    figures = saved_headline(active_info, check)
    weights_table = pd.DataFrame(check.rows(digits=16)) if check.tensors else None

if figures is not None:
    with headline_slot:
        st.header("Headline figures")
        st.caption(f"From {figures.source}; every number is measured on {figures.measured_on}.")
        m1, m2, m3, m4 = st.columns(4)
        chart_slot = st.container()  # the chart right under the figures it draws, the sentences below it
        overall_change = f"{100 * (figures.adapted_accuracy - figures.base_accuracy):+.2f} points"
        if figures.task_label is not None:  # a domain task: no target digit, and not plain MNIST
            m1.metric("Base model on the task's test set", pct(figures.base_accuracy))
            task = active_info.domain_task if active_info is not None else None
            m2.metric(  # a few words fit a quarter of the page; the whole label is in the caption above
                "Adapter's task",
                task.short_label if task is not None else figures.task_label,
                delta_color="off",
                delta_arrow="off",
            )
            m3.metric("With the adapter on the task's test set", pct(figures.adapted_accuracy), overall_change)
            m4.page_link(ui.PAGES["evaluation"], label="Its cost on plain MNIST", icon=":material/bar_chart:")
        else:
            targets, weakest = figures.digits, figures.weakest_digit
            # several targets: the mean of their per-digit accuracies, named as such (not the first one alone)
            before = sum(figures.per_digit_before[t] for t in targets) / len(targets)
            after = sum(figures.per_digit_after[t] for t in targets) / len(targets)
            shown = f"Digit {targets[0]}" if len(targets) == 1 else f"Digits {', '.join(map(str, targets))} (mean)"
            m1.metric("Base accuracy", pct(figures.base_accuracy))
            m2.metric(
                f"Adapter's target digit{'s' if len(figures.digits) > 1 else ''}",
                ", ".join(map(str, figures.digits)),
                f"{pct(before)} before" if len(figures.digits) == 1 else None,
                delta_color="off",
                delta_arrow="off",
            )
            m3.metric(f"{shown} after LoRA", pct(after), f"{100 * (after - before):+.2f} points")
            m4.metric("Overall after LoRA", pct(figures.adapted_accuracy), overall_change)
            weakest_note = f"The base model's weakest digit is {weakest} ({pct(figures.per_digit_before[weakest])})"
            if weakest in figures.digits:
                st.caption(f"{weakest_note}: the adapter's target.")
            else:
                st.caption(f"{weakest_note}; this adapter targets {digits_named(targets)} instead.")
            worst = figures.worst_hit_other
            if worst is not None:
                digit, change = worst
                if change < 0:
                    st.caption(
                        f"The cost elsewhere: the other digit that lost most is {digit}, "
                        f"{pct(figures.per_digit_before[digit])} → {pct(figures.per_digit_after[digit])} "
                        f"({100 * change:+.2f} points)."
                    )
                else:
                    st.caption("No other digit got worse with this adapter.")
        n1, n2 = st.columns(2)
        n1.metric(
            "Parameters added by LoRA",
            f"{figures.lora_params:,}",
            f"{figures.lora_percent:.3f}% of the base",
            delta_color="off",
            delta_arrow="off",
        )
        if figures.weights_unchanged is None:
            n2.info(figures.weights_note)
        elif figures.weights_unchanged:
            n2.success(figures.weights_note)
        else:
            n2.error(figures.weights_note)
        if weights_table is not None:
            tensors = st.expander("Per base tensor", key="home_tensors", on_change="rerun")
            with tensors:
                if tensors.open:
                    st.dataframe(weights_table, hide_index=True, width="stretch")
        on_what = "on the task's test set" if figures.task_label is not None else "on the MNIST test set"
        chart_slot.vega_lite_chart(
            charts.per_digit_bars(
                figures.per_digit_before,
                figures.per_digit_after,
                list(figures.digits),
                labels=("Base model", f"With adapter {figures.adapter}"),
                title=f"Per-digit accuracy {on_what}",
            ),
            width="stretch",
        )
