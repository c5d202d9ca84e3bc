"""What several benchmark items share: the matmul peak at the run's sizes, the base model item 1
trains, one epoch of train_base with its figures, and the tutorial loop's figures (measured once per
run and handed to later items through Context.shared)."""

from __future__ import annotations

from typing import Any

import torch

from lora_core.evaluate import evaluate
from lora_core.model import MLP
from lora_core.train import TrainConfig, train_base

from ..baselines import torchvision_root, tutorial_train
from ..context import Context
from ..machine import matmul_peak

Raw = dict[str, Any]

# the two precisions compared side by side (items 1, 2 and 3), in the order of the first round
PRECISIONS = ("fp32", "bf16")


def sized_matmul_peak(ctx: Context, precision: str = "fp32") -> Raw:
    """The matmul peak of `precision`, at the run's sizes (FULL or QUICK)."""
    return matmul_peak(n=ctx.sizes.peak_n, trials=ctx.sizes.peak_trials, precision=precision)


def peak_gflops(ctx: Context, precision: str) -> float:
    """The matmul peak of `precision` item 1-2 measured, or a fresh measurement when it was not run."""
    peaks = ctx.shared.get("peak_gflops") or {}
    return float(peaks.get(precision) or sized_matmul_peak(ctx, precision)["gflops"])


def trained_base(ctx: Context) -> MLP:
    """The base model item 1 trained, or a fresh one when item 1 was not run."""
    return ctx.shared.get("trained_base") or MLP()


def accuracy_on_test_set(ctx: Context, model: torch.nn.Module) -> float:
    return evaluate(model, ctx.data.test_x, ctx.data.test_y).accuracy


def train_epoch(ctx: Context, config: TrainConfig) -> tuple[MLP, Raw]:
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
        "test_accuracy": accuracy_on_test_set(ctx, model),
    }


def tutorial_figures(ctx: Context) -> Raw:
    """The tutorial-style loop's throughput and accuracy, measured once per run (items 1 and 8 share it)."""
    if "tutorial" not in ctx.shared:
        steps = ctx.sizes.baseline_steps
        ctx.log(f"baseline: tutorial-style loop, {'one epoch' if steps is None else f'{steps} steps'} of batch 10")
        root, cleanup = torchvision_root(ctx.data_dir)
        try:
            net, base = tutorial_train(root, steps)
        finally:
            cleanup()
        ctx.shared["tutorial"] = {**base, "test_accuracy": accuracy_on_test_set(ctx, net)}
    return ctx.shared["tutorial"]
