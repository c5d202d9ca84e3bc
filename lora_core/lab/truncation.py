"""Rank truncation: how much of its rank an adapter uses.

Each adapted layer's update s·B·A has rank at most r. Keeping only its top k singular directions (k from 1 to
r) and evaluating the model with W + (the truncated update) shows how the accuracy follows k: an adapter
whose accuracy is reached at k = 2 of r = 16 uses two directions per layer, whatever its rank. A layer whose
own rank is below k keeps its whole update, taken as s·B·A itself, so the last point is the trained adapter
merged into W. The curve is computed once on a grid of k, so that a control moving along it only looks
results up.

    curve = truncation_curve(lora_model, "digit-9", data.test_x, data.test_y)
    curve.at(2).per_digit_accuracy[9]  # digit 9 with two directions per layer
    curve.energy["linear2"][1]         # the share of linear2's update (squared norm) in its top 2 directions
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lora_core.errors import ConfigError
from lora_core.evaluate import Evaluation, accuracy_on, evaluate
from lora_core.lora import LoraModel
from lora_core.lora.model import plain_copy

EVERY_RANK_UP_TO = 8  # every k up to here, then about √2 apart: 14 points for r = 64


def truncation_ranks(rank: int) -> tuple[int, ...]:
    """The grid of k for an adapter whose largest layer rank is `rank`: 1..8, then about √2 apart, and `rank`."""
    if rank < 1:
        raise ConfigError("rank", f"must be at least 1, got {rank!r}")
    ks = set(range(1, min(rank, EVERY_RANK_UP_TO) + 1))
    step = 0
    while (k := round(2 ** (step / 2))) < rank:
        if k > EVERY_RANK_UP_TO:
            ks.add(k)
        step += 1
    ks.add(rank)
    return tuple(sorted(ks))


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's update s·B·A as its singular directions: delta = U diag(S) Vᵀ (U: out × rank, V: in × rank)."""

    delta: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    def truncated(self, k: int) -> torch.Tensor:
        """The update kept to its top k directions (the update itself from k = its rank on)."""
        if k >= self.rank:
            return self.delta
        return (self.u[:, :k] * self.s[:k]) @ self.v[:, :k].T

    def energy(self, k: int) -> float:
        """The share of the update's squared Frobenius norm in its top k directions."""
        total = float((self.s**2).sum())
        return float((self.s[:k] ** 2).sum()) / total if total > 0 else 1.0


def layer_update(b: torch.Tensor, a: torch.Tensor, scale: float) -> LayerUpdate:
    """The singular directions of scale·B·A (B: out × r, A: r × in) from two thin QR factorisations and the SVD of
    an r × r core: exact, and much cheaper than the SVD of the out × in product."""
    b, a = b.detach().to("cpu", torch.float64), a.detach().to("cpu", torch.float64)
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    core_u, s, core_vh = torch.linalg.svd(scale * rb @ ra.T)
    delta = (scale * b @ a).to(torch.float32)
    return LayerUpdate(delta, (qb @ core_u).float(), s.float(), (qa @ core_vh.T).float())


@dataclass(frozen=True)
class TruncationCurve:
    """The evaluations of one adapter with its update truncated to each k of a grid, on one test set."""

    adapter: str
    ranks: tuple[int, ...]
    evaluations: tuple[Evaluation, ...]
    layer_ranks: dict[str, int]
    energy: dict[str, tuple[float, ...]]  # per layer, at each k of `ranks`

    def at(self, k: int) -> Evaluation:
        """The evaluation at a k of the grid (ConfigError for one off it)."""
        for rank, evaluation in zip(self.ranks, self.evaluations):
            if rank == k:
                return evaluation
        raise ConfigError("k", f"{k!r} is not on the curve's grid; pick one of {', '.join(map(str, self.ranks))}")

    def accuracy_on(self, digits: Sequence[int]) -> list[float]:
        """At each k, the accuracy over all test images of `digits`."""
        return [accuracy_on(e, digits) for e in self.evaluations]

    def overall(self) -> list[float]:
        return [e.accuracy for e in self.evaluations]


def adapter_updates(model: LoraModel, adapter: str) -> dict[str, LayerUpdate]:
    """Each layer's update of `adapter` as its singular directions."""
    if adapter not in model.adapters:
        raise ConfigError("adapter", f"no adapter called {adapter!r} is loaded")
    if model.adapters[adapter].config.use_dora:  # m (W + sBA) / |W + sBA| - W: not s·B·A, and not low-rank
        raise ConfigError(
            "adapter", f"{adapter!r} is a DoRA adapter: its change to W rescales every row, so it has no rank to cut"
        )
    updates = {}
    for name, layer in model.lora_layers().items():
        if adapter in layer.lora_A and layer.is_vera(adapter):  # diag(b) B diag(d) A: B and A with the vectors in
            b = layer.vera_lambda_b[adapter].weight.view(-1, 1) * layer.lora_B[adapter].weight
            a = layer.vera_lambda_d[adapter].weight.view(-1, 1) * layer.lora_A[adapter].weight
            updates[name] = layer_update(b, a, 1.0)
        elif adapter in layer.lora_A:
            scale = float(layer.scaling[adapter])
            updates[name] = layer_update(layer.lora_B[adapter].weight, layer.lora_A[adapter].weight, scale)
    return updates


def _with_updates(model: LoraModel, adapter: str, deltas: dict[str, torch.Tensor]) -> nn.Module:
    """A plain copy of the base network `adapter` runs on (W, or the dequantised NF4 base of a QLoRA adapter) with
    each listed layer's weight W + delta (no LoRA branch)."""
    plain = plain_copy(model)
    quantized = model.quantized_layers(adapter)
    for name, layer in model.lora_layers().items():
        base = copy.deepcopy(layer.base_layer)
        if name in quantized:
            base.weight.data = quantized[name].weight.detach().clone()
        if name in deltas:
            base.weight.data += deltas[name].to(base.weight.device, base.weight.dtype)
        setattr(plain, name, base)
    return plain.eval()


@torch.no_grad()
def truncation_curve(
    model: LoraModel, adapter: str, x: torch.Tensor, y: torch.Tensor, ranks: Sequence[int] | None = None
) -> TruncationCurve:
    """Evaluate `adapter` with each layer's update kept to its top k directions, for each k of `ranks` (by
    default truncation_ranks of its largest layer rank). The model itself is not changed."""
    updates = adapter_updates(model, adapter)
    if not updates:
        raise ConfigError("adapter", f"adapter {adapter!r} adapts no layer")
    layer_ranks = {name: u.rank for name, u in updates.items()}
    grid = tuple(ranks) if ranks is not None else truncation_ranks(max(layer_ranks.values()))
    if not grid or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in grid):
        raise ConfigError("ranks", f"give whole numbers of at least 1, got {list(grid)!r}")
    evaluations = tuple(
        evaluate(_with_updates(model, adapter, {name: u.truncated(k) for name, u in updates.items()}), x, y)
        for k in grid
    )
    energy = {name: tuple(u.energy(k) for k in grid) for name, u in updates.items()}
    return TruncationCurve(adapter, grid, evaluations, layer_ranks, energy)
