"""Item 7: scaling with hidden size (epoch time) and with LoRA rank (step time)."""

from __future__ import annotations

from collections.abc import Callable

from lora_core.model import DEFAULT_HIDDEN, count_parameters
from lora_core.numbers import pct
from lora_core.train import TrainConfig, adam

from ..context import Context
from ..report import Row, ms, times
from ..timing import compare
from ..workloads import CPU, FT_LR, copy_of, frozen_step, gflops, ours_lora, train_step
from .common import Raw, peak_gflops, train_epoch, trained_base

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
        _, small = train_epoch(ctx, TrainConfig(device="cpu"))
    _, big = train_epoch(ctx, TrainConfig(device="cpu", hidden=h_big))
    small_s, big_s = float(small["seconds"]), float(big["seconds"])
    precision = big["precision_used"]
    return {
        "hidden": {"small": list(h_small), "big": list(h_big)},
        "params": {"small": p_small, "big": p_big},
        "samples": samples,
        "precision": {"small": small["precision_used"], "big": precision},
        "seconds": {"small": small_s, "big": big_s},
        "gflops": {"small": gflops(p_small, samples / small_s), "big": gflops(p_big, samples / big_s)},
        "peak_gflops": peak_gflops(ctx, precision),
    }


def _measure_rank_sweep(ctx: Context) -> Raw:
    batch, ranks = ctx.sizes.rank_batch, ctx.sizes.ranks
    base = trained_base(ctx)
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
