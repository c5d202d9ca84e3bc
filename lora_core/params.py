"""Parameter accounting (the W, b, A, B table), what an adapter's update looks like, and the
per-tensor comparison of base weights that lora_core.lab.proof builds its checks on."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import torch

from lora_core.lora import LoraConfig, LoraLinear, LoraModel, linear_layers


@dataclass
class LayerParams:
    layer: str
    weight_shape: tuple[int, int]
    bias_shape: tuple[int]
    a_shape: tuple[int, int] | None
    b_shape: tuple[int, int] | None
    magnitude_count: int = 0  # DoRA's magnitude vector: one per output row
    # VeRA: its trained vectors d (r) and b (one per output row); its A and B are frozen and shared, not counted
    vera_d_count: int = 0
    vera_b_count: int = 0

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
        return self.a_count + self.b_count + self.magnitude_count + self.vera_d_count + self.vera_b_count

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
            **({"magnitude_params": self.magnitude_count} if self.magnitude_count else {}),
            **({"vera_d_params": self.vera_d_count, "vera_b_params": self.vera_b_count} if self.vera_d_count else {}),
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

    def columns(self) -> list[str]:
        """The columns a table of `rows()` shows: shapes and counts, and DoRA's magnitudes where there are any."""
        if any(layer.vera_d_count for layer in self.layers):  # VeRA: the trained vectors instead of A and B
            return ["layer", "W", "W params", "b", "b params", "λd params", "λb params"]
        shown = ["layer", "W", "W params", "b", "b params", "A", "A params", "B", "B params"]
        return [*shown, "m params"] if any(layer.magnitude_count for layer in self.layers) else shown

    def rows(self, times: str = "x", none: str = "-") -> list[dict[str, Any]]:
        """One row per layer plus a "total" row: shapes as text (`times` between sizes, `none` where a
        layer has no adapter) and counts. Every table of parameters (CLI and pages) is built from these."""
        rows: list[dict[str, Any]] = [
            {
                "layer": layer.layer,
                "W": _shape(layer.weight_shape, times, none),
                "W params": layer.weight_count,
                "b": _shape(layer.bias_shape, times, none),
                "b params": layer.bias_count,
                "A": _shape(layer.a_shape, times, none),
                "A params": layer.a_count,
                "B": _shape(layer.b_shape, times, none),
                "B params": layer.b_count,
                "base params": layer.base_count,
            }
            for layer in self.layers
        ]
        total: dict[str, Any] = {"layer": "total", "W": "", "b": "", "A": "", "B": ""}
        for column in ("W params", "b params", "A params", "B params", "base params"):
            total[column] = sum(row[column] for row in rows)
        if any(layer.magnitude_count for layer in self.layers):  # DoRA: its magnitudes, beside A and B
            for row, layer in zip(rows, self.layers):
                row["m params"] = layer.magnitude_count
            total["m params"] = sum(layer.magnitude_count for layer in self.layers)
        if any(layer.vera_d_count for layer in self.layers):
            for row, layer in zip(rows, self.layers):
                row["λd params"], row["λb params"] = layer.vera_d_count, layer.vera_b_count
            total["λd params"] = sum(layer.vera_d_count for layer in self.layers)
            total["λb params"] = sum(layer.vera_b_count for layer in self.layers)
        return [*rows, total]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterTable:
        """Rebuild a table from `to_dict`'s output (as saved in a JSON result)."""

        def shape(value: Any) -> Any:
            return tuple(value) if value else None

        return cls(
            [
                LayerParams(
                    row["layer"],
                    tuple(row["W_shape"]),
                    tuple(row["b_shape"]),
                    shape(row.get("A_shape")),
                    shape(row.get("B_shape")),
                    int(row.get("magnitude_params", 0)),
                    int(row.get("vera_d_params", 0)),
                    int(row.get("vera_b_params", 0)),
                )
                for row in data["layers"]
            ]
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "base_params": self.base_params,
            "lora_params": self.lora_params,
            "lora_percent": self.lora_percent,
            "total_params": self.base_params + self.lora_params,
        }


def _shape(shape: tuple[int, ...] | None, times: str, none: str) -> str:
    return times.join(map(str, shape)) if shape else none


def parameter_table(model: torch.nn.Module, config: LoraConfig | None = None) -> ParameterTable:
    """Per layer: W and b shapes, and the A (r x in) and B (out x r) an adapter `config` adds (r capped at
    min(in, out) per layer, as LoraModel.add_adapter caps it), and DoRA's magnitude (one per output row); for VeRA
    the two vectors each layer trains (its A and B are one frozen random pair, shared)."""
    rows = []
    plain = model.model if hasattr(model, "lora_layers") else model
    if config is not None:  # a rank above a layer's limit is capped there, as add_adapter does
        config = config.capped_for(plain)
    for name, layer in linear_layers(plain).items():
        adapted = config is not None and name in config.target_modules
        r = config.rank_for(name) if config is not None else 0
        if adapted and config is not None and config.use_vera:
            rows.append(
                LayerParams(
                    layer=name,
                    weight_shape=(layer.out_features, layer.in_features),
                    bias_shape=(layer.out_features,),
                    a_shape=None,
                    b_shape=None,
                    vera_d_count=r,
                    vera_b_count=layer.out_features,
                )
            )
            continue
        rows.append(
            LayerParams(
                layer=name,
                weight_shape=(layer.out_features, layer.in_features),
                bias_shape=(layer.out_features,),
                a_shape=(r, layer.in_features) if adapted else None,
                b_shape=(layer.out_features, r) if adapted else None,
                magnitude_count=layer.out_features if adapted and config is not None and config.use_dora else 0,
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


# --- what an adapter learned -------------------------------------------------------------------------
RANK_TOLERANCE = 1e-5  # singular values below this fraction of the largest count as zero


@dataclass
class UpdateStatistics:
    """The update scale * B A that an adapter adds to one layer's W, and W's own spectrum."""

    layer: str
    delta: torch.Tensor  # scale * B A, on the CPU
    singular_values: torch.Tensor  # of delta, largest first
    weight_singular_values: torch.Tensor | None  # of W, when asked for (for the chart)

    @property
    def frobenius_norm(self) -> float:
        return float(self.singular_values.square().sum().sqrt())

    @property
    def numerical_rank(self) -> int:
        """Singular values above RANK_TOLERANCE of the largest (0 for an all-zero update)."""
        sv = self.singular_values
        if sv.numel() == 0 or float(sv.max()) == 0.0:
            return 0
        return int((sv > sv.max() * RANK_TOLERANCE).sum())

    def to_dict(self, top: int) -> dict[str, Any]:
        """Norm, rank and the `top` largest singular values (the rest are zero up to rounding)."""
        return {
            "frobenius_norm": self.frobenius_norm,
            "rank": self.numerical_rank,
            "singular_values": self.singular_values[:top].tolist(),
        }


@torch.no_grad()
def update_statistics(
    layer_name: str, layer: LoraLinear, adapter: str, weight_spectrum: bool = False
) -> UpdateStatistics:
    delta = layer.delta_weight(adapter).detach().to("cpu", torch.float32)
    weight_sv = None
    if weight_spectrum:
        weight_sv = torch.linalg.svdvals(layer.base_layer.weight.detach().to("cpu", torch.float32))
    return UpdateStatistics(layer_name, delta, torch.linalg.svdvals(delta), weight_sv)


def adapter_update_statistics(lora_model: LoraModel, adapter: str) -> dict[str, UpdateStatistics]:
    """Per adapted layer, the statistics of adapter `adapter`'s update (without W's spectrum)."""
    return {
        name: update_statistics(name, layer, adapter)
        for name, layer in lora_model.lora_layers().items()
        if adapter in layer.lora_A
    }
