"""Parameter inspection page: how few parameters LoRA adds, checks that the base weights did not change
(the hashes a fine-tune run recorded, and a live check with a control that can fail), and what the
adapter learned (its update matrix and singular values)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, diagram, state, ui
from lora_core.errors import ArtifactError
from lora_core.lab.proof import (
    FAIL,
    PASS,
    live_check,
    pissa_rows,
    pissa_sentence,
    quantized_rows,
    quantized_sentence,
    recorded_check,
)
from lora_core.lab.readings import read_nf4_levels
from lora_core.lab.truncation import TruncationCurve
from lora_core.lora import LoraConfig, rank_limits
from lora_core.model import MLP
from lora_core.numbers import pct
from lora_core.params import ParameterTable, parameter_table, update_statistics
from lora_core.store.artifacts import ADAPTER_WEIGHTS

LIVE_KEY = "_live_check"

st.title("Parameter inspection")
st.write(
    "LoRA trains two thin matrices A and B beside each frozen weight W: how many parameters that adds, two "
    "checks that W did not move, and what the update B·A·α/r looks like."
)

view = ui.base_selector("params_base")
base = ui.require_base("Parameter inspection", view)
picked = ui.choose_adapter(base, "Adapter", "params_adapter", "the table shows the base model only.", view)
chosen = picked.name if picked else None
model = None
config = None
if picked is not None:
    try:
        model = state.load_into_session(base, picked.name, view.where)
        config = picked.record.config
    except ArtifactError as exc:
        st.error(f"Adapter `{picked.name}` cannot be loaded: {exc}")
        chosen = None

# --- the table ---------------------------------------------------------------------------------------------------
st.header("Layers: W, b, A and B")
table = parameter_table(model if model is not None else base.model, config)
columns = table.columns()
st.dataframe(
    pd.DataFrame(table.rows(times=" × ", none="–"))[columns],
    hide_index=True,
    width="stretch",
    column_config=ui.counts(*[c for c in columns if c.endswith(" params")]),
)
m1, m2, m3 = st.columns(3)
m1.metric("Frozen (base W and b)", f"{table.base_params:,}")
pissa_record = (picked.record.metrics or {}).get("pissa") if picked is not None and chosen else None
if pissa_record:  # saved at twice the rank it trained: the trained factors beside their fixed start
    m2.metric("LoRA A and B (saved)", f"{table.lora_params:,}")
    trained = (picked.record.metrics or {}).get("trainable_params")
    st.caption(
        f"A PiSSA adapter: it trained rank {pissa_record['trained_rank']}"
        + (f" ({trained:,} parameters)" if isinstance(trained, int) else "")
        + f"; it is saved at rank {pissa_record['saved_rank']}, the trained factors beside their starting point."
    )
elif config is not None and config.use_vera:  # its A and B are frozen and shared: it trains two vectors per layer
    m2.metric("Trainable (VeRA's d and b)", f"{table.lora_params:,}")
else:
    m2.metric("Trainable (LoRA A and B)", f"{table.lora_params:,}")
m3.metric(
    "LoRA adds", f"{table.lora_percent:.3f}%", "of the base model's parameters", delta_color="off", delta_arrow="off"
)


def layer_ranks(config: LoraConfig, base_model: MLP, table: ParameterTable) -> None:
    """The config's r, and each adapted layer's real rank: r, or capped at the layer's limit (PEFT's
    rank_pattern, with alpha_pattern keeping the scale), with its real parameter count."""
    if config.use_vera:  # one shared pair: no rank of its own per layer, and no scale
        st.caption(
            f"Adapter `{chosen}` is a VeRA adapter: one frozen random A and B of rank {config.r} (from seed "
            f"{config.projection_prng_key}) shared by {', '.join(config.target_modules)}; each layer trains d "
            f"({config.r} values) and b (one per output row): {table.lora_params:,} trainable parameters."
        )
        return
    capped = config.capped_for(base_model)
    limits = rank_limits(base_model)
    counts = {layer.layer: layer.lora_count for layer in table.layers}
    what = "parameters saved" if pissa_record else "trainable parameters"  # PiSSA saves twice the rank it trained
    st.subheader("Rank per layer")
    rows = []
    for name in capped.target_modules:
        rank = capped.rank_for(name)
        rows.append(
            {
                "layer": name,
                "rank": rank,
                "limit min(in, out)": limits[name],
                "capped": f"capped from r = {config.r}" if rank < config.r else "",
                "scale α/r": capped.scale_for(name),
                "A + B params": counts.get(name, 0),
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config=ui.counts("A + B params"))
    caps = [f"{row['layer']} at {row['rank']}" for row in rows if row["capped"]]
    # what r on every adapted layer would have cost: A (r x in) and B (out x r)
    uncapped = sum(config.r * sum(layer.weight_shape) for layer in table.layers if layer.a_shape is not None)
    note = (
        f" Capped: {', '.join(caps)}, its limit (saved as PEFT's rank_pattern), so the adapter has "
        f"{table.lora_params:,} {what}, not the {uncapped:,} that rank {config.r} on every layer "
        "would need."
        if caps
        else f" Every layer holds rank {config.r}: {table.lora_params:,} {what}."
    )
    st.caption(
        f"Adapter `{chosen}`: rank r = {config.r}, α = {config.alpha:g}, scale α/r = {config.scale:g}, "
        f"layers {', '.join(config.target_modules)}.{note}"
    )


if config is not None:
    layer_ranks(config, base.model, table)


# --- the network as a picture (dashboard/diagram.py) -----------------------------------------------------------------
st.subheader("The network with this adapter's LoRA branches")
diagram.show(base.model, config, chosen)

# --- did W move? ----------------------------------------------------------------------------------------------------
st.header("Did the base weights change?")
st.subheader("Recorded by the fine-tune run")
if chosen is None:
    st.info("Fine-tune an adapter: the run records a hash of every base tensor before and after training.")
else:
    check = recorded_check(picked.record.metrics, base.model)
    st.write(
        f"While adapter `{chosen}` was fine-tuned, the run hashed (sha256) every base tensor before its first "
        "step and after its last one. Both must be equal, and equal to the base model loaded now."
    )
    if check.status == "not recorded":
        st.info(check.summary)
    else:
        (st.success if check.passed else st.error)(check.summary)
        st.dataframe(pd.DataFrame(check.rows(digits=16)), hide_index=True, width="stretch")
    if pissa_record:
        st.warning(pissa_sentence(pissa_record))
        st.dataframe(pd.DataFrame(pissa_rows(pissa_record, digits=16)), hide_index=True, width="stretch")
    quantized = (picked.record.metrics or {}).get("quantized_base")
    if quantized:
        st.subheader("The 4-bit base it trained and runs on (QLoRA)")
        codes = quantized["codes_sha256"]
        (st.success if codes["before"] and codes["before"] == codes["after"] else st.error)(
            quantized_sentence(quantized)
        )
        st.dataframe(pd.DataFrame(quantized_rows(quantized, digits=16)), hide_index=True, width="stretch")
        nf4_accuracy = quantized.get("base_accuracy")
        before = (picked.record.metrics or {}).get("before")
        if nf4_accuracy and before:  # what the 4 bits cost, digit by digit, before any adapter
            st.vega_lite_chart(
                charts.per_digit_bars(
                    before["per_digit_accuracy"],
                    nf4_accuracy["per_digit_accuracy"],
                    labels=("float32 base", "NF4 base (no adapter)"),
                    title="What 4 bits cost the base, per digit (the test set the adapter was judged on, when saved)",
                ),
                width="stretch",
            )
        largest = max(quantized["layers"], key=lambda layer: quantized["layers"][layer]["weights"])
        levels = state.nf4_levels(base, largest, quantized["block_size"])
        st.plotly_chart(
            charts.nf4_levels(levels.edges, levels.counts, levels.levels, levels.level_shares), width="stretch"
        )
        st.caption(read_nf4_levels(levels.level_shares, levels.uniform_shares, largest, levels.weights))

st.subheader("Live check, with a control")
st.write("Train a throwaway adapter for 20 steps and compare every base tensor bit for bit, beside a control.")
with st.expander("How is this measured?"):
    st.markdown(
        "The 20 steps are real LoRA training steps (the same code as fine-tuning) on a copy of the loaded base "
        "model. The control runs the same 20 steps on the same batches with W trainable: there W must change, or "
        "the check could not tell a frozen W from one it failed to look at."
    )
if st.button("Run the live check", key="run_live_check"):
    with st.spinner("Training a throwaway adapter and the control..."):
        result = live_check(base.model, state.data())
    st.session_state[LIVE_KEY] = {"sha": base.fingerprint, "result": result}
live = st.session_state.get(LIVE_KEY)
if live is not None and live["sha"] == base.fingerprint:
    result = live["result"]
    control = {c.key: c for c in result.control}
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "base tensor": d.key,
                    "LoRA run: max |after − before|": d.max_abs_diff,
                    "LoRA run: bit-identical": "yes" if d.identical else "NO",
                    "control: max |after − before|": control[d.key].max_abs_diff,
                    "control: changed": "no" if control[d.key].identical else "yes",
                }
                for d in result.lora
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "layer": n.layer,
                    "‖A‖ before": n.a_before,
                    "‖A‖ after": n.a_after,
                    "‖B‖ before": n.b_before,
                    "‖B‖ after": n.b_after,
                    "A and B changed": "yes" if n.a_changed and n.b_changed else "NO",
                }
                for n in result.adapter
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    seconds = result.seconds
    st.caption(
        f"{result.steps} steps of batch {result.batch_size}, lr {result.lr:g}, rank {result.rank}, seed "
        f"{result.seed}. Time: LoRA run {seconds['lora']:.2f} s, control {seconds['control']:.2f} s, "
        f"{seconds['total']:.2f} s in all."
    )
    if result.pissa_summary:
        st.info(result.pissa_summary)
    if result.qlora_summary:
        st.info(result.qlora_summary)
    show = {PASS: st.success, FAIL: st.error}.get(result.verdict, st.warning)
    show(result.summary)

# --- what the adapter learned ----------------------------------------------------------------------------------------
st.header("What the adapter learned")
if model is None or config is None or chosen is None:
    st.info("Fine-tune an adapter to see its update here.")
    st.stop()
layers = [n for n in config.target_modules if n in model.lora_layers()]
layer_name = st.selectbox("Layer", layers, key="params_layer")
layer = model.lora_layers()[layer_name]
cache = st.session_state.setdefault("_svd_cache", {})
key = (view.name, base.fingerprint, chosen, model.adapter_meta(chosen).get("created"), layer_name)
if key not in cache:
    cache.clear()
    cache[key] = update_statistics(layer_name, layer, chosen, weight_spectrum=True)
stats = cache[key]
# a VeRA adapter's shared rank may exceed what a layer holds: the update's rank is at most the smaller of the two
layer_rank = min(config.capped_for(base.model).rank_for(layer_name), layer.out_features, layer.in_features)
formula = (
    "diag(b)·B·diag(d)·A" if config.use_vera else "m·(W + s·B·A)/‖W + s·B·A‖ − W" if config.use_dora else "scale·B·A"
)
left, right = st.columns(2)
with left:
    st.plotly_chart(charts.update_heatmap(stats.delta.numpy(), f"Update {formula} of {layer_name}"), width="stretch")
with right:
    weight_sv = stats.weight_singular_values
    assert weight_sv is not None
    st.plotly_chart(
        charts.singular_values(stats.singular_values.numpy(), weight_sv.numpy(), rank=layer_rank), width="stretch"
    )
st.caption(
    f"{layer_name}: W is {layer.out_features} × {layer.in_features}; the update has {stats.numerical_rank} singular "
    f"values above 10⁻⁵ of the largest (this layer's rank {layer_rank}"
    f"{f', capped from r = {config.r}' if layer_rank < config.r else ''}), Frobenius norm "
    f"{stats.frobenius_norm:.4g}: a {layer_rank}-dimensional change to a "
    f"{min(layer.out_features, layer.in_features)}-dimensional weight."
)


# --- rank truncation: how much of its rank the adapter uses -------------------------------------------------------
def truncation_part() -> None:
    """Each layer's update kept to its top k singular directions, with k as a control that the chart and the
    figures follow at once; the curve is computed once per adapter, in the background."""
    st.subheader("How much of its rank the adapter uses")
    st.write(
        "Keep only the top k singular directions of each layer's update and see whether the accuracy follows: "
        "where it levels off is the rank the adapter really uses."
    )
    assert picked is not None
    if picked.is_dora:
        st.info(
            f"Adapter `{picked.name}` is a DoRA adapter: its change to W rescales every row (m · (W + s·B·A) / "
            "‖W + s·B·A‖ − W), so it has no low rank to cut. The truncation applies to LoRA adapters."
        )
        return
    task = picked.domain_task
    curves = [state.adapter_truncation_curve(base, picked.record, None, view.where)]
    if task is not None:
        curves.append(state.adapter_truncation_curve(base, picked.record, task, view.where))
    results = ui.background_results(
        curves,
        "Evaluating the adapter with each number of directions kept (once per adapter)...",
        f"Adapter `{chosen}` cannot be truncated",
    )
    if results is not None:
        truncation_section(results[0], results[1] if task is not None else None)


@st.fragment
def truncation_section(plain: TruncationCurve, on_task: TruncationCurve | None) -> None:
    """Moving the control reruns only this section: every figure in it is looked up on the curves."""
    assert picked is not None
    ranks = plain.ranks
    whole = ranks[-1]
    key = f"params_k-{chosen}"  # each adapter has its own grid of k
    k = st.select_slider(
        "Directions kept per layer (k)",
        options=ranks,
        value=ui.linked_choice("k", key, ranks, "k", whole),
        key=key,
        help="Each layer's update s·B·A keeps its top k singular directions; a layer of rank k or less keeps "
        "its whole update.",
    )
    ui.link("k", k)
    lines, measured_on = charts.accuracy_lines(plain, on_task, [] if on_task is not None else picked.targets)
    point = ranks.index(k)
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.truncation_curve(ranks, lines, k), width="stretch")
    with right:
        for label, values, _ in lines:
            st.metric(
                f"{label[0].upper()}{label[1:]} at k = {k}",
                pct(values[point]),
                f"{100 * (values[point] - values[-1]):+.2f} points vs the whole update",
                delta_color="off",
                delta_arrow="off",
            )
    kept = ", ".join(
        f"{name} {100 * shares[point]:.1f}% (rank {plain.layer_ranks[name]})" for name, shares in plain.energy.items()
    )
    st.caption(
        f"Measured on {measured_on}, with the update merged into W. At k = {k} each layer keeps this share of its "
        f"update's squared norm: {kept}. k = {whole} is the whole update."
    )


truncation_part()

st.subheader("Files on disk")
store = view.store
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
