"""The base network of the study: a three-layer MLP for 28x28 MNIST digits.

784 -> 1000 -> 2000 -> 10 with ReLU between layers and raw logits out: 2,807,010 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

SIDE = 28  # an MNIST digit is SIDE x SIDE pixels; every picture the model sees is made that size
IN_FEATURES = SIDE * SIDE
NUM_CLASSES = 10
DEFAULT_HIDDEN: tuple[int, int] = (1000, 2000)
MAX_HIDDEN = 16_384  # the largest hidden size a base model may have
LAYER_NAMES: tuple[str, ...] = ("linear1", "linear2", "linear3")


class MLP(nn.Module):
    """Flattened image -> logits for the ten digits."""

    def __init__(self, hidden1: int = DEFAULT_HIDDEN[0], hidden2: int = DEFAULT_HIDDEN[1]) -> None:
        super().__init__()
        if hidden1 < 1 or hidden2 < 1:
            raise ValueError(f"hidden sizes must be positive, got {hidden1} and {hidden2}")
        self.hidden = (int(hidden1), int(hidden2))
        self.linear1 = nn.Linear(IN_FEATURES, hidden1)
        self.linear2 = nn.Linear(hidden1, hidden2)
        self.linear3 = nn.Linear(hidden2, NUM_CLASSES)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, IN_FEATURES)
        x = self.relu(self.linear1(x))
        x = self.relu(self.linear2(x))
        return self.linear3(x)


def count_parameters(hidden: tuple[int, int] = DEFAULT_HIDDEN) -> int:
    """Number of weights and biases of an MLP with these hidden sizes, without building it."""
    sizes = (IN_FEATURES, *hidden, NUM_CLASSES)
    return sum(i * o + o for i, o in zip(sizes, sizes[1:]))
