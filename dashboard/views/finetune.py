"""LoRA fine-tuning page: train an adapter on one digit in the background, see what it changed, and
manage the saved adapters (activate, enable/disable, rename, delete, download)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, jobs, state, ui
from lora_core.errors import ArtifactError, ConfigError
from lora_core.lab.proof import quantized_sentence
from lora_core.lab.study import default_adapter_name, disabled_equals_base
from lora_core.lora import LoraConfig, rank_limits, validate_adapter_name
from lora_core.lora.nf4 import NF4
from lora_core.numbers import pct
from lora_core.params import parameter_table
from lora_core.precision import PRECISIONS
from lora_core.train import FinetuneConfig, resolve_device

FIELD_LABELS = {
    "digit": "Target digit",
    "rank": "Rank r",
    "alpha": "Alpha",
    "targets": "Target layers",
    "steps": "Steps",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "replay": "Replay fraction",
    "name": "Adapter name",
    "device": "Device",
    "precision": "Precision",
    "loraplus_lr_ratio": "LoRA+ ratio",
    "init": "PiSSA",
    "use_vera": "VeRA",
    "use_dora": "DoRA",
    "base_precision": "QLoRA",
    "nf4_block_size": "QLoRA",
}
LORAPLUS_RATIO = 16.0  # the LoRA+ paper's and PEFT's usual ratio
VARIANT_SWITCHES = (
    (
        "dora",
        "DoRA: a magnitude per output row",
        "Liu et al., 2024 (PEFT's use_dora): each adapted row of W becomes m · (W + s·B·A) / ‖W + s·B·A‖, with m "
        "trained beside A and B (one more parameter per output row). W itself stays frozen.",
        "use_dora",
    ),
    (
        "pissa",
        "PiSSA: start from W's top SVD",
        "Meng et al., 2024 (PEFT's init_lora_weights='pissa'): A and B start from W's top-r singular vectors and "
        "train on the residual base W − s·B₀A₀, built in a copy. The adapter is saved as plain LoRA of rank 2r on "
        "the untouched W (PEFT's conversion), so it loads like any other.",
        "init",
    ),
    (
        "vera",
        "VeRA: two vectors per layer",
        "Kopiczko et al., 2024 (PEFT's VeraConfig): A and B are one frozen random pair shared by every layer (rank "
        "r); each layer trains only d (r values) and b (one per output row): ΔW = diag(b)·B·diag(d)·A. The paper "
        "uses r = 256; here a learning rate of 1e-1 served it best (docs/defaults.md).",
        "use_vera",
    ),
    (
        "qlora",
        "QLoRA: a 4-bit NF4 base",
        "Dettmers et al., 2023: the adapter trains and runs on a 4-bit NormalFloat copy of the frozen base (torchao's "
        "NF4, blocks of 64 weights with double-quantised scales; a layer whose size 64 does not divide stays "
        "float32). W itself stays untouched; the copy's codes and scales are hashed before and after training.",
        "base_precision",
    ),
)

st.title("LoRA fine-tuning")
st.write(
    "Teach the frozen base model one digit better: only the low-rank matrices A and B of each chosen layer "
    "are trained, in the background, with live progress."
)

base = ui.require_base("Fine-tuning")
base_eval = state.base_evaluation(base)
defaults = FinetuneConfig()
layer_limits = rank_limits(base.model)
existing = {a.name for a in state.adapters(base.fingerprint)}

# --- rank: above a layer's limit, capped for that layer ------------------------------------------------------------
PAGE_MAX_RANK = 64  # the rank sweep's top rank; a larger r would change only linear1 and linear2
VERA_MAX_RANK = 1024  # VeRA trains r values per layer whatever r is; its paper uses 256


def rank_ceiling(targets: list[str]) -> int:
    """The largest r offered: PAGE_MAX_RANK, or less where no chosen layer could hold more (linear3 alone: 10); for
    VeRA (its switch is further down the form) VERA_MAX_RANK, since its A and B are shared and frozen."""
    if st.session_state.get("ft_vera", False):
        return VERA_MAX_RANK
    return min(PAGE_MAX_RANK, max((layer_limits[t] for t in targets), default=PAGE_MAX_RANK))


def rank_note(rank: int, targets: list[str]) -> None:
    """Before the run: each chosen layer's rank, capped where r is above its limit, and the real count."""
    if not targets:
        return
    # alpha changes no rank; DoRA's switch (further down the form) adds a magnitude per output row
    dora = bool(st.session_state.get("ft_dora", False))
    vera = bool(st.session_state.get("ft_vera", False)) and not dora  # both on: refused when the run starts
    lora = LoraConfig(r=rank, alpha=defaults.alpha, target_modules=targets, use_dora=dora, use_vera=vera)
    capped = lora.capped_for(base.model)
    trainable = parameter_table(base.model, lora).lora_params
    if vera:
        st.caption(
            f"VeRA: one frozen random A and B of rank {rank} shared by the layers; each layer trains {rank} values "
            f"of d and one value of b per output row: {trainable:,} trainable parameters."
        )
        return
    parts = []
    for t in targets:
        layer_rank = capped.rank_for(t)
        parts.append(
            f"{t} {layer_rank} (capped: its limit is {layer_limits[t]})" if layer_rank < rank else f"{t} {layer_rank}"
        )
    st.caption(f"Per-layer ranks with r = {rank}: {', '.join(parts)}; {trainable:,} trainable parameters.")
    if st.session_state.get("ft_pissa", False):
        st.caption(
            "PiSSA trains these; the adapter saved holds twice the rank per layer (at most the layer's limit): "
            "the trained factors beside the starting ones, so that it runs on the untouched W."
        )
    if capped is not lora:
        st.caption(
            "Capped layers are saved as PEFT's rank_pattern (with alpha_pattern keeping their scale α/r), so PEFT "
            "loads the adapter as it is."
        )


# --- settings ------------------------------------------------------------------------------------------------------
st.header("Settings")
slots = ui.FieldSlots()
weakest = base_eval.weakest_digit
c1, c2, c3 = st.columns(3)
with c1:
    digit = st.selectbox(
        "Target digit",
        list(range(10)),
        index=ui.linked_choice("digit", "ft_digit", list(range(10)), "digit", weakest),
        format_func=lambda d: (
            f"{d} (base accuracy {pct(base_eval.per_digit_accuracy[d])})" + ("  ← weakest" if d == weakest else "")
        ),
        key="ft_digit",
    )
    ui.link("digit", digit)
    slots.add("digit")
    targets = st.multiselect(
        "Target layers",
        list(layer_limits),
        default=list(defaults.targets),
        key="ft_targets",
        help="Layers that get an adapter; the others stay exactly as they are.",
    )
    slots.add("targets")
    rank_max = rank_ceiling(targets)
    linked_rank = ui.linked_choice("rank", "ft_rank", list(range(1, rank_max + 1)), "rank", defaults.rank)
    if st.session_state.setdefault("ft_rank", linked_rank) > rank_max:
        st.session_state["ft_rank"] = rank_max
    rank = st.number_input(
        "Rank r",
        min_value=1,
        max_value=rank_max,
        key="ft_rank",
        help="A rank above a layer's limit (the smaller of its inputs and outputs) is capped for that layer "
        "only, the way PEFT's rank_pattern does; the other layers keep r.",
    )
    ui.link("rank", int(rank))
    rank_note(int(rank), targets)
    slots.add("rank")
    alpha = st.number_input(
        "Alpha", min_value=0.001, value=float(defaults.alpha), key="ft_alpha", help="The update is scaled by alpha / r."
    )
    slots.add("alpha")
with c2:
    steps = st.number_input("Steps", min_value=1, max_value=1_000_000, value=defaults.steps, key="ft_steps")
    slots.add("steps")
    batch = st.number_input("Batch size", min_value=1, max_value=60000, value=defaults.batch_size, key="ft_batch")
    slots.add("batch_size")
    lr = st.number_input(
        "Learning rate", min_value=0.0, max_value=1.0, value=defaults.lr, step=1e-4, format="%.5f", key="ft_lr"
    )
    slots.add("lr")
    precision = st.selectbox(
        "Precision", PRECISIONS, index=PRECISIONS.index(defaults.precision), key="ft_precision", help=ui.PRECISION_HELP
    )
    slots.add("precision")
    loraplus = st.toggle(
        "LoRA+: B learns faster than A",
        value=False,
        key="ft_loraplus",
        help="Hayou et al., 2024 (PEFT's create_loraplus_optimizer): A learns at the learning rate, B at the "
        "ratio times it. The adapter saved is plain LoRA; only its training differs.",
    )
    ratio = None
    if loraplus:
        ratio = st.number_input("LoRA+ ratio (B's rate / A's)", value=LORAPLUS_RATIO, key="ft_loraplus_ratio")
    slots.add("loraplus_lr_ratio")
    # LoRA's variants that change the adapter itself: (session key, label, help, the field an error names)
    switched = {}
    for key, label, explained, field in VARIANT_SWITCHES:
        switched[key] = st.toggle(label, value=False, key=f"ft_{key}", help=explained)
        slots.add(field)
    dora, pissa, vera = switched["dora"], switched["pissa"], switched["vera"]
with c3:
    replay = st.slider("Replay fraction", 0.0, 1.0, float(defaults.replay), 0.05, key="ft_replay")
    st.caption(
        "The share of each batch drawn from the other nine digits: it keeps the adapter from forgetting them "
        "(0 trains on the target digit only, and overall accuracy collapses)."
    )
    slots.add("replay")
    name_in = st.text_input(
        "Adapter name",
        value="",
        placeholder=default_adapter_name((digit,)),
        key="ft_name",
        help="Letters, digits, '-', '_' and '.'; empty: the placeholder.",
    )
    slots.add("name")
    overwrite = st.checkbox("Overwrite an adapter with the same name", value=False, key="ft_overwrite")

name = name_in.strip() or default_adapter_name((digit,))
config = FinetuneConfig(
    digits=(int(digit),),
    rank=int(rank),
    alpha=float(alpha),
    targets=tuple(targets),
    steps=int(steps),
    batch_size=int(batch),
    lr=float(lr),
    replay=float(replay),
    precision=str(precision),
    loraplus_lr_ratio=float(ratio) if ratio is not None else None,
    use_dora=bool(dora),
    init="pissa" if pissa else defaults.init,
    use_vera=bool(vera),
    base_precision=NF4 if switched["qlora"] else defaults.base_precision,
)
if st.button("Fine-tune the adapter", type="primary", disabled=ui.busy(), key="ft_start"):
    try:
        validate_adapter_name(name)
        config.validate(base.model)
        resolve_device(config.device)
        ui.check_precision_available(config.precision, config.device)
        if name in existing and not overwrite:
            raise ConfigError("name", f"{name!r} already exists; choose another name or tick overwrite")
    except ConfigError as exc:
        slots.show(exc, FIELD_LABELS.get(exc.field))
    else:
        ui.start_job(jobs.start_finetune, state.store(), base, config, name, overwrite, base_eval)
ui.busy_note()
job = ui.job_panel(ui.JOB_PANELS["finetune"])

# --- result ---------------------------------------------------------------------------------------------------------
st.header("Result")


def show_result(
    title: str,
    before: dict[str, Any],
    after: dict[str, Any],
    digits: list[int],
    trainable: int,
    quantized: dict[str, Any] | None = None,
) -> None:
    st.caption(title)
    if quantized:  # QLoRA: "after" is the adapter on its NF4 base, "before" the float32 base
        st.info(quantized_sentence(quantized))
    r1, r2, r3 = st.columns(3)
    r1.metric(
        "Overall accuracy", pct(after["accuracy"]), f"{100 * (after['accuracy'] - before['accuracy']):+.2f} points"
    )
    for d in digits[:1]:
        r2.metric(
            f"Digit {d}",
            pct(after["per_digit_accuracy"][d]),
            f"{100 * (after['per_digit_accuracy'][d] - before['per_digit_accuracy'][d]):+.2f} points",
        )
    r3.metric(
        "Trainable parameters",
        f"{trainable:,}",
        f"{100 * trainable / base.meta.get('parameters', 1):.3f}% of the base",
        delta_color="off",
        delta_arrow="off",
    )
    st.vega_lite_chart(
        charts.per_digit_bars(before["per_digit_accuracy"], after["per_digit_accuracy"], digits), width="stretch"
    )


if job is not None and job.status == jobs.DONE:
    outcome = job.result
    show_result(
        f"Adapter `{outcome.name}`, just fine-tuned: its training steps took {outcome.seconds:.1f} s of the run's "
        f"{job.seconds:.1f} s (the rest loads the data, evaluates before and after, and saves).",
        {"accuracy": outcome.before.accuracy, "per_digit_accuracy": outcome.before.per_digit_accuracy},
        {"accuracy": outcome.after.accuracy, "per_digit_accuracy": outcome.after.per_digit_accuracy},
        list(outcome.digits),
        outcome.trainable_params,
        outcome.metrics.get("quantized_base"),
    )
else:
    active = state.active_adapter(base.fingerprint)
    info = next((a for a in state.usable_adapters(base.fingerprint) if a.name == active), None)
    metrics = info.record.metrics if info else None
    if info is not None and metrics and "before" in metrics and "after" in metrics:
        show_result(
            f"The active adapter `{info.name}` as measured when it was saved ({ui.when(metrics.get('created'))}).",
            metrics["before"],
            metrics["after"],
            [] if info.domain_task else info.targets,  # a domain task's metrics are on its transformed digits
            int(metrics.get("trainable_params", 0)),
            metrics.get("quantized_base"),
        )
    else:
        st.info("No adapter is active yet: fine-tune one above.")

# --- management -----------------------------------------------------------------------------------------------------
st.header("Saved adapters")
infos = state.adapters(base.fingerprint)
active = state.active_adapter(base.fingerprint)
if not infos:
    st.info("No adapters are saved yet.")
    st.stop()
rows = []
for a in infos:
    cfg, m = a.record.config, a.record.metrics or {}
    before, after = m.get("before", {}), m.get("after", {})
    rows.append(
        {
            "name": a.name,
            "active": "yes" if a.name == active else "",
            "status": {"ok": "usable", "stale": "stale: other base model", "broken": "broken"}[a.status],
            "trained for": a.label,
            "rank": cfg.r if cfg else None,
            "alpha": cfg.alpha if cfg else None,
            "layers": ", ".join(cfg.target_modules) if cfg else "",
            "accuracy before %": round(100 * before["accuracy"], 2) if "accuracy" in before else None,
            "accuracy after %": round(100 * after["accuracy"], 2) if "accuracy" in after else None,
            "precision": m.get("finetune", {}).get("precision_used", ""),
            "saved": ui.when(m.get("created")) if m else "",
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
for a in infos:
    if a.status == "broken":
        st.warning(f"`{a.name}` is broken and cannot be loaded: {a.message}")

names = [a.name for a in infos]
default_index = names.index(active) if active in names else 0
if st.session_state.get("manage_seen_active") != active:  # a newly active one (just trained, say) is the one to manage
    st.session_state["manage_seen_active"] = active
    st.session_state.pop("manage_adapter", None)
picked = st.selectbox("Adapter to manage", names, index=default_index, key="manage_adapter")
picked_info = next(a for a in infos if a.name == picked)

b1, b2, b3 = st.columns(3)
with b1:
    if st.button("Activate", disabled=not picked_info.ok or picked == active, key="manage_activate"):
        try:
            state.load_into_session(base, picked)
        except ArtifactError as exc:
            st.error(f"`{picked}` cannot be activated: {exc}")
        else:
            state.set_active_adapter(picked)
            st.rerun()
    if st.button("Use the plain base model", disabled=active is None, key="manage_deactivate"):
        state.set_active_adapter(None)
        st.rerun()
with b2:
    st.toggle(
        "Adapter enabled",
        value=state.adapters_enabled(),
        key="manage_enabled",
        on_change=lambda: state.set_adapters_enabled(bool(st.session_state["manage_enabled"])),
        help="Disabled: the model runs the frozen base weights only and must predict exactly like the base.",
    )
    if active and not state.adapters_enabled():
        check_key = ("disabled-check", base.fingerprint, active)
        cache = st.session_state.setdefault("_disabled_checks", {})
        if check_key not in cache:
            model = state.load_into_session(base, active)
            model.set_adapter(active)
            cache[check_key] = disabled_equals_base(model, state.data().test_x)
        if cache[check_key]:
            st.success(f"With `{active}` disabled, all 10,000 test logits equal the base model's exactly.")
        else:
            st.error(f"With `{active}` disabled the logits differ from the base model's.")
with b3:
    try:
        st.download_button(
            f"Download {picked}.zip",
            data=state.store().adapter_zip(picked),
            file_name=f"{picked}.zip",
            mime="application/zip",
            key="manage_download",
            help="The adapter's PEFT-layout folder (adapter_config.json, adapter_model.safetensors, metrics.json).",
        )
    except (ArtifactError, ConfigError, OSError) as exc:
        st.error(f"Cannot zip `{picked}`: {exc}")

r1, r2 = st.columns(2)
with r1:
    new_name = st.text_input("New name", key="manage_new_name", placeholder=f"{picked}-v2")
    rename_slot = st.empty()
    if st.button("Rename", key="manage_rename", disabled=ui.busy()):
        try:
            validate_adapter_name(new_name.strip())
            state.store().rename_adapter(picked, new_name.strip())
        except (ConfigError, ArtifactError, OSError) as exc:
            rename_slot.error(f"Cannot rename: {state.describe_error(exc)}")
        else:
            state.forget_in_session(picked)
            if active == picked:
                state.set_active_adapter(new_name.strip())
            st.rerun()
with r2:
    confirm = st.checkbox(f"Yes, delete {picked}", key="manage_confirm_delete")
    if st.button("Delete", key="manage_delete", disabled=not confirm or ui.busy()):
        try:
            state.store().delete_adapter(picked)
        except (ArtifactError, ConfigError, OSError) as exc:
            st.error(f"Cannot delete: {state.describe_error(exc)}")
        else:
            state.forget_in_session(picked)
            if active == picked:
                state.set_active_adapter(None)
            st.session_state.pop("manage_confirm_delete", None)
            st.rerun()
