"""What training holds in memory, per method: exact bytes of every tensor of one real step (weights,
gradients, Adam's states, what autograd saves for backward), and the measured peak of a short real run.

    rows = memory_rows(base, data, digits, settings)  # full fine-tuning and LoRA at each rank
    ratio = memory_ratios(rows, 8)                    # full over LoRA r=8
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_core.data import MnistData, as_inputs
from lora_core.lab.run import PeakMemory, finetune_config, named_progress
from lora_core.lora import LoraModel, base_state_dict
from lora_core.model import MLP
from lora_core.train import FinetuneConfig, ProgressCallback, adam, finetune, train_parameters

if TYPE_CHECKING:
    from lora_core.lab.analysis.settings import AnalysisSettings

FULL_LR = 1e-3  # full fine-tuning's learning rate in the experiments (ExperimentSettings.full_lr)
# The float training images the measured runs draw from, made before the measurement starts (the
# fine-tuning loop, train.train_parameters, normalises uint8 pixels batch by batch and takes these floats
# as they are), so that the measured block holds the training's own memory alone.
MEMORY_SUBSET = 12_000


# --- memory ------------------------------------------------------------------------------------------------------
@dataclass
class MemoryRow:
    """What one training method holds in memory, exactly (bytes of the tensors), and a measured peak."""

    method: str  # "full" or "lora"
    rank: int | None
    trainable_params: int
    weights_bytes: int  # every parameter of the model: frozen base and trained ones
    gradient_bytes: int  # .grad of the trained parameters after backward
    adam_bytes: int  # Adam's exp_avg and exp_avg_sq
    adam_step_bytes: int  # Adam's step counters (one scalar tensor per trained tensor)
    activation_bytes: int  # what autograd saved for backward in one step (unique storages, parameters left out)
    batch_size: int
    peak_bytes: int | None = None  # measured over a real short run (None: not measured)
    peak_measure: str = ""

    @property
    def label(self) -> str:
        return "full fine-tuning" if self.method == "full" else f"LoRA r={self.rank}"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.gradient_bytes + self.adam_bytes + self.adam_step_bytes + self.activation_bytes

    @property
    def train_state_bytes(self) -> int:
        """Gradients and Adam: what training adds per trained parameter."""
        return self.gradient_bytes + self.adam_bytes + self.adam_step_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "label": self.label,
            "total_bytes": self.total_bytes,
            "train_state_bytes": self.train_state_bytes,
        }


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def exact_step_memory(
    model: nn.Module, params: Sequence[nn.Parameter], x: torch.Tensor, y: torch.Tensor, lr: float
) -> dict[str, int]:
    """Run one real fp32 training step (Adam as the training loops build it) and count the bytes of every
    tensor it holds: the model's parameters, the gradients, Adam's states, and the tensors autograd saved for
    backward (through saved_tensors_hooks; each storage once, the parameters themselves left out)."""
    device = next(model.parameters()).device
    optimizer = adam(params, lr, device)
    parameters = {_storage_key(p) for p in model.parameters()}
    saved: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in parameters and key[1] != 0:
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradient_bytes = sum(p.grad.nbytes for p in params if p.grad is not None)
        optimizer.step()
    finally:
        model.eval()
    moments = steps = 0
    for p in params:
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor):
                if key == "step":
                    steps += value.nbytes
                else:
                    moments += value.nbytes
    return {
        "weights_bytes": sum(p.nbytes for p in model.parameters()),
        "gradient_bytes": gradient_bytes,
        "adam_bytes": moments,
        "adam_step_bytes": steps,
        "activation_bytes": sum(saved.values()),
        "trainable_params": sum(p.numel() for p in params),
    }


def _fresh_model(base_state: dict[str, torch.Tensor], hidden: tuple[int, int], device: torch.device) -> MLP:
    model = MLP(*hidden)
    model.load_state_dict(base_state)
    return model.to(device)


def _lora_model(
    base_state: dict[str, torch.Tensor], hidden: tuple[int, int], device: torch.device, rank: int, seed: int
) -> tuple[LoraModel, list[nn.Parameter]]:
    lora_model = LoraModel(_fresh_model(base_state, hidden, device))
    lora_model.add_adapter("memory", finetune_config(rank=rank).lora_config(), seed=seed)
    return lora_model, lora_model.mark_only_lora_trainable("memory")


def memory_rows(
    base: MLP,
    data: MnistData,
    digits: tuple[int, ...],
    settings: AnalysisSettings,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    measure_peak: bool = True,
) -> list[MemoryRow]:
    """Full fine-tuning and LoRA at each of settings.memory_ranks: exact bytes from one real step on a batch of
    settings.batch_size, then the peak of a real run of settings.memory_steps steps (PeakMemory: on CUDA the
    allocator's peak, on the CPU the process's resident high-water mark), from an empty start: the model's
    weights are copied inside the measured block, so the peak is comparable with the exact total."""
    device = next(base.parameters()).device
    # the plain MLP's keys even where LoRA wraps the layers (run_analysis hands in the model it analysed)
    base_state = {k: v.detach().clone() for k, v in base_state_dict(base).items()}
    hidden = base.hidden
    n = data.train_images.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))[: min(n, MEMORY_SUBSET)]
    subset = dataclasses.replace(data, train_x=as_inputs(data.train_images[pick]), train_y=data.train_y[pick])
    batch = torch.randperm(subset.train_y.shape[0], generator=torch.Generator().manual_seed(settings.seed))
    batch = batch[: settings.batch_size]
    x, y = subset.train_x[batch].to(device), subset.train_y[batch].to(device)
    rows: list[MemoryRow] = []
    methods: list[tuple[str, int | None]] = [("full", None)] + [("lora", r) for r in settings.memory_ranks]
    for method, rank in methods:
        if method == "full":
            model = _fresh_model(base_state, hidden, device)
            params = list(model.parameters())
            exact = exact_step_memory(model, params, x, y, FULL_LR)
        else:
            assert rank is not None
            lora_model, params = _lora_model(base_state, hidden, device, rank, settings.seed)
            exact = exact_step_memory(lora_model, params, x, y, settings.lr)
        del params
        rows.append(MemoryRow(method=method, rank=rank, batch_size=settings.batch_size, **exact))
    if measure_peak:
        _warm_up(base_state, hidden, device, subset, digits, settings)
        for row in rows:
            row.peak_bytes, row.peak_measure = _measured_peak(
                row, base_state, hidden, device, subset, digits, settings, progress, stop
            )
    return rows


def _memory_config(
    settings: AnalysisSettings, digits: tuple[int, ...], rank: int, lr: float, steps: int
) -> FinetuneConfig:
    return finetune_config(settings, digits=digits, rank=rank, lr=lr, steps=steps, precision="fp32")


def _warm_up(
    base_state: dict[str, torch.Tensor],
    hidden: tuple[int, int],
    device: torch.device,
    data: MnistData,
    digits: tuple[int, ...],
    settings: AnalysisSettings,
) -> None:
    """Two unmeasured steps of each method first: PyTorch's one-time set-up (kernels, the autograd engine's and
    the optimizer's first allocations) would otherwise land in the first method measured."""
    lora_model = LoraModel(_fresh_model(base_state, hidden, device))
    finetune(lora_model, "warm-up", data, _memory_config(settings, digits, 8, settings.lr, 2))
    model = _fresh_model(base_state, hidden, device)
    train_parameters(
        model, list(model.parameters()), data, _memory_config(settings, digits, 8, FULL_LR, 2), phase="warm-up"
    )


def _measured_peak(
    row: MemoryRow,
    base_state: dict[str, torch.Tensor],
    hidden: tuple[int, int],
    device: torch.device,
    data: MnistData,
    digits: tuple[int, ...],
    settings: AnalysisSettings,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
) -> tuple[int, str]:
    phase = f"memory: {row.label}"
    named = named_progress(progress, phase)
    with PeakMemory(device) as memory:
        if row.method == "full":
            model = _fresh_model(base_state, hidden, device)
            config = _memory_config(settings, digits, 8, FULL_LR, settings.memory_steps)
            train_parameters(
                model, list(model.parameters()), data, config, phase=phase, progress=memory.progress(named), stop=stop
            )
        else:
            assert row.rank is not None
            lora_model = LoraModel(_fresh_model(base_state, hidden, device))
            config = _memory_config(settings, digits, row.rank, settings.lr, settings.memory_steps)
            finetune(lora_model, "memory", data, config, progress=memory.progress(named), stop=stop)
    return memory.peak_bytes, memory.measure


def memory_ratios(rows: Sequence[MemoryRow], rank: int = 8) -> dict[str, float | None] | None:
    """Full fine-tuning over LoRA at `rank`: in all (exact), in gradients + Adam, and in the measured peak."""
    full = next((r for r in rows if r.method == "full"), None)
    lora = next((r for r in rows if r.method == "lora" and r.rank == rank), None)
    if full is None or lora is None:
        return None
    peak = (
        full.peak_bytes / lora.peak_bytes
        if full.peak_bytes is not None and lora.peak_bytes is not None and lora.peak_bytes > 0
        else None
    )
    return {
        "rank": rank,
        "total": full.total_bytes / lora.total_bytes,
        "train_state": full.train_state_bytes / lora.train_state_bytes,
        "trainable_params": full.trainable_params / lora.trainable_params,
        "peak": peak,
    }
