"""The DoRA paper's weight decomposition analysis (Liu et al., 2024, section 2.2 and figure 2) on our layers.

W is split per output row n into a magnitude ||W_n|| and a direction W_n / ||W_n||. Against the weight W0 training
started from, a checkpoint's change is
    dM = mean_n | ||W_n|| - ||W0_n|| |            (magnitude)
    dD = mean_n (1 - cos(W_n, W0_n))              (direction)
The paper plots dD against dM over checkpoints: full fine-tuning and DoRA show a negative slope (large changes of
direction with small changes of magnitude, or the reverse), LoRA a positive one (both grow together).
Rows here are the paper's columns: our weights are stored out x in, the paper's in x out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lora_core.lora import LoraLinear, LoraModel

LAYER = "linear2"  # the largest layer (1000 -> 2000 in the default network)


def effective_weight(model: nn.Module, layer: str = LAYER) -> torch.Tensor:
    """The weight `model` computes `layer` with: W plus the active adapter's change for a LoRA-wrapped layer
    (PiSSA's residual base plus its update, DoRA's rescaled rows, QLoRA's dequantised NF4 base plus its update),
    the weight itself for a plain copy."""
    inner = model.model if isinstance(model, LoraModel) else model
    module = getattr(inner, layer)
    if isinstance(module, LoraLinear):
        weight = module.active_base().weight
        name = module.active_adapter
        return weight if name is None else weight + module.delta_weight(name)
    return module.weight


def magnitude_direction(w0: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(dM, dD) of `w` against `w0`, per output row as defined above."""
    w0, w = w0.detach().float(), w.detach().float().to(w0.device)
    norm0, norm = w0.norm(dim=1), w.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(w, w0, dim=1)
    return float((norm - norm0).abs().mean()), float((1 - cos).mean())


def slope(points: Sequence[Sequence[float]]) -> float | None:
    """The least-squares slope of dM against dD over checkpoints (step, dM, dD), the start left out; None with
    fewer than two checkpoints or no spread in dD."""
    rows = [(d, m) for step, m, d in points if step > 0]
    if len(rows) < 2:
        return None
    xs, ys = [d for d, _ in rows], [m for _, m in rows]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
