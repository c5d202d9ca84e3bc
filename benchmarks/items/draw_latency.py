"""Item 5: draw-to-prediction latency, from a canvas array to both models' probabilities."""

from __future__ import annotations

import torch

from ..context import Context
from ..report import Row, judged, ms
from ..timing import percentile
from ..workloads import synthetic_canvas, timed_runs, trained_adapter
from .common import Raw, trained_base


def measure_draw_latency(ctx: Context) -> Raw:
    """Canvas array -> lora_core.preprocess.prepare_digit -> both models' probabilities."""
    from lora_core.preprocess import predict_probabilities, prepare_digit

    base = trained_base(ctx)
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
