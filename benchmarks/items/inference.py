"""Item 4: inference with a merged and an unmerged adapter against the base model."""

from __future__ import annotations

from ..context import Context
from ..report import Row, judged, times, us
from ..timing import compare
from ..workloads import LORA_RANK, forward, trained_adapter
from .common import Raw, trained_base


def _inference_batches(ctx: Context) -> tuple[tuple[int, str], ...]:
    big = ctx.sizes.infer_batch
    return (1, "one drawn digit"), (big, "lora_core.evaluate's batch" if big == 2500 else "quick")


def measure_inference(ctx: Context) -> Raw:
    """Forward passes of the base MLP, a merged adapter and an unmerged one, same batch."""
    base = trained_base(ctx)
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
