"""The LoRA paper's analysis (Hu et al. 2021, arXiv 2106.09685, section 7) on our adapters, and what training
costs in memory, measured from the tensors themselves.

    phi = subspace_similarity(a_r8, a_r64)        # figure 3: phi[i-1, j-1] for the top i and top j directions
    amp = amplification(w, delta, r, "linear1")     # table 7: ||U^T W V^T||_F beside W's own and random directions
    images, sv = input_directions(delta_linear1, 8) # linear1's top input directions as 28x28 images
    rows = memory_rows(base, data, digits, settings)  # exact bytes per component and a measured peak, per method

    result = run_analysis(store, data, settings)    # trains (or reuses) the three adapters, computes, saves JSON

Where things go:
    <artifacts>/analysis/adapters.json    similarity, amplification and directions (ADAPTERS_FORMAT)
    <artifacts>/analysis/memory.json      the memory table (MEMORY_FORMAT)
Both are written atomically under the artifacts folder's writer lock; readers (load_analysis) only read.

The analysis adapters are the study's task (the base model's weakest digit, with replay), ranks 8 and 64 with
seed 0 and rank 8 with seed 1, alpha = 2 x rank (scale 2 at every rank, as the sweeps). A saved adapter trained
with exactly those settings on this base model is loaded instead of training it again (read-only); the others
are trained in memory and not saved as adapters.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_core.data import MnistData, as_inputs
from lora_core.errors import ArtifactError, ConfigError
from lora_core.evaluate import evaluate
from lora_core.lab.run import PeakMemory, environment, named_progress
from lora_core.lab.study import load_base_for_lora
from lora_core.lora import LoraModel, base_state_dict
from lora_core.model import IN_FEATURES, LAYER_NAMES, MLP
from lora_core.precision import check_precision
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord
from lora_core.store.results import read_saved, write_saved
from lora_core.train import (
    FinetuneConfig,
    ProgressCallback,
    adam,
    check_int,
    check_lr,
    finetune,
    resolve_device,
    train_parameters,
)

ADAPTERS_FORMAT = "lora_core.analysis.adapters.v1"
MEMORY_FORMAT = "lora_core.analysis.memory.v1"
ANALYSIS_DIR = "analysis"
ADAPTERS_FILE = "adapters.json"
MEMORY_FILE = "memory.json"
PARTS = ("similarity", "amplification", "directions", "memory")
ADAPTER_PARTS = ("similarity", "amplification", "directions")
MEMORY_RANKS = (1, 2, 4, 8, 16, 32, 64)
RATIO_RANK = 8  # the rank the memory ratio full / LoRA is stated at (the first rank measured if 8 is not)
FULL_LR = 1e-3  # full fine-tuning's learning rate in the experiments (ExperimentSettings.full_lr)
SIDE = 28
# The float training images the measured runs draw from, made before the measurement starts (the
# fine-tuning loop, train.train_parameters, normalises uint8 pixels batch by batch and takes these floats
# as they are), so that the measured block holds the training's own memory alone.
MEMORY_SUBSET = 12_000


# --- subspace similarity (figure 3) ----------------------------------------------------------------------------
def right_singular_vectors(a: torch.Tensor) -> torch.Tensor:
    """The right singular vectors of A (r x in) as columns, largest singular value first: shape (in, r)."""
    _, _, vh = torch.linalg.svd(a.detach().to("cpu", torch.float64), full_matrices=False)
    return vh.T


def subspace_similarity(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """The paper's phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) for i <= r1, j <= r2, with U the
    right singular vectors of each A (r x in): entry [i-1, j-1], in [0, 1]. 1 means the top-i directions of one
    lie inside the top-j of the other (or the other way round); unrelated random subspaces give about
    max(i, j) / in."""
    if a1.ndim != 2 or a2.ndim != 2 or a1.shape[1] != a2.shape[1]:
        raise ConfigError(
            "adapters", f"A matrices must be r x in with the same in, got {tuple(a1.shape)} and {tuple(a2.shape)}"
        )
    u1, u2 = right_singular_vectors(a1), right_singular_vectors(a2)
    # [i-1, j-1] = sum over the first i rows and j columns of (U1^T U2)^2 = ||U1[:, :i]^T U2[:, :j]||_F^2
    overlap = (u1.T @ u2).square().cumsum(0).cumsum(1)
    i = torch.arange(1, overlap.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, overlap.shape[1] + 1, dtype=torch.float64)[None, :]
    return (overlap / torch.minimum(i, j)).to(torch.float32)


@dataclass(frozen=True)
class LowRankUpdate:
    """An adapter's update scale·B·A kept as its factors: its SVD then costs two thin QRs and an r x r SVD
    instead of the SVD of a dense out x in matrix (2000 x 1000 for linear2), with the same result."""

    b: torch.Tensor  # out x r
    a: torch.Tensor  # r x in
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])

    def dense(self) -> torch.Tensor:
        return (self.b.detach().double() @ self.a.detach().double()) * self.scale


Update = torch.Tensor | LowRankUpdate


def update_svd(delta: Update) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of an update (float64, largest first): of the dense matrix, or from its factors."""
    with torch.no_grad():
        if isinstance(delta, LowRankUpdate):
            qb, rb = torch.linalg.qr(delta.b.detach().to("cpu", torch.float64))
            qa, ra = torch.linalg.qr(delta.a.detach().to("cpu", torch.float64).T)
            um, sv, vmh = torch.linalg.svd(delta.scale * rb @ ra.T)  # scale·B·A = Qb (scale Rb Raᵀ) Qaᵀ
            return qb @ um, sv, vmh @ qa.T
        return torch.linalg.svd(delta.detach().to("cpu", torch.float64), full_matrices=False)


def update_input_basis(delta: Update, rank: int) -> torch.Tensor:
    """The update's top `rank` right singular vectors as rows, each scaled by its singular value (rank x in): a
    matrix whose right singular vectors, in order, are the update's, for subspace_similarity."""
    _, sv, vh = update_svd(delta)
    return sv[:rank, None] * vh[:rank]


def similarity_summary(phi: torch.Tensor, in_features: int, k: int = 8) -> dict[str, Any]:
    """The figures the paper reads off figure 3, with what unrelated random subspaces would give."""
    r1, r2 = phi.shape
    k = min(k, r1, r2)
    return {
        "top1": float(phi[0, 0]),
        "k": k,
        "top_k": float(phi[k - 1, k - 1]),
        "top1_in_all": float(phi[0, r2 - 1]),  # the first direction of A1 inside all of A2's
        "top_k_in_all": float(phi[k - 1, r2 - 1]),
        "random_top1": 1 / in_features,
        "random_top_k": k / in_features,
        "random_top1_in_all": r2 / in_features,
        "random_top_k_in_all": max(k, r2) / in_features,
    }


def similarity_reading(
    layer: str, names: tuple[str, str], summary: dict[str, Any], init: dict[str, Any] | None = None
) -> str:
    """One sentence reading figure 3's numbers for a layer; with `init` (the same figures for the two adapters'
    A before training), what training changed."""
    k = summary["k"]
    text = (
        f"{layer}: the top direction of {names[0]} lies {summary['top1_in_all']:.0%} inside all of {names[1]}'s "
        f"(random: {summary['random_top1_in_all']:.1%}) and overlaps its top direction by φ(1,1) = "
        f"{summary['top1']:.2f} (random: {summary['random_top1']:.2g}); the top {k} directions overlap by "
        f"φ({k},{k}) = {summary['top_k']:.2f} (random: {summary['random_top_k']:.2g})."
    )
    if init is not None:
        text += (
            f" Before training, their random A gave φ(1, all) = {init['top1_in_all']:.2f} and φ({k},{k}) = "
            f"{init['top_k']:.2f}"
            + (" (the same seed draws the same first rows)" if init["top_k_in_all"] > 0.99 else "")
            + "."
        )
    return text


# --- how the update relates to W (table 7) ---------------------------------------------------------------------
@dataclass
class Amplification:
    """||U^T W V^T||_F for the update's top-r singular directions U (left) and V (right, rows), beside the same
    projection onto W's own top-r directions and onto random orthonormal ones, and ||dW||_F."""

    layer: str
    rank: int
    delta_norm: float  # ||dW||_F
    projected_norm: float  # ||U^T W V^T||_F, U and V from dW
    weight_top_norm: float  # the same with W's own top-r singular directions
    random_norm: float  # the same with random orthonormal directions (mean over draws)
    weight_norm: float  # ||W||_F

    @property
    def factor(self) -> float | None:
        """The amplification factor ||dW||_F / ||U^T W V^T||_F (None where W has nothing along dW's directions)."""
        return self.delta_norm / self.projected_norm if self.projected_norm > 0 else None

    @property
    def position(self) -> float | None:
        """Where W's weight along dW's directions lies between random directions (0) and W's own top ones (1),
        on a log scale; None where W's top directions carry no more than random ones."""
        if self.projected_norm <= 0 or self.random_norm <= 0 or self.weight_top_norm <= self.random_norm * 1.0001:
            return None
        return math.log(self.projected_norm / self.random_norm) / math.log(self.weight_top_norm / self.random_norm)

    @property
    def emphasised(self) -> bool | None:
        """True: dW amplifies directions W already emphasises (closer to W's top directions than to random ones)."""
        position = self.position
        return None if position is None else position >= 0.5

    def reading(self) -> str:
        """One sentence reading the numbers for the user."""
        head = (
            f"{self.layer}: along the update's top {self.rank} directions W has "
            f"||UᵀWVᵀ||_F = {self.projected_norm:.3g}, against {self.weight_top_norm:.3g} along W's own top "
            f"{self.rank} and {self.random_norm:.3g} along random ones"
        )
        factor = self.factor
        if factor is None:
            return head + "; the update is zero, so it amplifies nothing."
        times_random = self.projected_norm / self.random_norm if self.random_norm > 0 else float("inf")
        share = self.projected_norm / self.weight_top_norm if self.weight_top_norm > 0 else 0.0
        if self.emphasised is None:
            verdict = "W's top directions carry no more than random ones at this rank, so which it amplifies is moot"
        elif self.emphasised:
            verdict = (
                f"the update amplifies directions W already emphasises ({share:.0%} of what W's top directions carry)"
            )
        else:
            related = (
                f", though {times_random:.1f}× more than random ones: they are related to W"
                if times_random >= 2
                else ", no more than random directions"
            )
            verdict = (
                f"the update amplifies directions W barely uses ({share:.1%} of what W's top directions carry{related})"
            )
        return f"{head}: {verdict}, by a factor of {factor:.3g} (||ΔW||_F = {self.delta_norm:.3g})."

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "factor": self.factor,
            "position": self.position,
            "emphasised": self.emphasised,
            "reading": self.reading(),
        }


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns, uniformly random (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


@torch.no_grad()
def amplification(
    weight: torch.Tensor,
    delta: Update,
    rank: int,
    layer: str = "",
    draws: int = 20,
    seed: int = 0,
    weight_singular_values: torch.Tensor | None = None,
) -> Amplification:
    """The paper's table 7 for one layer: W (out x in), its update dW = scale B A (same shape), r directions.
    `weight_singular_values` (W's, largest first) saves computing them again for another adapter."""
    if tuple(weight.shape) != tuple(delta.shape) or weight.ndim != 2:
        raise ConfigError(
            "delta", f"W and dW must be matrices of one shape, got {tuple(weight.shape)} and {tuple(delta.shape)}"
        )
    if not 1 <= rank <= min(weight.shape):
        raise ConfigError(
            "rank", f"must be from 1 to {min(weight.shape)} for a {tuple(weight.shape)} layer, got {rank}"
        )
    w = weight.detach().to("cpu", torch.float64)
    u, sv, vh = update_svd(delta)
    u, vh = u[:, :rank], vh[:rank]
    delta_norm = float(sv.square().sum().sqrt())
    # a zero update has no directions (its singular vectors would be arbitrary): nothing of W lies along them
    projected = float(torch.linalg.matrix_norm(u.T @ w @ vh.T)) if delta_norm > 0 else 0.0
    w_sv = torch.linalg.svdvals(w) if weight_singular_values is None else weight_singular_values.double()
    top = float(w_sv[:rank].square().sum().sqrt())  # ||Uw^T W Vw^T||_F = the norm of W's top-r singular values
    generator = torch.Generator().manual_seed(seed)
    random_norms = [
        float(
            torch.linalg.matrix_norm(
                random_orthonormal(w.shape[0], rank, generator).T @ w @ random_orthonormal(w.shape[1], rank, generator)
            )
        )
        for _ in range(draws)
    ]
    return Amplification(
        layer=layer,
        rank=rank,
        delta_norm=delta_norm,
        projected_norm=projected,
        weight_top_norm=top,
        random_norm=sum(random_norms) / len(random_norms),
        weight_norm=float(torch.linalg.matrix_norm(w)),
    )


def amplification_summary(rows: Sequence[Amplification]) -> str:
    """One sentence over all layers."""
    barely = [a.layer for a in rows if a.emphasised is False]
    already = [a.layer for a in rows if a.emphasised]
    parts = []
    if barely:
        parts.append(f"on {', '.join(barely)} the update amplifies directions W barely uses")
    if already:
        parts.append(f"on {', '.join(already)} it amplifies directions W already emphasises")
    if not parts:
        return "No layer's update could be read against W (zero updates, or W as strong in every direction)."
    factors = ", ".join(f"{a.layer} {a.factor:.3g}" for a in rows if a.factor is not None)
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]} (amplification factors: {factors})."


# --- linear1's input directions ------------------------------------------------------------------------------------
@torch.no_grad()
def input_directions(delta: Update, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top `count` right singular vectors of linear1's update (rows of V^T, length 784) as (count, 28, 28)
    images, each signed so that its largest-magnitude pixel is positive, and the update's singular values."""
    if len(delta.shape) != 2 or delta.shape[1] != IN_FEATURES:
        raise ConfigError("delta", f"expected linear1's update (out x {IN_FEATURES}), got {tuple(delta.shape)}")
    _, sv, vh = update_svd(delta)
    rows = vh[: max(0, min(count, vh.shape[0]))]
    peak = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True))
    rows = rows * torch.where(peak < 0, -1.0, 1.0)
    return rows.reshape(-1, SIDE, SIDE).to(torch.float32), sv.to(torch.float32)


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
    lora_model.add_adapter("memory", FinetuneConfig(rank=rank, alpha=2.0 * rank).lora_config(), seed=seed)
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
    return FinetuneConfig(
        digits=digits,
        rank=rank,
        alpha=2.0 * rank,
        steps=steps,
        batch_size=settings.batch_size,
        lr=lr,
        replay=settings.replay,
        seed=settings.seed,
        device=settings.device,
        precision="fp32",
    )


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


# --- the settings and the whole run ----------------------------------------------------------------------------------
@dataclass
class AnalysisSettings:
    """The analysis adapters (the paper's figure 3: ranks 8 and 64; a second seed at rank 8) and the memory table.
    Adapters train as `finetune` does by default: 600 steps of batch 128, lr 3e-3, replay 0.5; alpha = 2 x rank."""

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
        return FinetuneConfig(
            digits=digits,
            rank=rank,
            alpha=2.0 * rank,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            replay=self.replay,
            seed=seed,
            device=self.device,
            precision=self.precision,
        )

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


def find_saved_adapter(store: ArtifactStore, base_sha256: str, config: FinetuneConfig) -> str | None:
    """A saved adapter of this base trained with exactly `config` (device and precision aside), or None."""
    wanted = {k: v for k, v in config.to_dict().items() if k not in ("device", "precision")}
    for record in store.list_adapters():
        if record.error or record.base_sha256 != base_sha256:
            continue
        trained = (record.metrics or {}).get("finetune") or {}
        if all(trained.get(key) == value for key, value in wanted.items()):
            return record.name
    return None


def _obtain_adapters(
    store: ArtifactStore,
    base: BaseModelRecord,
    lora_model: LoraModel,
    data: MnistData,
    digits: tuple[int, ...],
    settings: AnalysisSettings,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    log: Callable[[str], None],
    initial: dict[str, dict[str, torch.Tensor]],
) -> list[dict[str, Any]]:
    """Load or train the three analysis adapters into `lora_model` under their keys; say where each came from.
    `initial` receives each one's A before training (initial_a), by key and layer."""
    sources = []
    for key, rank, seed in settings.adapter_specs():
        config = settings.finetune_config(rank, seed, digits)
        initial[key] = initial_a(lora_model.model, config)
        saved = find_saved_adapter(store, base.fingerprint, config)
        if saved is not None:
            log(f"{key}: reusing the saved adapter {saved!r} (trained with these settings on this base)")
            store.load_adapter(lora_model, saved, base.fingerprint, as_name=key)
            sources.append({"key": key, "rank": rank, "seed": seed, "source": f"saved adapter {saved!r}"})
            continue
        log(f"{key}: training rank {rank}, seed {seed}, {settings.steps} steps (kept in memory, not saved)")
        named = named_progress(progress, f"rank {rank}, seed {seed}")
        run = finetune(lora_model, key, data, config, progress=named, stop=stop)
        sources.append(
            {
                "key": key,
                "rank": rank,
                "seed": seed,
                "source": "trained for the analysis",
                "seconds": run.seconds,
                # "auto" picks bf16 or fp32 by a timing probe: the figures depend on which (record it)
                "precision_used": run.precision.used if run.precision else None,
            }
        )
    return sources


def initial_a(model: nn.Module, config: FinetuneConfig) -> dict[str, torch.Tensor]:
    """Each layer's A as `finetune` initialises it for `config` on `model`'s device, before any step: the seed
    draws the layers' A in order, so the same seed at two ranks starts linear1 with the same first rows."""
    device = next(model.parameters()).device
    hidden = getattr(model, "hidden", None)
    if hidden is None:
        raise ConfigError("model", "expected the study's MLP (its hidden sizes)")
    scratch = LoraModel(MLP(*hidden).to(device))
    scratch.add_adapter("init", config.lora_config(), seed=config.seed)
    return {name: layer.lora_A["init"].weight.detach().clone() for name, layer in scratch.lora_layers().items()}


def analyze_adapters(
    lora_model: LoraModel,
    settings: AnalysisSettings,
    keys: Sequence[str] | None = None,
    initial: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Similarity (small vs large rank, and small rank's two seeds), amplification (both seed-0 adapters) and
    linear1's input directions (the small-rank seed-0 adapter) of adapters already in `lora_model`. With
    `initial` (each adapter's A before training, by key and layer), the similarity of the initial A's beside
    the trained ones, and how far training moved each A (||A - A0||_F / ||A0||_F)."""
    small, large, other = keys or [k for k, _, _ in settings.adapter_specs()]
    layers = {name: layer for name, layer in lora_model.lora_layers().items() if small in layer.lora_A}
    pairs = {"ranks": (small, large), "seeds": (small, other)}

    # "A": the paper's definition, the right singular vectors of A. "update": those of the update scale·B·A,
    # whose row space lies inside A's; they leave out what A still holds of its random initialisation that B
    # does not use (in linear1, e.g., the border pixels MNIST never inks, whose A columns never get a gradient).
    def update(layer: Any, key: str) -> LowRankUpdate:
        return LowRankUpdate(layer.lora_B[key].weight, layer.lora_A[key].weight, layer.scaling[key])

    bases: dict[str, Callable[[Any, str], torch.Tensor]] = {
        "A": lambda layer, key: layer.lora_A[key].weight,
        "update": lambda layer, key: update_input_basis(update(layer, key), layer.lora_A[key].weight.shape[0]),
    }
    similarity: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for basis, matrix in bases.items():
        similarity[basis] = {}
        for pair, (k1, k2) in pairs.items():
            entries = []
            for name, layer in layers.items():
                phi = subspace_similarity(matrix(layer, k1), matrix(layer, k2))
                summary = similarity_summary(phi, layer.in_features)
                init = None
                if initial is not None and basis == "A" and k1 in initial and k2 in initial:
                    init_phi = subspace_similarity(initial[k1][name], initial[k2][name])
                    init = {
                        key: value
                        for key, value in similarity_summary(init_phi, layer.in_features).items()
                        if key in ("top1", "top_k", "top1_in_all", "top_k_in_all")
                    }
                entries.append(
                    {
                        "layer": name,
                        "adapters": [k1, k2],
                        "ranks": list(phi.shape),
                        "phi": phi.tolist(),
                        **summary,
                        "init": init,
                        "reading": similarity_reading(name, (k1, k2), summary, init),
                    }
                )
            similarity[basis][pair] = entries
    amplifications: dict[str, dict[str, Any]] = {}
    weight_sv = {
        name: torch.linalg.svdvals(layer.base_layer.weight.detach().to("cpu", torch.float64))
        for name, layer in layers.items()
    }
    for key in (small, large):
        rows = [
            amplification(
                layer.base_layer.weight,
                update(layer, key),
                layer.lora_A[key].weight.shape[0],
                name,
                draws=settings.random_draws,
                seed=settings.seed,
                weight_singular_values=weight_sv[name],
            )
            for name, layer in layers.items()
        ]
        amplifications[key] = {"rows": [a.to_dict() for a in rows], "summary": amplification_summary(rows)}
    directions: dict[str, Any] | None = None
    first = layers.get(LAYER_NAMES[0])
    if first is not None:
        count = min(settings.directions, first.lora_A[small].weight.shape[0])
        images, sv = input_directions(update(first, small), count)
        directions = {
            "layer": LAYER_NAMES[0],
            "adapter": small,
            "images": images.tolist(),
            "singular_values": sv[: first.lora_A[small].weight.shape[0]].tolist(),
        }
    moved = {
        key: {
            name: float(
                torch.linalg.matrix_norm(layer.lora_A[key].weight.detach().cpu().double() - a0[name].cpu().double())
                / torch.linalg.matrix_norm(a0[name].cpu().double())
            )
            for name, layer in layers.items()
            if name in a0 and key in layer.lora_A
        }
        for key, a0 in (initial or {}).items()
    }
    return {
        "similarity": similarity,
        "amplification": amplifications,
        "directions": directions,
        "a_moved": moved,
    }


def _header(fmt: str, base: BaseModelRecord, settings: AnalysisSettings, device: torch.device) -> dict[str, Any]:
    return {
        "format": fmt,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_sha256": base.fingerprint,
        "settings": settings.to_dict(),
        "environment": environment(device),
    }


def analysis_dir(store: ArtifactStore) -> Path:
    return store.root / ANALYSIS_DIR


def run_analysis(
    store: ArtifactStore,
    data: MnistData,
    settings: AnalysisSettings | None = None,
    parts: Sequence[str] = PARTS,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    save: bool = True,
) -> dict[str, Any]:
    """The analysis parts asked for, under the artifacts folder's writer lock; saved to <artifacts>/analysis/
    (adapters.json for similarity, amplification and directions, memory.json for memory) unless save=False,
    once all have run (a stop raises RunStopped and saves nothing). Returns {"adapters": ..., "memory": ...}
    with the groups that ran."""
    settings = settings or AnalysisSettings()
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(
            "part", f"choose from {', '.join(PARTS)} (or all), got {', '.join(map(str, parts)) or 'none'}"
        )
    settings.validate()
    device = resolve_device(settings.device)
    out: dict[str, Any] = {}
    with store.writing("running the analysis (adapters' subspaces, memory)"):
        base, lora_model = load_base_for_lora(store, settings.device)
        settings.validate(lora_model.model)
        before = evaluate(base.model, data.test_x, data.test_y)
        digits = (before.weakest_digit,)
        log(
            f"Task: the base model's weakest digit {digits[0]} "
            f"({before.per_digit_accuracy[digits[0]]:.2%}), with replay"
        )
        if any(p in ADAPTER_PARTS for p in parts):
            initial: dict[str, dict[str, torch.Tensor]] = {}
            sources = _obtain_adapters(store, base, lora_model, data, digits, settings, progress, stop, log, initial)
            result = {
                **_header(ADAPTERS_FORMAT, base, settings, device),
                "target_digits": list(digits),
                "adapters": sources,
                **analyze_adapters(lora_model, settings, initial=initial),
            }
            out["adapters"] = result
        if "memory" in parts:
            log(f"Memory: full fine-tuning and LoRA at ranks {', '.join(map(str, settings.memory_ranks))}")
            rows = memory_rows(base.model, data, digits, settings, progress=progress, stop=stop)
            result = {
                **_header(MEMORY_FORMAT, base, settings, device),
                "target_digits": list(digits),
                "rows": [r.to_dict() for r in rows],
                "ratio": memory_ratios(
                    rows, RATIO_RANK if RATIO_RANK in settings.memory_ranks else settings.memory_ranks[0]
                ),
            }
            out["memory"] = result
        if save:  # only once every part asked for has run: a stopped or failed run saves nothing
            files = {"adapters": ADAPTERS_FILE, "memory": MEMORY_FILE}
            for group, result in out.items():
                write_saved(analysis_dir(store) / files[group], result)
    return out


# --- reading what was saved ------------------------------------------------------------------------------------------
@dataclass
class SavedAnalysis:
    adapters: dict[str, Any] | None
    memory: dict[str, Any] | None
    errors: list[str]


def _read_saved(path: Path, fmt: str) -> dict[str, Any] | None:
    try:
        return read_saved(path, "analysis result", fmt)
    except FileNotFoundError:
        return None


def load_analysis(store: ArtifactStore) -> SavedAnalysis:
    """The saved analysis results (None where a part was never run), and why any could not be read. Reads only."""
    folder = analysis_dir(store)
    found: dict[str, dict[str, Any] | None] = {}
    errors = []
    for name, file, fmt in (("adapters", ADAPTERS_FILE, ADAPTERS_FORMAT), ("memory", MEMORY_FILE, MEMORY_FORMAT)):
        try:
            found[name] = _read_saved(folder / file, fmt)
        except ArtifactError as exc:
            found[name] = None
            errors.append(str(exc))
    return SavedAnalysis(found["adapters"], found["memory"], errors)


__all__ = [
    "ADAPTER_PARTS",
    "PARTS",
    "Amplification",
    "LowRankUpdate",
    "AnalysisSettings",
    "MemoryRow",
    "SavedAnalysis",
    "amplification",
    "amplification_summary",
    "analyze_adapters",
    "exact_step_memory",
    "find_saved_adapter",
    "initial_a",
    "input_directions",
    "load_analysis",
    "memory_ratios",
    "memory_rows",
    "run_analysis",
    "similarity_reading",
    "similarity_summary",
    "update_input_basis",
    "subspace_similarity",
    "update_svd",
]
