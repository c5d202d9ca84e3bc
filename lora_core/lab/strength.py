"""An adapter's strength: its update scaled from 0 (the base model) through 1 (the adapter as trained) to 2.

PEFT calls this the adapter's scale: the layers compute W x + b + s · (alpha/r) · B A x. A curve of accuracy
against s shows where the adapter helps, where it starts to overshoot, and that s = 0 is the base exactly
(the update is then skipped, not multiplied by zero) and s = 1 the trained adapter exactly (the single-adapter
path). The curve is computed once on a fixed grid, so that a control moving along it only looks results up.

    curve = strength_curve(lora_model, "digit-9", data.test_x, data.test_y)
    curve.at(0.5).per_digit_accuracy[9]  # digit 9 at half strength
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lora_core.errors import ConfigError
from lora_core.evaluate import Evaluation, accuracy_on, evaluate
from lora_core.lora import LoraModel
from lora_core.model import NUM_CLASSES

# nine points: each is one pass of the 10,000 test images through the model (about 0.5 s at full size on 2 cores)
STEP = 0.25
MAX_STRENGTH = 2.0
STRENGTHS: tuple[float, ...] = tuple(i * STEP for i in range(round(MAX_STRENGTH / STEP) + 1))


@dataclass(frozen=True)
class StrengthCurve:
    """The evaluations of one adapter at each strength of a grid, on one test set."""

    adapter: str
    strengths: tuple[float, ...]
    evaluations: tuple[Evaluation, ...]

    def at(self, strength: float) -> Evaluation:
        """The evaluation at a strength of the grid (ConfigError for one between its points)."""
        for s, evaluation in zip(self.strengths, self.evaluations):
            if abs(s - strength) < 1e-9:
                return evaluation
        raise ConfigError(
            "strength",
            f"{strength!r} is not on the curve's grid ({self.strengths[0]:g} to {self.strengths[-1]:g}); "
            f"pick one of {', '.join(f'{s:g}' for s in self.strengths)}",
        )

    def accuracy_on(self, digits: Sequence[int]) -> list[float]:
        """At each strength, the accuracy over all test images of `digits` (not the mean of their rates)."""
        return [accuracy_on(e, digits) for e in self.evaluations]

    def overall(self) -> list[float]:
        return [e.accuracy for e in self.evaluations]


def other_digits(targets: Sequence[int]) -> list[int]:
    return [d for d in range(NUM_CLASSES) if d not in targets]


@torch.no_grad()
def strength_curve(
    model: LoraModel,
    adapter: str,
    x: torch.Tensor,
    y: torch.Tensor,
    strengths: Sequence[float] = STRENGTHS,
) -> StrengthCurve:
    """Evaluate `adapter` at each strength (its weight as PEFT's set_adapter with weights takes it). The model's
    active adapters are restored afterwards, whatever happens."""
    if not strengths:
        raise ConfigError("strengths", "give at least one strength")
    evaluations = []
    with model.active_adapters_kept():
        for s in strengths:
            if s == 1.0:
                model.set_adapter(adapter)
            else:
                model.set_adapter([adapter], weights=[float(s)])
            evaluations.append(evaluate(model, x, y))
    return StrengthCurve(adapter, tuple(float(s) for s in strengths), tuple(evaluations))
