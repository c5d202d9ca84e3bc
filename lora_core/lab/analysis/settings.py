"""The analysis' settings: which adapters the paper's analysis trains and compares, and the memory table's runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from lora_core.errors import ConfigError
from lora_core.lab.run import finetune_config
from lora_core.model import IN_FEATURES
from lora_core.precision import check_precision
from lora_core.train import FinetuneConfig, check_int, check_lr

MEMORY_RANKS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class AnalysisSettings:
    """The analysis adapters (the paper's figure 3: ranks 8 and 64; a second seed at rank 8) and the memory table.
    Adapters train as `finetune` does by default: 600 steps of batch 128, lr 3e-3, replay 0.5; alpha follows the rank
    (lora_core.lab.run.alpha_for)."""

    small_rank: int = 8
    large_rank: int = 64
    seed: int = 0
    other_seed: int = 1
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    replay: float = 0.5
    precision: str = "auto"
    device: str = "auto"
    memory_ranks: tuple[int, ...] = MEMORY_RANKS
    memory_steps: int = 20
    directions: int = 8
    random_draws: int = 20

    def __post_init__(self) -> None:
        self.memory_ranks = tuple(self.memory_ranks)

    def finetune_config(self, rank: int, seed: int, digits: tuple[int, ...] | None) -> FinetuneConfig:
        return finetune_config(self, digits=digits, rank=rank, seed=seed)

    def adapter_specs(self) -> list[tuple[str, int, int]]:
        """(key, rank, seed) of the three analysis adapters."""
        return [
            (f"r{self.small_rank}-seed{self.seed}", self.small_rank, self.seed),
            (f"r{self.large_rank}-seed{self.seed}", self.large_rank, self.seed),
            (f"r{self.small_rank}-seed{self.other_seed}", self.small_rank, self.other_seed),
        ]

    def validate(self, model: nn.Module | None = None) -> None:
        check_int("small_rank", self.small_rank, 1, 10_000)
        check_int("large_rank", self.large_rank, 1, 10_000)
        if self.large_rank <= self.small_rank:
            raise ConfigError(
                "large_rank", f"must be larger than the small rank {self.small_rank}, got {self.large_rank}"
            )
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("other_seed", self.other_seed, 0, 2**63 - 1)
        if self.other_seed == self.seed:
            raise ConfigError("other_seed", f"must differ from the seed {self.seed} (two seeds are compared)")
        check_int("memory_steps", self.memory_steps, 1, 10_000)
        check_int("directions", self.directions, 1, IN_FEATURES)
        check_int("random_draws", self.random_draws, 1, 10_000)
        check_lr(self.lr)
        check_precision(self.precision)
        if not self.memory_ranks:
            raise ConfigError("memory_ranks", "give at least one rank")
        for r in self.memory_ranks:
            check_int("memory_ranks", r, 1, 10_000)
        for rank in (self.small_rank, self.large_rank):
            self.finetune_config(rank, self.seed, (0,)).validate(model)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory_ranks"] = list(self.memory_ranks)
        return d
