"""Items 1 and 2: base training against the tutorial loop, bf16 against fp32, and the epochs' share of
the matmul peak. Both items come from one measurement (the training epochs)."""

from __future__ import annotations

import statistics

from lora_core.model import DEFAULT_HIDDEN, count_parameters
from lora_core.numbers import pct
from lora_core.train import TrainConfig

from ..context import Context
from ..report import Row, judged, rate, times
from ..workloads import gflops
from .common import PRECISIONS, Raw, sized_matmul_peak, train_epoch, tutorial_figures


def measure_training(ctx: Context) -> Raw:
    """One epoch of train_base with the default TrainConfig (whatever precision it defaults to); one epoch
    each in fp32 and bf16 per seed, alternating which goes first; the tutorial loop; and the fp32 and
    bf16 matmul peaks just before and after the epochs."""
    params = count_parameters(DEFAULT_HIDDEN)
    ctx.log("matmul peaks, fp32 and bf16 (before training)")
    peaks_before = {p: sized_matmul_peak(ctx, p) for p in PRECISIONS}
    config = TrainConfig(device="cpu")  # the default precision: what `python -m lora_core train` uses
    ctx.log(f"ours: train_base, default TrainConfig (precision {config.precision})")
    model, ours = train_epoch(ctx, config)
    ctx.shared.update(trained_base=model, default_epoch=ours)
    precision = _measure_precisions(ctx)
    ctx.log("matmul peaks (after training)")
    peaks_after = {p: sized_matmul_peak(ctx, p) for p in PRECISIONS}
    peaks = {p: max(peaks_before[p]["gflops"], peaks_after[p]["gflops"]) for p in PRECISIONS}
    ctx.shared["peak_gflops"] = peaks
    base = tutorial_figures(ctx)
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
            _, epoch = train_epoch(ctx, TrainConfig(device="cpu", seed=seed, precision=precision))
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
