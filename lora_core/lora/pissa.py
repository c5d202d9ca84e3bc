"""PiSSA (Meng et al., 2024; PEFT's init_lora_weights="pissa"): an adapter that starts from W's top-r singular
directions and trains on the residual base W_res = W - s B0 A0, then saved as plain LoRA on the untouched W.

    W = U S Vh;   A0 = sqrt(S_r / s) Vh_r,   B0 = U_r sqrt(S_r / s),   so s B0 A0 is W's best rank-r part
    training:  y = x W_res^T + b + s x A^T B^T,  with A, B starting at A0, B0 (the same y as W at step 0)
    saved:     dW = s (B A - B0 A0) = s [B | -B0] [A ; A0],  a LoRA adapter of rank 2r on W itself

PEFT trains PiSSA the same way and rewrites W into W_res inside the model it trains; it converts the adapter to
rank 2r when saved with path_initial_model_for_weight_conversion, as `as_plain_lora` does here. The lab never
rewrites a base that other adapters share: the residual lives in a copy (`residual_start`), and the base the
residual came from stays bit for bit what it was. A layer with fewer than 2r rows or columns holds dW at its own
rank limit instead (an identity on the short side), which is the same update.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lora_core.lora.config import LoraConfig
from lora_core.lora.model import LoraModel, plain_copy

PISSA = "pissa"


def principal_factors(weight: torch.Tensor, r: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) with scale * B0 A0 = W's best rank-r approximation, split evenly as PEFT's pissa_init splits it."""
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    root = torch.sqrt(s[:r] / scale)
    a0 = root.view(-1, 1) * vh[:r]
    b0 = u[:, :r] * root.view(1, -1)
    return a0.to(weight.dtype), b0.to(weight.dtype)


@dataclasses.dataclass
class PissaStart:
    """The model PiSSA trains (a LoraModel on a copy of the base whose layers hold W_res) and each adapted
    layer's initial factors (A0, B0), kept to convert the trained adapter."""

    model: LoraModel
    initial: dict[str, tuple[torch.Tensor, torch.Tensor]]


def residual_start(base: torch.nn.Module, name: str, config: LoraConfig, seed: int | None = None) -> PissaStart:
    """A copy of `base` (an MLP or a LoraModel; never written) with adapter `name` of `config`'s shape, started
    PiSSA's way: A, B = A0, B0 and each target layer's W replaced by W - s B0 A0 in the copy."""
    model = LoraModel(plain_copy(base))
    model.add_adapter(name, dataclasses.replace(config, init="kaiming"), seed=seed)
    initial = {}
    with torch.no_grad():
        for layer_name, layer in model.lora_layers().items():
            if name not in layer.lora_A:
                continue
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            scale = layer.scaling[name]
            a0, b0 = principal_factors(layer.base_layer.weight, a.shape[0], scale)
            a.copy_(a0)
            b.copy_(b0)
            layer.base_layer.weight.sub_(scale * (b0 @ a0))
            initial[layer_name] = (a0.clone(), b0.clone())
    return PissaStart(model, initial)


def _rank_alpha(rank: int, scale: float, rslora: bool) -> float:
    """The alpha that gives `scale` at `rank`: s r (s sqrt(r) with rsLoRA)."""
    return scale * (math.sqrt(rank) if rslora else rank)


def as_plain_lora(start: PissaStart, name: str) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The trained PiSSA adapter as plain LoRA on the original W: its config (rank 2r, alpha keeping each layer's
    scale, PEFT's usual init) and its tensors under PEFT's keys, ready for LoraModel.load_adapter_tensors."""
    config = start.model.adapter_config(name)
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    tensors: dict[str, torch.Tensor] = {}
    for layer_name, layer in start.model.lora_layers().items():
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
        a0, b0 = start.initial[layer_name]
        scale = layer.scaling[name]
        wide_a, wide_b = torch.cat([a, a0], dim=0), torch.cat([b, -b0], dim=1)
        limit = min(layer.in_features, layer.out_features)
        if wide_a.shape[0] > limit:  # the same update at the layer's own rank limit, an identity on its short side
            delta = wide_b @ wide_a
            eye = torch.eye(limit, dtype=a.dtype, device=a.device)
            wide_a, wide_b = (delta, eye) if layer.out_features == limit else (eye, delta)
        prefix = f"base_model.model.{layer_name}"
        tensors[f"{prefix}.lora_A.weight"] = wide_a.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = wide_b.contiguous()
        ranks[layer_name] = wide_a.shape[0]
        alphas[layer_name] = _rank_alpha(ranks[layer_name], scale, config.use_rslora)
    r = 2 * config.r
    alpha = _rank_alpha(r, config.scale, config.use_rslora)
    plain = LoraConfig(
        r=r,
        alpha=alpha,
        dropout=config.dropout,
        target_modules=config.target_modules,
        use_rslora=config.use_rslora,
        rank_pattern={k: v for k, v in ranks.items() if v != r},
        alpha_pattern={k: v for k, v in alphas.items() if not math.isclose(v, alpha, rel_tol=1e-12)},
    )
    return plain, tensors
