"""Home page: the study as a story, from what LoRA is to the headline figures, with one button that runs it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import charts, jobs, state, ui
from lora_core.errors import ArtifactError, ConfigError
from lora_core.params import parameter_table
from lora_core.study import base_weights_proof
from lora_core.train import FinetuneConfig, TrainConfig

st.title("LoRA on MNIST: see it work")
st.markdown(
    "A small network learns to read handwritten digits. Then we improve its weakest digit with **LoRA** "
    "(Low-Rank Adaptation) while the original weights stay frozen, and measure what changed."
)

st.header("What LoRA is")
st.latex(r"y \;=\; W x \;+\; B A x \cdot \frac{\alpha}{r}")
c1, c2, c3 = st.columns(3)
c1.markdown("**W** (frozen): the base layer's weight matrix. Fine-tuning never changes it.")
c2.markdown(
    "**A** (r × in) and **B** (out × r): two thin matrices; only they are trained. B starts at zero, so "
    "the adapter starts as a no-op."
)
c3.markdown("**α / r**: a fixed scale. A small rank r means very few extra parameters.")

# --- the five steps -------------------------------------------------------------------------------------
st.header("The study in five steps")
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


if base is not None and base_eval is not None:
    weakest = base_eval.weakest_digit
    step(1, "Train the base model", True, f"Test accuracy {ui.pct(base_eval.accuracy)}.", "training", "Training")
    step(
        2,
        "Evaluate it digit by digit",
        True,
        f"Per-digit accuracy from {ui.pct(min(base_eval.per_digit_accuracy))} to "
        f"{ui.pct(max(base_eval.per_digit_accuracy))} on the 10,000 test images.",
        "evaluation",
        "Evaluation",
    )
    step(
        3,
        "Find the weakest digit",
        True,
        f"Digit **{weakest}**: {ui.pct(base_eval.per_digit_accuracy[weakest])} "
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
    digits = ", ".join(map(str, active_info.targets))
    step(
        4,
        "Fine-tune it with LoRA",
        True,
        f"Adapter `{active_info.name}` on digit {digits}: rank {cfg.r if cfg else '?'}, base weights frozen.",
        "finetune",
        "LoRA fine-tuning",
    )
    step(5, "Compare before and after", True, "See the headline figures below.", "evaluation", "Evaluation")
else:
    step(4, "Fine-tune it with LoRA", False, "No adapter is active yet.", "finetune", "LoRA fine-tuning")
    step(5, "Compare before and after", False, "Needs an adapter.", "evaluation", "Evaluation")

# --- run the whole study ---------------------------------------------------------------------------------
st.header("Run the whole study")
st.write(
    "One click does every step: trains the base model (or reuses the saved one), evaluates it, fine-tunes "
    "an adapter on its weakest digit, and checks that the base weights did not change. About half a minute."
)
t_defaults, f_defaults = TrainConfig(), FinetuneConfig()
with st.expander("Study settings (the defaults are the study's)"):
    s1, s2, s3, s4 = st.columns(4)
    h1 = s1.number_input("Hidden size 1", 1, 16384, t_defaults.hidden[0], key="study_h1")
    h2 = s2.number_input("Hidden size 2", 1, 16384, t_defaults.hidden[1], key="study_h2")
    epochs = s3.number_input("Epochs", 1, 1000, t_defaults.epochs, key="study_epochs")
    steps = s4.number_input("Fine-tuning steps", 1, 1_000_000, f_defaults.steps, key="study_steps")
    retrain = st.checkbox("Train a new base model even if one is saved", value=base is None, key="study_retrain")

job = ui.job_panel(("study",))
if st.button("Run the whole study", type="primary", disabled=ui.busy(), key="run_study"):
    train_config = TrainConfig(hidden=(int(h1), int(h2)), epochs=int(epochs))
    ft_config = FinetuneConfig(steps=int(steps))
    try:
        train_config.validate()
        ft_config.validate()
    except ConfigError as exc:
        st.error(f"{exc.field}: {exc.reason}. Change it in the study settings; nothing was run.")
    else:
        ui.set_job(jobs.start_study(state.store(), train_config, ft_config, retrain))
        st.rerun()
ui.busy_note()


# --- headline figures ---------------------------------------------------------------------------------------
def headline_from_study(result: dict[str, Any]) -> dict[str, Any]:
    d = result["target_digit"]
    params = result["parameters"]
    return {
        "source": f"the study just run (adapter `{result['adapter']['name']}`)",
        "base_acc": result["base"]["accuracy"],
        "adapted_acc": result["adapted"]["accuracy"],
        "digit": d,
        "before": result["base"]["per_digit_accuracy"][d],
        "after": result["adapted"]["per_digit_accuracy"][d],
        "per_digit_before": result["base"]["per_digit_accuracy"],
        "per_digit_after": result["adapted"]["per_digit_accuracy"],
        "lora_params": params["lora_params"],
        "lora_percent": params["lora_percent"],
        "unchanged": result["base_weights_unchanged"],
        "proof_note": "the fine-tuned model against the checkpoint saved before fine-tuning",
    }


def headline_from_saved(info: state.AdapterInfo) -> dict[str, Any] | None:
    assert base is not None and base_eval is not None
    try:
        after = state.adapter_evaluation(base, info.record)
        model = state.load_into_session(base, info.name)
        proof = base_weights_proof(state.store(), model)
    except ArtifactError as exc:
        st.warning(f"Adapter `{info.name}` cannot be used: {exc}")
        return None
    d = info.targets[0] if info.targets else base_eval.weakest_digit
    table = parameter_table(model, info.record.config)
    return {
        "source": f"the active adapter `{info.name}`",
        "base_acc": base_eval.accuracy,
        "adapted_acc": after.accuracy,
        "digit": d,
        "before": base_eval.per_digit_accuracy[d],
        "after": after.per_digit_accuracy[d],
        "per_digit_before": base_eval.per_digit_accuracy,
        "per_digit_after": after.per_digit_accuracy,
        "lora_params": table.lora_params,
        "lora_percent": table.lora_percent,
        "unchanged": all(p["identical"] for p in proof),
        "proof_note": "this session's model against the base checkpoint on disk",
    }


figures = None
if job is not None and job.status == jobs.DONE and isinstance(job.result, dict):
    figures = headline_from_study(job.result)
elif active_info is not None and base is not None:
    figures = headline_from_saved(active_info)

st.header("Headline figures")
if figures is None:
    st.info("Run the study (or fine-tune an adapter) to see the headline figures here.")
else:
    st.caption(f"From {figures['source']}; every number is measured on the 10,000 MNIST test images.")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Base accuracy", ui.pct(figures["base_acc"]))
    m2.metric(
        "Weakest digit",
        str(figures["digit"]),
        f"{ui.pct(figures['before'])} before",
        delta_color="off",
        delta_arrow="off",
    )
    m3.metric(
        f"Digit {figures['digit']} after LoRA",
        ui.pct(figures["after"]),
        f"{100 * (figures['after'] - figures['before']):+.2f} points",
    )
    m4.metric(
        "Overall after LoRA",
        ui.pct(figures["adapted_acc"]),
        f"{100 * (figures['adapted_acc'] - figures['base_acc']):+.2f} points",
    )
    n1, n2 = st.columns(2)
    n1.metric(
        "Parameters added by LoRA",
        f"{figures['lora_params']:,}",
        f"{figures['lora_percent']:.3f}% of the base",
        delta_color="off",
        delta_arrow="off",
    )
    if figures["unchanged"]:
        n2.success(f"Base weights unchanged: every tensor is bit-identical ({figures['proof_note']}).")
    else:
        n2.error(f"Base weights changed ({figures['proof_note']}).")
    st.plotly_chart(
        charts.per_digit_bars(figures["per_digit_before"], figures["per_digit_after"], [figures["digit"]]),
        width="stretch",
    )
