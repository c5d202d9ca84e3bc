"""Training page: train the base MLP in the background with live progress, and see the model's layers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, jobs, state, ui
from lora_core.errors import ConfigError
from lora_core.model import MLP
from lora_core.numbers import pct
from lora_core.params import parameter_table
from lora_core.precision import PRECISIONS
from lora_core.train import DEVICES, SCHEDULES, TrainConfig, resolve_device

FIELD_LABELS = {
    "hidden": "Hidden sizes",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "lr_schedule": "Learning-rate schedule",
    "seed": "Seed",
    "device": "Device",
    "precision": "Precision",
}

st.title("Training the base model")
st.write("A 784 → hidden → hidden → 10 MLP learns MNIST with Adam and cross-entropy, in the background.")
with st.expander("How does a run work?"):
    st.markdown(
        "The run keeps going while you click around or open other pages, and every tab shows its progress. "
        "A stopped or failed run leaves the saved model as it was: the new one replaces it only once complete."
    )

defaults = TrainConfig()
slots = ui.FieldSlots()
with st.form("train_form"):
    st.subheader("Hyperparameters")
    c1, c2 = st.columns(2)
    with c1:
        h1 = st.number_input("Hidden size 1", min_value=1, max_value=16384, value=defaults.hidden[0], key="train_h1")
        h2 = st.number_input("Hidden size 2", min_value=1, max_value=16384, value=defaults.hidden[1], key="train_h2")
        slots.add("hidden")
        epochs = st.number_input("Epochs", min_value=1, max_value=1000, value=defaults.epochs, key="train_epochs")
        slots.add("epochs")
        batch = st.number_input(
            "Batch size", min_value=1, max_value=60000, value=defaults.batch_size, key="train_batch"
        )
        slots.add("batch_size")
    with c2:
        lr = st.number_input(
            "Learning rate", min_value=0.0, max_value=1.0, value=defaults.lr, step=1e-4, format="%.5f", key="train_lr"
        )
        slots.add("lr")
        schedule = st.selectbox(
            "Learning-rate schedule",
            SCHEDULES,
            index=SCHEDULES.index(defaults.lr_schedule),
            key="train_schedule",
            help="linear: decays to 0 by the last step; constant: stays the same",
        )
        slots.add("lr_schedule")
        seed = st.number_input("Seed", min_value=0, value=defaults.seed, key="train_seed")
        slots.add("seed")
        device = st.selectbox("Device", DEVICES, index=DEVICES.index(defaults.device), key="train_device")
        slots.add("device")
        precision = st.selectbox(
            "Precision",
            PRECISIONS,
            index=PRECISIONS.index(defaults.precision),
            key="train_precision",
            help=ui.PRECISION_HELP,
        )
        slots.add("precision")
    submitted = st.form_submit_button("Train the base model", type="primary", disabled=ui.busy())

if submitted:
    config = TrainConfig(
        epochs=int(epochs),
        batch_size=int(batch),
        lr=float(lr),
        lr_schedule=str(schedule),
        seed=int(seed),
        device=str(device),
        hidden=(int(h1), int(h2)),
        precision=str(precision),
    )
    try:
        config.validate()
        resolve_device(config.device)
        ui.check_precision_available(config.precision, config.device)
    except ConfigError as exc:
        slots.show(exc, FIELD_LABELS.get(exc.field))
    else:
        ui.start_job(jobs.start_training, state.store(), config)

ui.busy_note()
ui.job_panel(ui.JOB_PANELS["training"])

# --- what is saved ---------------------------------------------------------------------------------------------
st.header("The saved base model")
status = state.base_status()
if status.error:
    st.error(f"The saved base model cannot be loaded: {status.error}. Train a new one above.")
elif status.record is None:
    st.info("No base model is saved yet: train one with the form above.")
else:
    meta = status.record.meta
    training = meta.get("training", {})
    evaluation = state.base_evaluation(status.record)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Test accuracy", pct(evaluation.accuracy))
    m2.metric("Parameters", f"{meta.get('parameters', 0):,}")
    m3.metric("Training time", f"{training.get('seconds', 0):.1f} s")
    m4.metric("Samples per second", f"{training.get('samples_per_s', 0):,.0f}")
    st.caption(
        f"Trained {ui.when(meta.get('created'))} · {training.get('epochs')} epoch(s), batch "
        f"{training.get('batch_size')}, lr {training.get('lr')}, seed {training.get('seed')}, "
        f"on {training.get('device_used')} · sha256 {status.record.fingerprint[:12]}"
    )
    st.caption(f"Precision: {ui.precision_note(training)}")
    st.vega_lite_chart(
        charts.per_digit_bars(evaluation.per_digit_accuracy, title="Per-digit test accuracy"), width="stretch"
    )
    stale = [a.name for a in state.adapters(status.sha) if a.status == "stale"]
    if stale:
        st.warning(
            "These adapters were trained on an earlier base model and cannot be used with this one: " + ", ".join(stale)
        )

# --- model summary ---------------------------------------------------------------------------------------------
st.header("Model summary")
if status.record is not None:
    model = status.record.model
    st.caption("Layers of the saved base model.")
else:
    model = MLP(*defaults.hidden)
    st.caption("Layers of the default architecture (nothing trained yet).")
table = parameter_table(model)
summary = pd.DataFrame(table.rows(times=" × "))[["layer", "W", "W params", "b", "b params", "base params"]]
st.dataframe(
    summary.rename(columns={"W": "W shape", "b": "b shape", "base params": "total"}),
    hide_index=True,
    width="stretch",
    column_config=ui.counts("W params", "b params", "total"),
)
st.caption(f"{table.base_params:,} parameters in all; ReLU between the layers, raw logits out.")
