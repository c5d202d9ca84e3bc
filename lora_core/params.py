"""Parameter accounting and the proof that fine-tuning left the base weights untouched."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

from .lora import LoraConfig, linear_layers
from .model import MLP


@dataclass
class LayerParams:
    layer: str
    weight_shape: tuple[int, int]
    bias_shape: tuple[int]
    a_shape: tuple[int, int] | None
    b_shape: tuple[int, int] | None

    @property
    def weight_count(self) -> int:
        return prod(self.weight_shape)

    @property
    def bias_count(self) -> int:
        return prod(self.bias_shape)

    @property
    def base_count(self) -> int:
        return self.weight_count + self.bias_count

    @property
    def a_count(self) -> int:
        return prod(self.a_shape) if self.a_shape else 0

    @property
    def b_count(self) -> int:
        return prod(self.b_shape) if self.b_shape else 0

    @property
    def lora_count(self) -> int:
        return self.a_count + self.b_count

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "W_shape": list(self.weight_shape),
            "W_params": self.weight_count,
            "b_shape": list(self.bias_shape),
            "b_params": self.bias_count,
            "A_shape": list(self.a_shape) if self.a_shape else None,
            "A_params": self.a_count,
            "B_shape": list(self.b_shape) if self.b_shape else None,
            "B_params": self.b_count,
        }


@dataclass
class ParameterTable:
    layers: list[LayerParams]

    @property
    def base_params(self) -> int:
        return sum(layer.base_count for layer in self.layers)

    @property
    def lora_params(self) -> int:
        return sum(layer.lora_count for layer in self.layers)

    @property
    def lora_percent(self) -> float:
        """Parameters LoRA adds, as a percentage of the base model's."""
        return 100.0 * self.lora_params / self.base_params

    def to_dict(self) -> dict[str, object]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "base_params": self.base_params,
            "lora_params": self.lora_params,
            "lora_percent": self.lora_percent,
            "total_params": self.base_params + self.lora_params,
        }


def parameter_table(model: torch.nn.Module, config: LoraConfig | None = None) -> ParameterTable:
    """Per layer: W and b shapes, and the A (r x in) and B (out x r) an adapter `config` adds."""
    rows = []
    for name, layer in linear_layers(model.model if hasattr(model, "lora_layers") else model).items():
        adapted = config is not None and name in config.target_modules
        rows.append(
            LayerParams(
                layer=name,
                weight_shape=(layer.out_features, layer.in_features),
                bias_shape=(layer.out_features,),
                a_shape=(config.r, layer.in_features) if adapted and config else None,
                b_shape=(layer.out_features, config.r) if adapted and config else None,
            )
        )
    return ParameterTable(rows)


@dataclass
class WeightCheck:
    key: str
    max_abs_diff: float
    identical: bool  # torch.equal: same shape, same bits


def weights_unchanged(reference: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[WeightCheck]:
    """Compare every base tensor with its copy from before fine-tuning."""
    checks = []
    for key, ref in reference.items():
        cur = current.get(key)
        if cur is None or cur.shape != ref.shape:
            checks.append(WeightCheck(key, float("inf"), False))
            continue
        cur = cur.detach().to(ref.device)
        diff = (cur.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
        checks.append(WeightCheck(key, diff, torch.equal(cur, ref)))
    return checks


def count_mlp_params(model: MLP) -> int:
    return sum(p.numel() for p in model.parameters())
