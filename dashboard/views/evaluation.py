"""Evaluation page: how the base model and an adapter do on the 10,000 test digits, and what changed. An
adapter trained on a domain task (rotate, invert...) is judged on the task's own test set as well; a separate
base (trained without some digits) and its adapters are shown when chosen (ui.base_selector)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, combination, state, ui
from lora_core.errors import ArtifactError
from lora_core.evaluate import Evaluation, accuracy_on, compare
from lora_core.lab.strength import STEP, StrengthCurve
from lora_core.lab.tasks import Task
from lora_core.numbers import pct
from lora_core.store.artifacts import BaseModelRecord

GALLERY_SIZE = 30
GALLERY_COLUMNS = 6

st.title("Evaluation")
st.write("Accuracy on the 10,000 MNIST test images, overall and digit by digit, before and after LoRA.")

view = ui.base_selector("eval_base")
base = ui.require_base("Evaluation", view)
base_eval = state.base_evaluation(base, view.where)
infos = state.adapters(base.fingerprint, view.where)
for a in infos:
    if not a.ok:
        st.warning(f"Adapter `{a.name}` is {a.status}: {a.message}")

chosen = None
after = None
if any(a.ok for a in infos) and not state.adapters_enabled():
    # the same switch the draw page honours: a disabled adapter leaves the plain base model
    info = None
    targets = []
    st.info(
        "The adapter is disabled (the *Adapter enabled* switch on the Fine-tuning page), so only the base model "
        "is shown: a disabled adapter predicts exactly like the base. Enable it there to compare."
    )
    st.page_link(ui.PAGES["finetune"], label="Enable it on the Fine-tuning page", icon=":material/tune:")
else:
    info = ui.choose_adapter(
        base, "Adapter to compare with the base model", "eval_adapter", "only the base model is shown.", view
    )
    chosen = info.name if info else None
    if info is not None:
        try:
            after = state.adapter_evaluation(base, info.record, view.where)
        except ArtifactError as exc:
            st.error(f"Adapter `{chosen}` cannot be loaded: {exc}")
            info = None
    targets = info.targets if info else []


# --- a domain task's adapter: judged on the task's own test set too ---------------------------------------------
def task_section(
    view: state.BaseView,
    base: BaseModelRecord,
    info: state.AdapterInfo,
    task: Task,
    plain_before: Evaluation,
    plain_after: Evaluation,
) -> None:
    """The adapter was trained on transformed digits (rotated, inverted...): per digit, base vs adapter on the
    task's own test set (the MNIST test images through the same transform), then on plain MNIST."""
    try:
        before = state.task_base_evaluation(base, task, view.where)
        after = state.task_adapter_evaluation(base, info.record, task, view.where)
    except ArtifactError as exc:
        st.error(f"Adapter `{info.name}` cannot be evaluated on its task: {exc}")
        return
    st.header(f"On the task's own test set: {task.short_label}")
    st.write(f"Both models read the 10,000 MNIST test images through the transform of task `{task.spec}`.")
    with st.expander("Why this test set?"):
        st.markdown(
            f"Adapter `{info.name}` was trained on task `{task.spec}` ({task.label}), so it is judged on the "
            "test images through the same transform. Further down, plain MNIST (no transform) shows what the "
            "adapter costs the original task."
        )
    t1, t2, t3 = st.columns(3)
    t1.metric("Base model on the task's test set", pct(before.accuracy), delta_color="off", delta_arrow="off")
    t2.metric(
        f"With adapter {info.name} on the task's test set",
        pct(after.accuracy),
        f"{100 * (after.accuracy - before.accuracy):+.2f} points",
    )
    t3.metric(
        f"With adapter {info.name} on plain MNIST",
        pct(plain_after.accuracy),
        f"{100 * (plain_after.accuracy - plain_before.accuracy):+.2f} points vs the base",
    )
    st.vega_lite_chart(
        charts.per_digit_bars(
            before.per_digit_accuracy,
            after.per_digit_accuracy,
            labels=("Base model", f"With adapter {info.name}"),
            title=f"Per-digit accuracy on the task's test set ({task.short_label})",
        ),
        width="stretch",
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "digit": d,
                    "test images": before.support[d],
                    "task set: base %": round(100 * before.per_digit_accuracy[d], 2),
                    "task set: adapter %": round(100 * after.per_digit_accuracy[d], 2),
                    "plain MNIST: base %": round(100 * plain_before.per_digit_accuracy[d], 2),
                    "plain MNIST: adapter %": round(100 * plain_after.per_digit_accuracy[d], 2),
                }
                for d in range(10)
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.header("On plain MNIST: the adapter applied vs the base model")


task = info.domain_task if info is not None and after is not None else None
if task is not None:
    assert info is not None and after is not None
    targets = []  # a domain task trains on every digit: none is singled out as a target
    task_section(view, base, info, task, base_eval, after)

# --- overall ---------------------------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
c1.metric(
    "Base model accuracy",
    pct(base_eval.accuracy),
    f"weakest digit {base_eval.weakest_digit}",
    delta_color="off",
    delta_arrow="off",
)
if after is not None:
    c2.metric(
        f"With adapter {chosen}",
        pct(after.accuracy),
        f"{100 * (after.accuracy - base_eval.accuracy):+.2f} points",
    )
    if len(targets) == 1:
        d = targets[0]
        c3.metric(
            f"Target digit {d}",
            pct(after.per_digit_accuracy[d]),
            f"{100 * (after.per_digit_accuracy[d] - base_eval.per_digit_accuracy[d]):+.2f} points",
        )
    elif targets:  # several (unseen:8,9): over all their test images
        on_targets = accuracy_on(after.summary(misclassified=False), targets)
        before_targets = accuracy_on(base_eval.summary(misclassified=False), targets)
        c3.metric(
            f"Target digits {', '.join(map(str, targets))}",
            pct(on_targets),
            f"{100 * (on_targets - before_targets):+.2f} points",
        )


# --- per digit, with the adapter's strength as a control ------------------------------------------------------------
def per_digit_section() -> None:
    """The per-digit chart; with an adapter, a strength control that the chart, the figures and the curve
    follow at once. The curve is computed once per adapter, in the background: until it is there, the chart shows
    the adapter as trained and the section looks again every second."""
    st.header("Per-digit accuracy, before and after")
    if after is None or info is None:
        st.vega_lite_chart(charts.per_digit_bars(base_eval.per_digit_accuracy, None, targets), width="stretch")
        return
    if info.is_dora:
        as_trained_chart()
        st.caption(ui.DORA_HAS_NO_STRENGTH)
        return
    curves = [state.adapter_strength_curve(base, info.record, None, view.where)]
    if task is not None:
        curves.append(state.adapter_strength_curve(base, info.record, task, view.where))
    results = ui.background_results(
        curves,
        "Evaluating the adapter at each strength from 0 to 2 (once per adapter)...",
        f"Adapter `{chosen}` cannot be evaluated at other strengths",
        meanwhile=as_trained_chart,
    )
    if results is not None:
        strength_section(results[0], results[1] if task is not None else None)


def as_trained_chart() -> None:
    """The per-digit chart with the adapter as trained (strength 1), while its strength curve is computed."""
    st.vega_lite_chart(
        charts.per_digit_bars(
            base_eval.per_digit_accuracy,
            after.per_digit_accuracy if after else None,
            targets,
            labels=("Base model", f"With adapter {chosen}"),
        ),
        width="stretch",
    )


@st.fragment
def strength_section(plain: StrengthCurve, on_task: StrengthCurve | None) -> None:
    """Moving the control reruns only this section: every figure in it is looked up on the curves."""
    strength = ui.strength_slider("eval_strength")
    at = plain.at(strength)
    name = f"{chosen} at strength {strength:g}"
    left, right = st.columns([3, 2])
    with left:
        st.vega_lite_chart(
            charts.per_digit_bars(
                base_eval.per_digit_accuracy, at.per_digit_accuracy, targets, labels=("Base model", name)
            ),
            width="stretch",
        )
    # (name, accuracy at every strength, colour): the curve's lines, and the figures read off them
    lines, measured_on = charts.accuracy_lines(plain, on_task, targets)
    # a QLoRA adapter runs on its NF4 copy of the base: strength 0 is that copy, not the float32 base in grey
    zero = "its NF4 base" if info is not None and info.on_nf4 else "base model"
    with right:
        st.plotly_chart(charts.strength_curve(plain.strengths, lines, strength, zero=zero), width="stretch")
    point = plain.strengths.index(strength)
    for column, (label, values, _) in zip(st.columns(len(lines)), lines):
        column.metric(
            f"{label[0].upper()}{label[1:]} at strength {strength:g}",
            pct(values[point]),
            f"{100 * (values[point] - values[0]):+.2f} points vs strength 0",
        )
    at_zero = (
        "the adapter's 4-bit NF4 base alone (QLoRA: the adapter runs on it), not the float32 base of the grey bars"
        if zero != "base model"
        else "the base model's predictions exactly"
    )
    st.caption(
        f"Measured on {measured_on}, at strengths {plain.strengths[0]:g} to {plain.strengths[-1]:g} in steps of "
        f"{STEP:g}. Strength 0 gives {at_zero}; the table and the matrices below show the adapter as trained "
        "(strength 1)."
    )


per_digit_section()
rows = []
for d in range(10):
    row = {
        "digit": d,
        "test images": base_eval.support[d],
        "base wrong": base_eval.wrong_counts[d],
        "base accuracy %": round(100 * base_eval.per_digit_accuracy[d], 2),
    }
    if after is not None:
        row["adapted wrong"] = after.wrong_counts[d]
        row["change in wrong"] = after.wrong_counts[d] - base_eval.wrong_counts[d]
        row["adapted accuracy %"] = round(100 * after.per_digit_accuracy[d], 2)
    row["target"] = "◀ target" if d in targets else ""
    rows.append(row)
st.subheader("Wrong test images per digit (the adapter as trained)")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

# --- confusion -------------------------------------------------------------------------------------------------
st.header("Confusion matrices")
if after is not None:
    diff = compare(base_eval, after)
    t1, t2, t3 = st.tabs(["Base model", "With adapter", "Difference (adapter − base)"])
    with t1:
        st.plotly_chart(charts.confusion_heatmap(base_eval.confusion, "Base model"), width="stretch")
    with t2:
        st.plotly_chart(charts.confusion_heatmap(after.confusion, f"With adapter {chosen}"), width="stretch")
    with t3:
        st.plotly_chart(
            charts.confusion_heatmap(diff["confusion_delta"], "Difference: adapter − base", difference=True),
            width="stretch",
        )
        st.caption(
            f"The adapter fixes {len(diff['fixed'])} test images the base model got wrong and breaks "
            f"{len(diff['broken'])} it got right. Each cell gives the change in its count of test images; blue is "
            "better (more right on the diagonal, fewer of that mistake off it), vermillion is worse."
        )
else:
    st.plotly_chart(charts.confusion_heatmap(base_eval.confusion, "Base model"), width="stretch")

# --- gallery ---------------------------------------------------------------------------------------------------
st.header("Misclassified test digits")
g1, g2 = st.columns(2)
true_digit = g1.selectbox("True digit", ["all", *range(10)], key="gallery_digit")
kinds = ["wrong by the base model"]
if after is not None:
    kinds += ["wrong with the adapter", "fixed by the adapter", "broken by the adapter"]
kind = g2.radio("Show", kinds, key="gallery_kind", horizontal=True)
labels = state.data().test_y.tolist()
if kind == "wrong by the base model":
    indices = base_eval.misclassified
elif kind == "wrong with the adapter" and after is not None:
    indices = after.misclassified
elif kind == "fixed by the adapter":
    indices = diff["fixed"]
else:
    indices = diff["broken"]
if true_digit != "all":
    indices = [i for i in indices if labels[i] == true_digit]
st.caption(f"{len(indices)} test images; showing the first {min(len(indices), GALLERY_SIZE)}.")
if not indices:
    st.info("No test image matches this filter.")
cols = st.columns(GALLERY_COLUMNS)
for n, i in enumerate(indices[:GALLERY_SIZE]):
    caption = f"#{i} · true {labels[i]} · base {base_eval.predictions[i]}"
    if after is not None:
        caption += f" · adapted {after.predictions[i]}"
    cols[n % GALLERY_COLUMNS].image(charts.digit_image(state.test_pixels(i), scale=4), caption=caption)

# --- two adapters at once (dashboard/combination.py) -------------------------------------------------------------
combination.evaluation_section(base, chosen, view.where)
