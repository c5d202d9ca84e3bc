"""Parameter inspection page: how few parameters LoRA adds, proof that the base weights never change,
and what the adapter learned (its update matrix and singular values)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from dashboard import charts, jobs, state, ui
from lora_core.errors import ArtifactError
from lora_core.params import parameter_table
from lora_core.storage import ADAPTER_WEIGHTS
from lora_core.study import base_weights_proof

st.title("Parameter inspection")
st.write(
    "LoRA trains two thin matrices A and B beside each frozen weight W. Here: how many parameters that is, "
    "the proof that W did not move, and what the update B·A·α/r looks like."
)

base = ui.require_base("Parameter inspection")
usable = state.usable_adapters(base.fingerprint)
names = [a.name for a in usable]
active = state.active_adapter(base.fingerprint)
chosen = None
model = None
config = None
if names:
    chosen = st.selectbox("Adapter", names, index=names.index(active) if active in names else 0, key="params_adapter")
    info = next(a for a in usable if a.name == chosen)
    try:
        model = state.load_into_session(base, chosen)
        config = info.record.config
    except ArtifactError as exc:
        st.error(f"Adapter `{chosen}` cannot be loaded: {exc}")
        chosen = None
else:
    st.info("There is no adapter yet: the table shows the base model only.")
    ui.offer_finetune(base)

# --- the table ---------------------------------------------------------------------------------------------------
st.header("Layers: W, b, A and B")
table = parameter_table(model if model is not None else base.model, config)


def shape(s: tuple[int, ...] | None) -> str:
    return " × ".join(map(str, s)) if s else "–"


rows = [
    {
        "layer": r.layer,
        "W": shape(r.weight_shape),
        "W params": r.weight_count,
        "b": shape(r.bias_shape),
        "b params": r.bias_count,
        "A": shape(r.a_shape),
        "A params": r.a_count,
        "B": shape(r.b_shape),
        "B params": r.b_count,
    }
    for r in table.layers
]
rows.append(
    {
        "layer": "total",
        "W": "",
        "W params": sum(r.weight_count for r in table.layers),
        "b": "",
        "b params": sum(r.bias_count for r in table.layers),
        "A": "",
        "A params": sum(r.a_count for r in table.layers),
        "B": "",
        "B params": sum(r.b_count for r in table.layers),
    }
)
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    width="stretch",
    column_config=ui.counts("W params", "b params", "A params", "B params"),
)
m1, m2, m3 = st.columns(3)
m1.metric("Frozen (base W and b)", f"{table.base_params:,}")
m2.metric("Trainable (LoRA A and B)", f"{table.lora_params:,}")
m3.metric(
    "LoRA adds", f"{table.lora_percent:.3f}%", "of the base model's parameters", delta_color="off", delta_arrow="off"
)
if config is not None:
    st.caption(
        f"Adapter `{chosen}`: rank r = {config.r}, α = {config.alpha:g}, scale α/r = {config.scale:g}, "
        f"layers {', '.join(config.target_modules)}."
    )

# --- the proof ----------------------------------------------------------------------------------------------------
st.header("Proof: the base weights did not change")
st.write(
    "For every base tensor: the largest absolute difference between the weights in memory now and the "
    "checkpoint saved before fine-tuning. LoRA leaves W alone, so every row must read 0."
)
checks: list[tuple[str, torch.nn.Module]] = []
job = ui.current_job()
if job is not None and job.kind == "finetune" and job.status == jobs.DONE:
    tuned = job.result
    checks.append((f"the model fine-tuned in this session (adapter `{tuned.outcome.name}`)", tuned.lora_model))
if model is not None:
    checks.append((f"this session's model with adapter `{chosen}` loaded", model))
else:
    checks.append(("this session's model", state.session_lora(base)))
for label, checked in checks:
    try:
        proof = base_weights_proof(state.store(), checked)
    except ArtifactError as exc:
        st.error(f"The checkpoint could not be read: {exc}")
        continue
    ok = all(p["identical"] for p in proof)
    st.subheader((":material/check_circle: PASS: " if ok else ":material/cancel: FAIL: ") + label)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "base tensor": p["tensor"],
                    "max |now − saved|": p["max_abs_diff"],
                    "bit-identical": "yes" if p["identical"] else "NO",
                }
                for p in proof
            ]
        ),
        hide_index=True,
        width="stretch",
    )

# --- what the adapter learned ----------------------------------------------------------------------------------------
st.header("What the adapter learned")
if model is None or config is None or chosen is None:
    st.info("Fine-tune an adapter to see its update here.")
    st.stop()
layers = [n for n in config.target_modules if n in model.lora_layers()]
layer_name = st.selectbox("Layer", layers, key="params_layer")
layer = model.lora_layers()[layer_name]
cache = st.session_state.setdefault("_svd_cache", {})
key = (base.fingerprint, chosen, model.adapter_meta(chosen).get("created"), layer_name)
if key not in cache:
    with torch.no_grad():
        delta = layer.delta_weight(chosen).detach().cpu()
        w = layer.base_layer.weight.detach().cpu()
        cache.clear()
        cache[key] = (delta.numpy(), torch.linalg.svdvals(delta).numpy(), torch.linalg.svdvals(w).numpy())
delta_np, update_sv, weight_sv = cache[key]
left, right = st.columns(2)
with left:
    st.plotly_chart(charts.update_heatmap(delta_np, f"Update scale·B·A of {layer_name}"), width="stretch")
with right:
    st.plotly_chart(charts.singular_values(update_sv, weight_sv, rank=config.r), width="stretch")
numerical_rank = int((update_sv > update_sv.max() * 1e-5).sum()) if update_sv.size else 0
st.caption(
    f"{layer_name}: W is {layer.out_features} × {layer.in_features}; the update has {numerical_rank} singular "
    f"values above 10⁻⁵ of the largest (rank r = {config.r}): a {config.r}-dimensional change to a "
    f"{min(layer.out_features, layer.in_features)}-dimensional weight."
)

st.subheader("Files on disk")
store = state.store()
try:
    adapter_bytes = (store.adapter_dir(chosen) / ADAPTER_WEIGHTS).stat().st_size
    base_bytes = (store.base_dir / "model.safetensors").stat().st_size
except OSError as exc:
    st.warning(f"The files could not be measured (changed by another session?): {exc}")
    st.stop()
f1, f2, f3 = st.columns(3)
f1.metric("Adapter weights", f"{adapter_bytes / 1024:,.0f} KiB")
f2.metric("Base checkpoint", f"{base_bytes / 1024:,.0f} KiB")
f3.metric("Adapter / base", f"{100 * adapter_bytes / base_bytes:.2f}%")
