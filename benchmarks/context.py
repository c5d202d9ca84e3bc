"""How much work each benchmark item does (FULL or QUICK), and what the items share while they run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_core.data import MnistData


@dataclass(frozen=True)
class Sizes:
    """How much work each item does. FULL is the real benchmark; QUICK only checks that it runs."""

    baseline_steps: int | None  # tutorial loop: batches of 10 (None: one full epoch)
    train_samples: int | None  # ours, and the scaling epochs (None: all 60,000)
    peak_trials: int
    peak_n: int
    step_rounds: int  # interleaved rounds for step and inference timings
    step_calls: int  # calls per round
    infer_rounds: int
    latency_runs: int
    study_args: tuple[str, ...]  # extra arguments for `python -m lora_core study`
    finetune_check_steps: int  # steps of lora_core.train.finetune timed against the benchmark's LoRA step
    infer_batch: int = 2500  # lora_core.evaluate's batch
    ranks: tuple[int, ...] = (1, 4, 16, 64)
    rank_batch: int = 128
    scaled_hidden: tuple[int, int] = (2000, 4000)
    study_timeout_s: float = 900.0
    precision_seeds: tuple[int, ...] = (0, 1, 2)  # bf16 against fp32: one epoch of each per seed
    train_cli_args: tuple[str, ...] = ()  # extra arguments for `python -m lora_core train`
    train_cli_timeout_s: float = 600.0
    page_rounds: int = 2  # item 9: rounds of (CLI study, the page's study)
    page_study_settings: tuple[tuple[str, int], ...] = ()  # the Home page's "Study settings" fields to set
    page_load_rounds: int = 5  # item 10: loads of each page in a fresh tab, switches to each page
    page_names: tuple[str, ...] | None = None  # item 10: the pages it loads (None: every page)
    control_moves: int = 10  # item 10: moves of each control
    page_lab_steps: int = 600  # item 10: steps of the second adapter beside the study's


FULL = Sizes(
    baseline_steps=None,
    train_samples=None,
    peak_trials=5,
    peak_n=2048,
    step_rounds=15,
    step_calls=5,
    infer_rounds=15,
    latency_runs=300,
    study_args=(),
    finetune_check_steps=40,
)
QUICK = Sizes(
    baseline_steps=30,
    train_samples=512,
    peak_trials=2,
    peak_n=256,  # at 512 the four peaks (fp32 and bf16, before and after training) took 40 s on a busy machine
    step_rounds=2,
    step_calls=1,
    infer_rounds=2,
    latency_runs=10,
    # tiny models, and few large batches for the epoch of 60,000: on a busy machine every step pays for
    # its threads waiting on each other, whatever the model's size
    study_args=(
        *("--train-hidden", "16", "16", "--train-batch-size", "2048"),
        *("--steps", "5", "--ft-batch-size", "16", "--rank", "4"),
    ),
    finetune_check_steps=2,
    infer_batch=256,
    rank_batch=32,
    scaled_hidden=(2000, 4000),
    study_timeout_s=240.0,
    train_cli_args=("--hidden", "16", "16", "--batch-size", "2048"),  # still one epoch of all 60,000 samples
    train_cli_timeout_s=240.0,
    page_rounds=1,
    page_load_rounds=1,
    page_names=("Home", "Parameters"),  # the first page and a light one (the controls visit Evaluation too)
    control_moves=2,
    page_lab_steps=10,
    page_study_settings=(("Hidden size 1", 16), ("Hidden size 2", 16), ("Fine-tuning steps", 5)),
)


@dataclass
class Context:
    data: MnistData
    data_dir: Path
    sizes: Sizes
    log: Callable[[str], None]
    shared: dict[str, Any] = field(default_factory=dict)  # figures one item hands to a later one

    def train_data(self) -> MnistData:
        n = self.sizes.train_samples
        if n is None or n >= self.data.train_x.shape[0]:
            return self.data
        idx = torch.randperm(self.data.train_x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        return dataclasses.replace(self.data, train_x=self.data.train_x[idx], train_y=self.data.train_y[idx])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.train_x[:size].contiguous(), self.data.train_y[:size].contiguous()
