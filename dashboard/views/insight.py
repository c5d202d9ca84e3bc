"""Insight page: the LoRA paper's analysis (Hu et al. 2021, section 7) on this base model's adapters, and what
training costs in memory.

The heavy part (training the three analysis adapters, measuring memory) runs as a background job of kind
"analysis" (dashboard.jobs.start_analysis), which saves its results under <artifacts>/analysis/; this page only
reads them (lora_core.lab.analysis.load_analysis), so they show again after a restart.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, jobs, state, ui
from lora_core.errors import ArtifactError, ConfigError
from lora_core.lab import readings
from lora_core.lab.analysis import AnalysisSettings, load_analysis
from lora_core.lab.analysis.intruders import IntruderSettings, load_intruders, runs_of

FIELD_LABELS = {
    "small_rank": "Small rank",
    "large_rank": "Large rank",
    "steps": "Steps per adapter",
    "batch_size": "Batch size",
    "memory_steps": "Steps of each measured run",
    "seed": "Seed",
    "other_seed": "Second seed",
}
BASIS_LABELS = {"A": "of A (the paper)", "update": "of the update scale·B·A"}
PAIR_TITLES = {
    "ranks": "Two ranks, one seed: do the small adapter's top directions lie inside the large one's?",
    "seeds": "One rank, two seeds: do two trainings find the same directions?",
}

st.title("Insight: what the adapter learned, and what training costs")
st.write("What the low-rank update learns, measured as the LoRA paper did, and what training holds in memory.")
with st.expander("What the paper asked, and what runs here"):
    st.markdown(
        "The LoRA paper (Hu et al. 2021, section 7) asked whether adapters of different ranks or seeds find the "
        "same directions (their figure 3), and whether the update amplifies directions the frozen weight W "
        "already uses (their table 7). Here the same analysis runs on adapters trained on this base model's "
        "weakest digit, beside what full fine-tuning and LoRA hold in memory while they train."
    )

base = ui.require_base("The analysis")
store = state.store()
defaults = AnalysisSettings()
slots = ui.FieldSlots()

# --- running it ------------------------------------------------------------------------------------------------------
st.header("Run the analysis")
st.write("Train three adapters on the weakest digit, then measure what training holds in memory at each rank.")
with st.expander("What runs?"):
    st.markdown(
        "The three adapters: the small rank with two seeds, and the large rank with the first seed (α = 2·rank "
        "for each). One saved with exactly these settings is reused instead of trained. The memory of full "
        f"fine-tuning and of LoRA is measured at ranks {', '.join(map(str, defaults.memory_ranks))}. The adapters "
        "are not saved; the results are."
    )
c1, c2, c3, c4 = st.columns(4)
small_rank = c1.number_input("Small rank", 1, 1000, defaults.small_rank, key="insight_small_rank")
large_rank = c2.number_input("Large rank", 1, 1000, defaults.large_rank, key="insight_large_rank")
steps = c3.number_input("Steps per adapter", 1, 100_000, defaults.steps, key="insight_steps")
batch_size = c4.number_input("Batch size", 1, 4096, defaults.batch_size, key="insight_batch")
memory_steps = st.number_input(
    "Steps of each measured run (memory)", 1, 1000, defaults.memory_steps, key="insight_memory_steps"
)
slots.add(*FIELD_LABELS)
settings = AnalysisSettings(
    small_rank=int(small_rank),
    large_rank=int(large_rank),
    steps=int(steps),
    batch_size=int(batch_size),
    memory_steps=int(memory_steps),
)
valid = True
try:
    settings.validate(base.model)
except ConfigError as exc:
    slots.show(exc, FIELD_LABELS.get(exc.field))
    valid = False
job = ui.job_panel(ui.JOB_PANELS["insight"])
if job is None or not job.running:
    if st.button("Run the analysis", type="primary", disabled=ui.busy() or not valid, key="insight_run"):
        ui.start_job(jobs.start_analysis, store, settings)
    if ui.busy():
        ui.busy_note()

# --- the saved results -----------------------------------------------------------------------------------------------
saved = load_analysis(store)
for error in saved.errors:
    st.error(f"A saved analysis cannot be read: {error}. Run the analysis again to replace it.")


def stale_note(result: dict[str, Any]) -> None:
    if result.get("base_sha256") != base.fingerprint:
        st.warning("These results were computed on another base model than the one saved now; run them again.")
    load = (result.get("environment") or {}).get("loadavg")
    load_text = f", load average {load[0]:.1f}" if load else ""
    st.caption(f"Computed {ui.when(result.get('created'))} on {result['environment'].get('device')}{load_text}.")


adapters = saved.adapters
st.header("Subspace similarity (the paper's figure 3)")
if adapters is None:
    st.info("No analysis yet: run it above. Its results are saved and show here again after a restart.")
else:
    stale_note(adapters)
    st.write(
        "φ(A₁, A₂, i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j), with U the right singular vectors of each "
        "adapter's A (r × in): 1 where the top-i directions of one lie inside the top-j of the other, about "
        "max(i, j)/in for unrelated random directions."
    )
    sources = ", ".join(f"`{s['key']}` ({s['source']})" for s in adapters["adapters"])
    st.caption(f"Adapters on digit {adapters['target_digits'][0]}: {sources}.")
    bases = list(adapters["similarity"])
    basis = st.radio(
        "Directions compared",
        bases,
        format_func=lambda b: BASIS_LABELS.get(b, b),
        horizontal=True,
        key="insight_basis",
        help="The paper compares the right singular vectors of A. A still holds much of its random start where "
        "B does not use it; the update's own input directions (inside A's row space) leave that out.",
    )
    for pair, entries in adapters["similarity"][basis].items():
        if not entries:
            continue
        names = tuple(entries[0]["adapters"])
        st.subheader(PAIR_TITLES.get(pair, pair))
        columns = st.columns(len(entries))
        for column, entry in zip(columns, entries):
            with column:
                st.plotly_chart(
                    charts.subspace_heatmap(entry["phi"], f"{entry['layer']}: {names[0]} vs {names[1]}", names),
                    width="stretch",
                    key=f"phi-{basis}-{pair}-{entry['layer']}",
                )
        k = entries[0]["k"]
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "layer": e["layer"],
                        "ranks": f"{e['ranks'][0]} vs {e['ranks'][1]}",
                        "φ(1,1)": e["top1"],
                        f"φ({k},{k})": e["top_k"],
                        "φ(1, all)": e["top1_in_all"],
                        f"φ({k}, all)": e["top_k_in_all"],
                        "random φ(1,1)": e["random_top1"],
                        f"random φ({k},{k})": e["random_top_k"],
                        **(
                            {"φ(1, all) at init": e["init"]["top1_in_all"], f"φ({k},{k}) at init": e["init"]["top_k"]}
                            if e.get("init")
                            else {}
                        ),
                    }
                    for e in entries
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        for e in entries:
            st.markdown(f"- {e['reading']}")

    moved = adapters.get("a_moved") or {}
    if moved:
        st.caption(
            "How far training moved each A from its random start, ‖A − A₀‖_F / ‖A₀‖_F (the similarity at "
            "initialisation, in the table, is what the same random start alone would give):"
        )
        st.dataframe(
            pd.DataFrame([{"adapter": key, **values} for key, values in moved.items()]),
            hide_index=True,
            width="stretch",
        )

    st.header("How the update relates to W (the paper's table 7)")
    st.write(
        "U and V: the top-r left and right singular directions of the update ΔW = scale·B·A. ‖UᵀWVᵀ‖_F is how much "
        "of W lies along them, beside W's own top-r directions and random ones; the amplification factor is "
        "‖ΔW‖_F / ‖UᵀWVᵀ‖_F."
    )
    for key, block in adapters["amplification"].items():
        st.subheader(f"Adapter {key}")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "layer": a["layer"],
                        "r": a["rank"],
                        "‖ΔW‖_F": a["delta_norm"],
                        "‖UᵀWVᵀ‖_F": a["projected_norm"],
                        "W's own top r": a["weight_top_norm"],
                        "random directions": a["random_norm"],
                        "amplification factor": a["factor"],
                    }
                    for a in block["rows"]
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        st.info(block["summary"])
        for a in block["rows"]:
            st.markdown(f"- {a['reading']}")

    st.header("What linear1's update reacts to")
    directions = adapters.get("directions")
    if not directions:
        st.info("The analysis adapters do not adapt linear1: there are no input directions to show.")
    else:
        st.write(
            f"The top input directions of adapter `{directions['adapter']}` on linear1 (rows of Vᵀ of its update, "
            "784 values as 28×28 pixels of the normalised input): the update responds most to inputs shaped like "
            "these (red positive, blue negative), scaled by each singular value σ."
        )
        start = (adapters.get("a_moved") or {}).get(directions["adapter"], {}).get("linear1")
        if start is not None:
            st.caption(
                "The speckle is partly A's random start: B·A keeps whatever of it B multiplies, and training moved "
                f"linear1's A by ‖A − A₀‖_F / ‖A₀‖_F = {start:.2f} from it; strokes are what training added."
            )
        st.plotly_chart(
            charts.direction_images(directions["images"], directions["singular_values"]),
            width="stretch",
            key="directions",
        )

# --- memory ----------------------------------------------------------------------------------------------------------
st.header("Memory of training")
memory = saved.memory
if memory is None:
    st.info("No memory measurement yet: run the analysis above.")
else:
    stale_note(memory)
    rows = memory["rows"]
    st.write(
        "Exact bytes of the tensors after one real fp32 training step on a batch of "
        f"{rows[0]['batch_size'] if rows else '?'}: every parameter (weights), the gradients of the trained ones, "
        "Adam's two moments (and its step counters), and the tensors autograd saved for backward (activations). "
        "Beside them, the measured peak of a real run of "
        f"{memory['settings']['memory_steps']} steps, from an empty start."
    )
    mb = 1e6
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "method": r["label"],
                    "trainable parameters": r["trainable_params"],
                    "weights (MB)": r["weights_bytes"] / mb,
                    "gradients (MB)": r["gradient_bytes"] / mb,
                    "Adam (MB)": (r["adam_bytes"] + r["adam_step_bytes"]) / mb,
                    "activations (MB)": r["activation_bytes"] / mb,
                    "total, exact (MB)": r["total_bytes"] / mb,
                    "measured peak (MB)": None if r["peak_bytes"] is None else r["peak_bytes"] / mb,
                }
                for r in rows
            ]
        ),
        hide_index=True,
        width="stretch",
        column_config={
            **ui.counts("trainable parameters"),
            **{
                c: st.column_config.NumberColumn(c, format="%.3f")
                for c in (
                    "weights (MB)",
                    "gradients (MB)",
                    "Adam (MB)",
                    "activations (MB)",
                    "total, exact (MB)",
                    "measured peak (MB)",
                )
            },
        },
    )
    st.plotly_chart(charts.memory_bars(rows), width="stretch", key="memory-bars")
    ratio = memory.get("ratio")
    if ratio:
        peak = f" and **{ratio['peak']:.2f}×** in the measured peak" if ratio.get("peak") else ""
        st.success(
            f"Full fine-tuning needs **{ratio['total']:.2f}×** the memory of LoRA at rank {ratio['rank']} in all "
            f"(exact){peak}; in gradients and Adam alone, **{ratio['train_state']:.1f}×** "
            f"({ratio['trainable_params']:.1f}× the trainable parameters). The frozen weights, which both hold, "
            "are most of what LoRA needs."
        )
    if rows and rows[0].get("peak_measure"):
        st.caption(f"Measured peak: {rows[0]['peak_measure']}.")


# --- intruder dimensions ---------------------------------------------------------------------------------------------
st.header("Intruder dimensions")
st.write(
    "Directions a fine-tuned layer gained that W never had, counted for LoRA at three ranks and full fine-tuning, "
    "beside what each run forgot."
)
with st.expander("How is this measured?"):
    st.markdown(
        "Shuttleworth et al. (2024) found that LoRA's trained weights carry *intruder dimensions*: among the top "
        "singular vectors of W + ΔW, some have a low cosine similarity with every singular vector of W, and full "
        "fine-tuning shows fewer. Here each run (LoRA at ranks "
        f"{', '.join(map(str, IntruderSettings().ranks))} and full fine-tuning, on "
        f"{' and '.join(IntruderSettings().tasks)}, 600 steps each) is read at its last step: for each layer's top "
        "k left singular vectors, the largest |cosine| with any of W's; below ε it is an intruder. Forgetting is the "
        "change where the run was not trained: the other digits for a digit task, plain MNIST for a domain task."
    )
idle = job is None or not job.running
if idle and st.button("Measure intruder dimensions", disabled=ui.busy(), key="insight_intruders"):
    ui.start_job(jobs.start_intruders, store, IntruderSettings())
try:
    intruders = load_intruders(store)
except ArtifactError as exc:
    st.error(f"The saved intruder measurement cannot be read: {exc}. Measure again to replace it.")
    intruders = None
if intruders is None:
    st.info("Not measured yet: press the button above, or run `python -m lora_core analyze intruders`.")
else:
    k, eps = intruders["headline"]["k"], intruders["headline"]["eps"]
    runs = runs_of(intruders)
    st.plotly_chart(charts.intruders_vs_forgetting(runs, k, eps), width="stretch", key="intruders-chart")
    st.markdown(readings.read_intruders(intruders))
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "task": run.task,
                    "run": run.label,
                    **{f"ε {e:g}": run.total(k, e) for e in intruders["epsilons"]},
                    "forgot (points)": run.forgot,
                    "forgot on": run.forgot_on,
                }
                for run in runs
            ]
        ),
        hide_index=True,
        width="stretch",
        column_config={"forgot (points)": st.column_config.NumberColumn(format="%+.2f")},
    )
    st.caption(
        f"Intruders among the top {k} directions of every layer (linear3 has 10), summed over the layers, at each "
        f"ε. The file also holds k = {', '.join(str(x) for x in intruders['ks'] if x != k)}: "
        "`python -m lora_core analyze intruders` prints them."
    )
    load = (intruders.get("environment") or {}).get("loadavg")
    st.caption(
        f"Measured {ui.when(intruders.get('created'))} in {intruders['seconds']:.0f} s"
        + (f", load average {load[0]:.1f}." if load else ".")
    )
