"""QLoRA's frozen 4-bit base (Dettmers et al., 2023): NF4 weights with double-quantised scales, by torchao.

NF4 keeps each weight as one of 16 levels (the quantiles of a standard normal, scaled into [-1, 1]) in 4 bits,
in blocks of `block_size` weights that share one absmax scale; the scales are quantised again, to int8 in groups
of `scaler_block_size` blocks with one float32 factor per group (QLoRA's double quantisation). A layer computes
x dequant(W_nf4)^T + b; the dequantised weight is made for each matmul and never kept, forward and backward
alike (torchao's linear_nf4), so what stays in memory is the 4-bit base.

The lab never replaces W: the NF4 base is built from W on demand (deterministic, so the same W gives the same
codes), held beside it, and used only while an adapter trained on it is active. An adapter records the sha256 of
the codes and scales it trained on; rebuilding them on load must give the same bytes. A layer whose weight count
does not divide into blocks stays float32 and says so.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lora_core.errors import ConfigError

if TYPE_CHECKING:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor

NF4 = "nf4"
BASE_PRECISIONS = ("fp32", NF4)
BLOCK_SIZE = 64  # QLoRA's
SCALER_BLOCK_SIZE = 256  # QLoRA's; where it does not divide a layer's block count, the largest divisor below it
MAX_BLOCK_SIZE = 4096
# the parts of an NF4 tensor, as torchao names them: the 4-bit codes (two per byte), the int8 block scales, their
# float32 factors and mean, and the 16 levels
PARTS = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")


def import_nf4() -> Any:
    """torchao's NF4 module, imported on first use (it takes seconds; runs without NF4 never pay it)."""
    # torchao registers an Enum with torch's pytree at import, which torch logs as a deprecation warning
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor
    except ImportError as exc:  # pragma: no cover - torchao is a runtime requirement
        raise ConfigError("base_precision", f"NF4 needs torchao (pip install torchao): {exc}") from None
    return nf4_tensor


def check_base_precision(value: Any) -> None:
    if value not in BASE_PRECISIONS:
        raise ConfigError("base_precision", f"must be one of {', '.join(BASE_PRECISIONS)}, got {value!r}")


def check_block_size(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_BLOCK_SIZE or value % 2:
        raise ConfigError(
            "nf4_block_size", f"must be an even whole number from 2 to {MAX_BLOCK_SIZE} (QLoRA uses 64), got {value!r}"
        )


def scaler_block_size(n_blocks: int) -> int:
    """The number of block scales quantised together: QLoRA's 256 where it divides the block count (torchao
    requires a divisor), else the largest divisor below it."""
    return next(size for size in range(min(SCALER_BLOCK_SIZE, n_blocks), 0, -1) if n_blocks % size == 0)


def why_not_quantized(layer: nn.Linear, block_size: int) -> str | None:
    """Why `layer` stays float32 at `block_size`, or None where it is quantised."""
    n = layer.weight.numel()
    if n % block_size:
        return f"its {n:,} weights do not divide into blocks of {block_size}"
    return None


@dataclass(frozen=True)
class Nf4Config:
    """How the frozen base is quantised: NF4 in blocks of `block_size` weights, with double-quantised scales."""

    block_size: int = BLOCK_SIZE

    def validate(self, layers: dict[str, nn.Linear] | None = None) -> None:
        check_block_size(self.block_size)
        if layers and all(why_not_quantized(layer, self.block_size) for layer in layers.values()):
            sizes = ", ".join(f"{name} {layer.weight.numel():,}" for name, layer in layers.items())
            raise ConfigError(
                "nf4_block_size",
                f"no layer's weight count divides into blocks of {self.block_size} ({sizes}); choose a block size "
                f"that divides one of them, such as {BLOCK_SIZE}",
            )

    @property
    def key(self) -> str:
        """The name of this quantised base among a layer's quantised copies."""
        return f"{NF4}-{self.block_size}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Nf4Config:
        """The config an adapter's "quantized_base" record names (checked: NF4, a valid block size)."""
        if record.get("format") != NF4:
            raise ConfigError("quantized_base", f"format must be {NF4!r}, got {record.get('format')!r}")
        config = cls(block_size=record.get("block_size"))  # type: ignore[arg-type]
        check_block_size(config.block_size)
        return config


def raw_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as stored (its own dtype, on the CPU)."""
    return hashlib.sha256(tensor.detach().to("cpu").numpy().tobytes()).hexdigest()


class Nf4Linear(nn.Module):
    """A frozen nn.Linear whose weight is held in NF4: y = x dequant(W_nf4)^T + b, the bias shared with the
    float32 layer it was made from (never trained, never copied)."""

    def __init__(self, layer: nn.Linear, block_size: int) -> None:
        super().__init__()
        reason = why_not_quantized(layer, block_size)
        if reason:
            raise ConfigError("nf4_block_size", f"this layer stays float32: {reason}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.block_size = block_size
        self.scaler_block_size = scaler_block_size(layer.weight.numel() // block_size)
        device = layer.weight.device
        try:
            nf4 = import_nf4().to_nf4(layer.weight.detach(), block_size, self.scaler_block_size)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            raise ConfigError(
                "base_precision", f"torchao cannot quantise to NF4 on {device.type} here ({exc}); use fp32"
            ) from None
        # a plain attribute, not a parameter or buffer: the NF4 base is never trained, saved or counted as W
        self.weight_nf4: NF4Tensor = nf4
        self.bias = layer.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, made on each access (for merging and inspection)."""
        return self.weight_nf4.get_original_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = import_nf4().linear_nf4(x, self.weight_nf4)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def parts(self) -> dict[str, torch.Tensor]:
        """The stored tensors: codes, block scales, their factors and mean, the 16 levels (torchao's names)."""
        return {part: getattr(self.weight_nf4, part) for part in PARTS}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts().values())

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, block={self.block_size}, scaler={self.scaler_block_size}"
        )


# QLoRA's NF4 levels (Dettmers et al., 2023, appendix E, as bitsandbytes holds them; torchao rounds them to 4 decimals)
NF4_LEVELS = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def block_normalised(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """W's values divided by the absmax of their block, in [-1, 1]: what NF4 rounds to its nearest level."""
    blocks = weight.detach().reshape(-1, block_size).to(torch.float32)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)).reshape(-1)


@dataclass(frozen=True)
class LevelHistogram:
    """W's block-normalised values as a histogram, beside NF4's levels and the share of weights rounded to each."""

    edges: list[float]  # bins + 1 bin edges in [-1, 1]
    counts: list[int]
    levels: list[float]
    level_shares: list[float]  # of the weights, the share whose nearest level is each of the 16
    uniform_shares: list[float]  # the same for 16 evenly spaced levels from -1 to 1 (a plain 4-bit grid)
    weights: int


def level_histogram(weight: torch.Tensor, block_size: int = BLOCK_SIZE, bins: int = 80) -> LevelHistogram:
    """How W's values, divided by their block's absmax, fall against NF4's 16 levels (the quantiles of a normal
    distribution: dense near 0, where most of a trained layer's weights lie)."""
    values = block_normalised(weight, block_size)
    counts = torch.histc(values, bins=bins, min=-1.0, max=1.0)

    def shares(levels: torch.Tensor) -> list[float]:
        nearest = torch.bucketize(values, (levels[1:] + levels[:-1]) / 2)  # the index of the nearest level
        return (torch.bincount(nearest, minlength=len(levels)).double() / values.numel()).tolist()

    return LevelHistogram(
        edges=torch.linspace(-1.0, 1.0, bins + 1).tolist(),
        counts=[int(c) for c in counts.tolist()],
        levels=list(NF4_LEVELS),
        level_shares=shares(torch.tensor(NF4_LEVELS)),
        uniform_shares=shares(torch.linspace(-1.0, 1.0, len(NF4_LEVELS))),
        weights=values.numel(),
    )
