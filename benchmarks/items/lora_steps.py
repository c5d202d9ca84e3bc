"""Item 3: LoRA fine-tuning step time, fp32 and bf16, against the tutorials' parametrize LoRA and full
fine-tuning, and checked against lora_core.train.finetune's own loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from lora_core.lora import LoraModel
from lora_core.model import LAYER_NAMES, MLP
from lora_core.train import FinetuneConfig, adam, finetune

from ..baselines import parametrized_lora
from ..context import Context
from ..report import Row, judged, ms, times
from ..timing import compare
from ..workloads import CPU, FT_LR, LORA_ALPHA, LORA_RANK, copy_of, ours_lora, train_step
from .common import PRECISIONS, Raw, trained_base

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
    base = trained_base(ctx)
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
