"""The seven items of `python -m benchmarks`: for each, one function measures (its raw figures go to the
JSON as they are) and one small function per item turns those figures into table rows, judged against
the targets in report.TARGETS. Items 1 and 2 share one measurement (one epoch of training).

Every "ours" figure goes through lora_core's own code: train_base for training, LoraModel for LoRA,
lora_core.preprocess for the canvas, `python -m lora_core study` for memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch

from lora_core.evaluate import evaluate
from lora_core.model import DEFAULT_HIDDEN, LAYER_NAMES, MLP, count_parameters
from lora_core.numbers import pct
from lora_core.train import TrainConfig, adam, train_base

from .baselines import parametrized_lora, torchvision_root, tutorial_train
from .context import Context
from .machine import matmul_peak
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


def _peak(ctx: Context) -> Raw:
    return matmul_peak(n=ctx.sizes.peak_n, trials=ctx.sizes.peak_trials)


def _trained_base(ctx: Context) -> MLP:
    """The base model item 1 trained, or a fresh one when item 1 was not run."""
    return ctx.shared.get("trained_base") or MLP()


# --- 1 and 2: base training ------------------------------------------------------------------------
def measure_training(ctx: Context) -> Raw:
    """One epoch of lora_core's train_base (default TrainConfig, on the CPU) and of the tutorial loop,
    with the matmul peak measured just before and after."""
    data = ctx.train_data()
    params = count_parameters(DEFAULT_HIDDEN)
    ctx.log("matmul peak (before training)")
    peak_before = _peak(ctx)
    ctx.log(f"ours: lora_core.train.train_base, {data.train_x.shape[0]:,} samples")
    config = TrainConfig(device="cpu")
    model, run = train_base(data, config)
    peak_after = _peak(ctx)
    ours_acc = evaluate(model, ctx.data.test_x, ctx.data.test_y).accuracy
    ctx.shared.update(trained_base=model, epoch_s=run.seconds, epoch_samples=data.train_x.shape[0])

    steps = ctx.sizes.baseline_steps
    ctx.log(f"baseline: tutorial-style loop, {'one epoch' if steps is None else f'{steps} steps'} of batch 10")
    root, cleanup = torchvision_root(ctx.data_dir)
    try:
        net, base = tutorial_train(root, steps)
    finally:
        cleanup()
    base_acc = evaluate(net, ctx.data.test_x, ctx.data.test_y).accuracy

    peak = max(peak_before["gflops"], peak_after["gflops"])
    ctx.shared["peak_gflops"] = peak
    ours_gflops = gflops(params, run.samples_per_s)
    return {
        "params": params,
        "ours": {
            "config": config.to_dict(),
            "samples": data.train_x.shape[0],
            "seconds": run.seconds,
            "samples_per_s": run.samples_per_s,
            "test_accuracy": ours_acc,
            "gflops": ours_gflops,
        },
        "baseline": {**base, "test_accuracy": base_acc, "gflops": gflops(params, float(base["samples_per_s"]))},
        "speedup": run.samples_per_s / float(base["samples_per_s"]),
        "peak_before": peak_before,
        "peak_after": peak_after,
        "peak_gflops": peak,
        "fraction_of_peak": ours_gflops / peak,
        "samples_per_s_at_peak": peak * 1e9 / (6.0 * params),  # samples/s at 100% of the peak
        # 6 x params counts the input gradient of linear1, which training never computes (the images
        # need no gradient): the matmuls really done are 6P - 2 x 784 x 1000 flops per sample.
        "flops_per_sample_counted": 6 * params,
        "flops_per_sample_computed": 6 * params - 2 * 784 * DEFAULT_HIDDEN[0],
    }


def rows_1(ctx: Context, raw: Raw) -> list[Row]:
    """Item 1: base training throughput against the tutorial-style baseline."""
    ours, base = raw["ours"], raw["baseline"]
    ours_rate, base_rate, speedup = ours["samples_per_s"], float(base["samples_per_s"]), raw["speedup"]
    ceiling = raw["samples_per_s_at_peak"]
    ours_when = "one epoch" if ctx.sizes.train_samples is None else f"{ours['samples']:,} samples"
    base_when = "one epoch" if ctx.sizes.baseline_steps is None else f"{base['samples']:,} samples"
    return [
        judged(
            1,
            "base training throughput (ours: batch 256, in-memory tensors; reference: tutorial loop)",
            rate(ours_rate),
            rate(base_rate),
            times(speedup),
            "training speed-up over the tutorial loop",
            speedup,
        ),
        judged(
            1,
            f"test accuracy after training (ours: {ours_when}; reference: {base_when})",
            pct(ours["test_accuracy"]),
            pct(base["test_accuracy"]),
            "-",
            "test accuracy after one epoch",
            ours["test_accuracy"],
        ),
        Row(
            1,
            "upper bound: the speed-up if ours ran at 100% of the matmul peak (peak / 6 x params)",
            rate(ceiling),
            rate(base_rate),
            times(ceiling / base_rate),
        ),
        Row(
            1,
            "time for one epoch of 60,000 samples",
            f"{60_000 / ours_rate:.1f} s",
            f"{60_000 / base_rate:.1f} s",
            times(speedup),
        ),
    ]


def rows_2(ctx: Context, raw: Raw) -> list[Row]:
    """Item 2: closeness to the machine's fp32 matmul peak."""
    peak, ours, base = raw["peak_gflops"], raw["ours"]["gflops"], raw["baseline"]["gflops"]
    shown_peak = f"{peak:.1f} GFLOP/s peak"
    return [
        judged(
            2,
            "training's arithmetic rate (6 x 2,807,010 params x samples/s) against the fp32 matmul peak",
            f"{ours:.1f} GFLOP/s",
            shown_peak,
            pct(ours / peak),
            "training's share of the matmul peak",
            ours / peak,
        ),
        Row(
            2,
            "tutorial loop's arithmetic rate against the same peak",
            f"{base:.1f} GFLOP/s",
            shown_peak,
            pct(base / peak),
        ),
    ]


# --- 3: LoRA step time ------------------------------------------------------------------------------
# (candidate, how the row names it, the batch at which the ratio is judged, its target in report.TARGETS)
LORA_STEP_REFERENCES = (
    ("parametrize", "tutorials' parametrize (W + B·A rebuilt every forward)", 64, "LoRA step vs parametrize, batch 64"),
    ("full", "full fine-tuning of all weights", 256, "LoRA step vs full fine-tuning, batch 256"),
)
LORA_STEP_BATCHES = (64, 256)


def measure_lora_steps(ctx: Context) -> Raw:
    """A fine-tuning step of ours, of the tutorials' parametrize LoRA, and of full fine-tuning."""
    torch.manual_seed(0)
    base = _trained_base(ctx)
    raw: Raw = {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": list(LAYER_NAMES)}
    for batch in LORA_STEP_BATCHES:
        x, y = ctx.batch(batch)
        ours, ours_params = ours_lora(base, LORA_RANK, LAYER_NAMES)
        tut, tut_params = parametrized_lora(base, LORA_RANK, LORA_ALPHA, LAYER_NAMES)
        tut.train()
        full = copy_of(base)
        full.train()
        ctx.log(f"LoRA step, batch {batch}: ours, parametrize, full fine-tuning")
        result = compare(
            {
                # the same (fused) Adam for all three, so the rows compare the LoRA mechanics
                "ours": train_step(ours, adam(ours_params, FT_LR, CPU), x, y),
                "parametrize": train_step(tut, adam(tut_params, FT_LR, CPU), x, y),
                "full": train_step(full, adam(full.parameters(), FT_LR, CPU), x, y),
            },
            rounds=ctx.sizes.step_rounds,
            calls_per_round=ctx.sizes.step_calls,
        )
        raw[f"batch_{batch}"] = {
            **result.to_dict(),
            "ours_vs_parametrize": result.ratio("ours", "parametrize"),
            "ours_vs_full": result.ratio("ours", "full"),
        }
    return raw


def rows_3(ctx: Context, raw: Raw) -> list[Row]:
    """Item 3: LoRA fine-tuning step time."""
    rows = []
    for batch in LORA_STEP_BATCHES:
        timings = raw[f"batch_{batch}"]
        for other, named, judged_at, target in LORA_STEP_REFERENCES:
            ratio = timings[f"ours_vs_{other}"]
            cells = (
                3,
                f"LoRA step, batch {batch}, r={LORA_RANK}, all 3 layers: ours vs {named}",
                ms(timings["ours"]["median_s"]),
                ms(timings[other]["median_s"]),
                times(ratio),
            )
            rows.append(judged(*cells, target, ratio) if batch == judged_at else Row(*cells))
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


# --- 6: peak memory ---------------------------------------------------------------------------------
def measure_peak_memory(ctx: Context) -> Raw:
    """Peak RSS of a fresh `python -m lora_core study` (it trains a base model and an adapter), and of a
    Python that only imports torch and lora_core, for scale."""
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        args = ["study", "--artifacts", tmp, "--data", str(ctx.data_dir), "--device", "cpu", *ctx.sizes.study_args]
        ctx.log("peak memory: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured("lora_core", args, ctx.sizes.study_timeout_s)
    if code != 0:
        raise RuntimeError(f"`python -m lora_core study` failed with status {code}:\n{tail}")
    _, import_rss, _, _ = run_module_measured("lora_core.study", [], 120.0)  # importing it runs nothing
    return {
        "command": ["python", "-m", "lora_core", *args],
        "peak_rss_bytes": rss,
        "seconds": seconds,
        "import_only_peak_rss_bytes": import_rss,
        "output_tail": tail[-600:],
    }


def rows_6(ctx: Context, raw: Raw) -> list[Row]:
    """Item 6: peak memory of `python -m lora_core study`."""
    study_args = ctx.sizes.study_args
    shown = "python -m lora_core study" + (" " + " ".join(study_args) if study_args else "")
    rss, import_rss = raw["peak_rss_bytes"], raw["import_only_peak_rss_bytes"]
    return [
        judged(
            6,
            f"peak RSS of `{shown}` (fresh artifacts: trains base + adapter, {raw['seconds']:.0f} s)",
            f"{rss / 1e9:.2f} GB",
            "-",
            "-",
            "study peak RSS (bytes)",
            rss,
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
    data = ctx.train_data()
    samples = data.train_x.shape[0]
    h_small, h_big = DEFAULT_HIDDEN, ctx.sizes.scaled_hidden
    p_small, p_big = count_parameters(h_small), count_parameters(h_big)
    ctx.log(f"scaling: one epoch at hidden {h_big[0]}/{h_big[1]}")
    if "epoch_s" in ctx.shared and ctx.shared.get("epoch_samples") == samples:
        small_s = float(ctx.shared["epoch_s"])
    else:
        small_s = train_base(data, TrainConfig(device="cpu"))[1].seconds
    big_s = train_base(data, TrainConfig(device="cpu", hidden=h_big))[1].seconds
    return {
        "hidden": {"small": list(h_small), "big": list(h_big)},
        "params": {"small": p_small, "big": p_big},
        "samples": samples,
        "seconds": {"small": small_s, "big": big_s},
        "gflops": {"small": gflops(p_small, samples / small_s), "big": gflops(p_big, samples / big_s)},
        "peak_gflops": float(ctx.shared.get("peak_gflops") or _peak(ctx)["gflops"]),
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
    sweep = raw["rank_sweep"]
    batch, frozen_s, ranks = sweep["batch"], sweep["frozen_s"], list(sweep["extra_s"])
    rows = [
        Row(
            7,
            f"training time per {unit}, hidden {b1}/{b2} ({p_big:,} params) vs {s1}/{s2} ({p_small:,})",
            f"{big_s:.1f} s",
            f"{small_s:.1f} s",
            times(big_s / small_s),
            f"≈ {p_big / p_small:.2f}x (params)",
        ),
        Row(
            7,
            f"arithmetic rate at hidden {b1}/{b2} vs {s1}/{s2} (share of peak)",
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


# Each measurement (its key names it in the JSON and for --only) and the row functions of its items.
MEASUREMENTS: dict[str, tuple[Measure, tuple[RowsOf, ...]]] = {
    "1-2": (measure_training, (rows_1, rows_2)),
    "3": (measure_lora_steps, (rows_3,)),
    "4": (measure_inference, (rows_4,)),
    "5": (measure_draw_latency, (rows_5,)),
    "6": (measure_peak_memory, (rows_6,)),
    "7": (measure_scaling, (rows_7,)),
}
