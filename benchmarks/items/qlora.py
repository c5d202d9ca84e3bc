"""Item 11: QLoRA on a CPU: the NF4 base's bytes against float32's, and a QLoRA step against a LoRA step."""

from __future__ import annotations

import torch

from lora_core.lora.nf4 import Nf4Config, import_nf4
from lora_core.model import LAYER_NAMES
from lora_core.train import adam

from ..context import Context
from ..report import Row, judged, ms, times
from ..timing import compare
from ..workloads import CPU, FT_LR, LORA_RANK, ours_lora, train_step
from .common import Raw, trained_base

QLORA_BATCH = 128  # the experiments' batch


def measure_qlora(ctx: Context) -> Raw:
    """The bytes of the NF4 layers (codes, block scales, their factors) against the same layers in float32, and a
    fine-tuning step of LoRA on the float32 base against the same step on the NF4 base (fp32 arithmetic)."""
    import_nf4()  # torchao's import (about 2 s) is not part of either step
    torch.manual_seed(0)
    base = trained_base(ctx)
    x, y = ctx.batch(QLORA_BATCH)
    lora, lora_params = ours_lora(base, LORA_RANK, LAYER_NAMES)
    qlora, qlora_params = ours_lora(base, LORA_RANK, LAYER_NAMES, quantization=Nf4Config())
    record = qlora.quantized_record("bench")
    assert record is not None
    ctx.log(f"QLoRA step, batch {QLORA_BATCH}: lora, qlora")
    result = compare(
        {
            "lora": train_step(lora, adam(lora_params, FT_LR, CPU), x, y),
            "qlora": train_step(qlora, adam(qlora_params, FT_LR, CPU), x, y),
        },
        rounds=ctx.sizes.step_rounds,
        calls_per_round=ctx.sizes.step_calls,
    )
    layers = record["layers"]
    return {
        "block_size": record["block_size"],
        "nf4_layers": list(layers),
        "fp32_layers": record["fp32_layers"],
        "nf4_bytes": sum(layer["bytes"] for layer in layers.values()),
        "fp32_bytes": sum(layer["fp32_bytes"] for layer in layers.values()),
        "batch": QLORA_BATCH,
        **result.to_dict(),
        "qlora_vs_lora": result.ratio("qlora", "lora"),
    }


def rows_11(ctx: Context, raw: Raw) -> list[Row]:
    """Item 11: the NF4 base's bytes (judged) and the QLoRA step against LoRA's (reported)."""
    share = raw["nf4_bytes"] / raw["fp32_bytes"]
    layers = ", ".join(raw["nf4_layers"])
    return [
        judged(
            11,
            f"frozen base in NF4 (block {raw['block_size']}): {layers}",
            f"{raw['nf4_bytes'] / 1e6:.2f} MB",
            f"{raw['fp32_bytes'] / 1e6:.2f} MB in float32",
            f"{share:.1%}",
            "NF4 base's bytes against float32's",
            share,
        ),
        Row(
            11,
            f"QLoRA step vs LoRA step, batch {raw['batch']}, fp32 (torchao dequantises W for every matmul)",
            ms(raw["qlora"]["median_s"]),
            ms(raw["lora"]["median_s"]),
            times(raw["qlora_vs_lora"]),
            "report",
        ),
    ]
