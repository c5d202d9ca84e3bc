"""Per-digit evaluation on the 10,000 MNIST test images, and the difference between two models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NotRequired

import torch
from torch import nn
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.errors import NonFiniteOutputs
from lora_core.model import NUM_CLASSES
from lora_core.numbers import Number


def weakest_digit(per_digit_accuracy: Sequence[float]) -> int:
    """The digit with the lowest accuracy (the smaller digit on ties)."""
    return min(range(len(per_digit_accuracy)), key=lambda d: (per_digit_accuracy[d], d))


class EvaluationSummary(TypedDict):
    """Evaluation.summary as saved (the schema lora_core.store.results checks on reading)."""

    accuracy: Number
    per_digit_accuracy: list[Number]
    wrong_counts: list[int]
    support: list[int]
    confusion: list[list[int]]
    misclassified: NotRequired[list[int]]


class EvaluationDifference(TypedDict):
    """compare()'s record as saved."""

    accuracy_delta: Number
    per_digit_delta: list[Number]
    wrong_counts_delta: list[int]
    confusion_delta: list[list[int]]
    fixed: NotRequired[list[int]]
    broken: NotRequired[list[int]]


@dataclass
class Evaluation:
    accuracy: float  # fraction of all test images, 0..1
    per_digit_accuracy: list[float]  # fraction of each digit's test images, 0..1
    wrong_counts: list[int]
    support: list[int]  # test images per digit
    confusion: list[list[int]]  # confusion[true][predicted]
    misclassified: list[int]  # test indices the model gets wrong
    predictions: list[int]

    @property
    def weakest_digit(self) -> int:
        return weakest_digit(self.per_digit_accuracy)

    def summary(self, misclassified: bool = True) -> dict[str, Any]:
        """Everything but the 10,000 predictions, for JSON files (the one summariser of results);
        without the misclassified indices for the compact records in model.json and metrics.json."""
        summary: dict[str, Any] = {
            "accuracy": self.accuracy,
            "per_digit_accuracy": self.per_digit_accuracy,
            "wrong_counts": self.wrong_counts,
            "support": self.support,
            "confusion": self.confusion,
        }
        if misclassified:
            summary["misclassified"] = self.misclassified
        return summary

    @classmethod
    def from_predictions(cls, predictions: torch.Tensor, labels: torch.Tensor) -> Evaluation:
        predictions = predictions.to("cpu", torch.int64)
        labels = labels.to("cpu", torch.int64)
        confusion = torch.bincount(labels * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2)
        confusion = confusion.reshape(NUM_CLASSES, NUM_CLASSES)
        support = confusion.sum(dim=1)
        correct = confusion.diagonal()
        per_digit = [float(c) / float(s) if s else 0.0 for c, s in zip(correct.tolist(), support.tolist())]
        return cls(
            accuracy=float(correct.sum()) / max(1, labels.numel()),
            per_digit_accuracy=per_digit,
            wrong_counts=(support - correct).tolist(),
            support=support.tolist(),
            confusion=confusion.tolist(),
            misclassified=(predictions != labels).nonzero().flatten().tolist(),
            predictions=predictions.tolist(),
        )


def accuracy_on(evaluation: Evaluation | EvaluationSummary, digits: Sequence[int]) -> float:
    """The accuracy over all test images of `digits` (weighted by how many each digit has, not the mean of their
    rates), from an Evaluation or its saved summary; 0.0 when there are none."""
    confusion = evaluation.confusion if isinstance(evaluation, Evaluation) else evaluation["confusion"]
    support = evaluation.support if isinstance(evaluation, Evaluation) else evaluation["support"]
    correct = sum(confusion[d][d] for d in digits)
    total = sum(support[d] for d in digits)
    return correct / total if total else 0.0


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2500) -> torch.Tensor:
    """Logits for every row of x, computed in batches on the model's device (NonFiniteOutputs if any is not finite)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    logits = torch.cat(out)
    bad = int((~torch.isfinite(logits)).any(dim=1).sum())
    if bad:  # argmax would still name a class for a row of NaNs: refuse to read anything from them
        raise NonFiniteOutputs(
            f"the model's outputs are NaN or infinite for {bad:,} of {logits.shape[0]:,} inputs, so no prediction "
            "or accuracy is read from them: its weights overflow float32 (an adapter's weight or scale too large?)"
        )
    return logits


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    return Evaluation.from_predictions(predict(model, x).argmax(dim=1), y)


def compare(before: Evaluation, after: Evaluation) -> dict[str, Any]:
    """What changed from `before` to `after`: accuracy deltas (in fractions) and fixed/broken images."""
    was_wrong, now_wrong = set(before.misclassified), set(after.misclassified)
    return {
        "accuracy_delta": after.accuracy - before.accuracy,
        "per_digit_delta": [a - b for a, b in zip(after.per_digit_accuracy, before.per_digit_accuracy)],
        "wrong_counts_delta": [a - b for a, b in zip(after.wrong_counts, before.wrong_counts)],
        "confusion_delta": [
            [a - b for a, b in zip(row_a, row_b)] for row_a, row_b in zip(after.confusion, before.confusion)
        ],
        "fixed": sorted(was_wrong - now_wrong),
        "broken": sorted(now_wrong - was_wrong),
    }
