"""Training the base MLP and fine-tuning LoRA adapters, on tensors already in memory.

Both loops report progress through one callback (the CLI draws a progress bar from it, the dashboard
a live chart), stop cleanly when asked, and refuse to go on when the loss stops being finite.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lora_core.data import MnistData, as_inputs
from lora_core.errors import ConfigError, RunStopped, TrainingDiverged
from lora_core.lora import INITS, LoraConfig, LoraModel, linear_layers, validate_adapter_name
from lora_core.lora.nf4 import NF4, Nf4Config, check_base_precision
from lora_core.lora.pissa import PISSA, as_plain_lora, residual_start
from lora_core.model import DEFAULT_HIDDEN, LAYER_NAMES, MAX_HIDDEN, MLP
from lora_core.numbers import is_finite_number
from lora_core.precision import PrecisionChoice, autocast, check_precision, resolve_precision

DEVICES = ("auto", "cpu", "cuda", "mps")
# how a fine-tuned adapter starts: LoraConfig's inits (B = 0), or PiSSA (W's top singular directions, trained on
# the residual base in a copy; lora_core.lora.pissa)
FINETUNE_INITS = (*INITS, PISSA)


@dataclass
class Progress:
    """One report from a running loop."""

    phase: str
    step: int
    total_steps: int
    loss: float
    samples_per_s: float
    elapsed_s: float
    eta_s: float
    epoch: int = 1

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 1.0


ProgressCallback = Callable[[Progress], None]
# called after a training step with (step, model), the model in eval mode under no_grad; its time is left out of the
# run's seconds (a training curve's checkpoints: lora_core.lab.experiments)
StepHook = Callable[[int, torch.nn.Module], None]


@dataclass
class TrainConfig:
    """Base training with Adam. Defaults measured on 2 CPU cores (README, "Choosing the defaults"):
    lr 2e-3 decayed linearly to 0 over the run reaches 97.5-97.7% test accuracy in one epoch at batch 256,
    in fp32 and in bf16 alike (constant 1e-3: 96.4-96.8%). bf16 makes larger batches faster, but not
    better: in one epoch batch 512 loses about half a point and 1024 two, at any learning rate tried;
    batch 128 gains 0.1-0.3 points for about a fifth more time, so 256 stays.
    """

    epochs: int = 1
    batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "linear"
    seed: int = 0
    device: str = "auto"
    hidden: tuple[int, int] = DEFAULT_HIDDEN
    # "fp32", "bf16", or "auto": bf16 where a quick probe measures its matmuls faster on this device
    # (lora_core.precision), fp32 elsewhere. Measured in bf16 at these defaults: 1.8-1.9x the throughput,
    # test accuracy within 0.1 points of fp32 (seeds 0-2); a CPU without fast bf16 keeps fp32's figures.
    precision: str = "auto"

    def validate(self) -> None:
        check_int("epochs", self.epochs, 1, 1000)
        check_int("batch_size", self.batch_size, 1, 60_000)
        check_lr(self.lr)
        _check_schedule(self.lr_schedule)
        check_int("seed", self.seed, 0, 2**63 - 1)
        _check_device(self.device)
        check_precision(self.precision)
        if len(self.hidden) != 2:
            raise ConfigError("hidden", f"give two hidden sizes, got {self.hidden!r}")
        for h in self.hidden:
            check_int("hidden", h, 1, MAX_HIDDEN)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning on one or more target digits, with replay of the other digits.

    replay is the share of each batch drawn from the other digits; it keeps the adapter from
    forgetting them. Defaults measured from the default base model (see README).
    """

    digits: tuple[int, ...] | None = None  # None: the base model's weakest digit
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LAYER_NAMES
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    lr_schedule: str = "linear"
    replay: float = 0.5
    dropout: float = 0.0
    use_rslora: bool = False
    init: str = "kaiming"  # one of FINETUNE_INITS: "pissa" starts from W's top-r singular directions
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # as TrainConfig.precision; the defaults above hold in bf16 as in fp32 (README)
    # LoRA+ (Hayou et al., 2024; PEFT's create_loraplus_optimizer): B learns at this many times lr, A at lr.
    # None: plain LoRA, one rate for both. The adapter on disk is plain LoRA either way.
    loraplus_lr_ratio: float | None = None
    use_dora: bool = False  # DoRA (Liu et al., 2024): a trainable magnitude per output row beside A and B
    # VeRA (Kopiczko et al., 2024): A and B one frozen random pair shared by the layers; each trains two vectors
    use_vera: bool = False
    # QLoRA (Dettmers et al., 2023): "nf4" trains the adapter on a 4-bit NF4 copy of the frozen base, in blocks of
    # nf4_block_size weights; the adapter then runs on that base (lora_core.lora.nf4)
    base_precision: str = "fp32"
    nf4_block_size: int = Nf4Config.block_size

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.digits is not None:
            self.digits = tuple(self.digits)

    def lora_config(self) -> LoraConfig:
        """The shape of the adapter trained (for PiSSA, the rank-r adapter on the residual base; what is saved is
        its conversion to rank 2r, lora_core.lora.pissa)."""
        return LoraConfig(
            r=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.targets,
            use_rslora=self.use_rslora,
            init="kaiming" if self.init == PISSA else self.init,
            use_dora=self.use_dora,
            use_vera=self.use_vera,
        )

    def validate(self, model: MLP | None = None) -> None:
        if self.digits is not None:
            if not self.digits:
                raise ConfigError("digit", "choose at least one target digit")
            for d in self.digits:
                if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 9:
                    raise ConfigError("digit", f"must be a digit from 0 to 9, got {d!r}")
        check_int("steps", self.steps, 1, 1_000_000)
        check_int("batch_size", self.batch_size, 1, 60_000)
        check_lr(self.lr)
        _check_schedule(self.lr_schedule)
        if not is_finite_number(self.replay) or not 0.0 <= self.replay <= 1.0:
            raise ConfigError("replay", f"must be a fraction from 0 to 1, got {self.replay!r}")
        check_int("seed", self.seed, 0, 2**63 - 1)
        _check_device(self.device)
        check_precision(self.precision)
        check_loraplus_ratio(self.loraplus_lr_ratio, self.lr)
        if self.init not in FINETUNE_INITS:
            raise ConfigError("init", f"must be one of {', '.join(FINETUNE_INITS)}, got {self.init!r}")
        if self.init == PISSA and (self.use_dora or self.use_vera):
            other = "DoRA" if self.use_dora else "VeRA"
            raise ConfigError("init", f"PiSSA and {other} cannot be combined here; choose one of them")
        if self.use_vera and self.loraplus_lr_ratio is not None:
            raise ConfigError("loraplus_lr_ratio", "LoRA+ sets B's rate apart from A's; VeRA trains neither A nor B")
        check_base_precision(self.base_precision)
        quantization = self.quantization()
        if quantization is not None:
            if self.use_dora or self.use_vera or self.init == PISSA:
                kind = "DoRA" if self.use_dora else "VeRA" if self.use_vera else "PiSSA"
                raise ConfigError("base_precision", f"the NF4 base (QLoRA) takes plain LoRA adapters here, not {kind}")
            quantization.validate(None if model is None else linear_layers(model))
        self.lora_config().validate(model)

    def quantization(self) -> Nf4Config | None:
        """The NF4 config of the base the adapter trains on (None: the float32 base)."""
        return Nf4Config(self.nf4_block_size) if self.base_precision == NF4 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["digits"] = list(self.digits) if self.digits is not None else None
        if self.loraplus_lr_ratio is None:  # only for LoRA+: every other run's record stays as it was
            del d["loraplus_lr_ratio"]
        if not self.use_dora:  # likewise for DoRA
            del d["use_dora"]
        if not self.use_vera:  # and VeRA
            del d["use_vera"]
        if self.base_precision != NF4:  # and QLoRA
            del d["base_precision"], d["nf4_block_size"]
        return d


@dataclass
class RunResult:
    seconds: float
    samples_per_s: float
    losses: list[float] = field(default_factory=list)
    precision: PrecisionChoice | None = None
    # PiSSA only: the base the loop really trained on (W - s B0 A0 in a copy), for the record; the adapter was
    # saved converted to run on the untouched base
    residual_base: torch.nn.Module | None = None


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}, got {value!r}")


def check_loraplus_ratio(ratio: Any, lr: float) -> None:
    """LoRA+'s ratio: None (plain LoRA), or a positive number that keeps B's rate lr x ratio at most 1."""
    if ratio is None:
        return
    if not is_finite_number(ratio) or ratio <= 0:
        raise ConfigError("loraplus_lr_ratio", f"LoRA+'s ratio of B's rate to A's must be above 0, got {ratio!r}")
    if is_finite_number(lr) and lr * ratio > 1.0:
        raise ConfigError(
            "loraplus_lr_ratio", f"B would learn at lr x ratio = {lr * ratio:.3g}, above 1; lower the ratio or lr"
        )


def check_lr(lr: Any) -> None:
    if not is_finite_number(lr) or lr <= 0 or lr > 1.0:
        raise ConfigError("lr", f"learning rate must be a number above 0 and at most 1, got {lr!r}")


SCHEDULES = ("linear", "constant")


def _check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError("lr_schedule", f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """'linear' decays the learning rate to 0 at the last step; 'constant' keeps it."""
    if schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an unavailable choice is an error."""
    _check_device(name)
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError("device", f"{name} is not available on this machine; use cpu or auto")
    return torch.device(name)


class _Reporter:
    """Turns steps into Progress reports and enforces the stop and finite-loss rules."""

    def __init__(
        self,
        phase: str,
        total_steps: int,
        callback: ProgressCallback | None,
        stop: threading.Event | None,
    ) -> None:
        self.phase = phase
        self.total = total_steps
        self.callback = callback
        self.stop = stop
        self.start = time.perf_counter()
        self.samples = 0
        self.losses: list[float] = []
        self.excluded = 0.0  # seconds spent outside training (a step hook's evaluations)

    def step(self, step: int, loss: torch.Tensor, batch: int, epoch: int = 1) -> None:
        value = float(loss.item())
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"{self.phase}: the loss became {value} at step {step} of {self.total}; "
                "lower the learning rate. Nothing was saved."
            )
        self.losses.append(value)
        self.samples += batch
        elapsed = time.perf_counter() - self.start - self.excluded
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        eta = elapsed / step * (self.total - step) if step else 0.0
        if self.callback is not None:
            self.callback(Progress(self.phase, step, self.total, value, rate, elapsed, eta, epoch))
        if self.stop is not None and self.stop.is_set():
            raise RunStopped(f"{self.phase} stopped at step {step} of {self.total}; nothing was saved.")

    def result(self) -> RunResult:
        elapsed = time.perf_counter() - self.start - self.excluded
        return RunResult(elapsed, self.samples / elapsed if elapsed > 0 else 0.0, self.losses)


def adam(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float, device: torch.device
) -> torch.optim.Adam:
    """Adam, fused into one kernel where PyTorch has one: on the CPU the default implementation
    launches a kernel per operation per tensor, measured at 15-20% of a training step here."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


NORMALISE_STEPS = 16  # batches of uint8 pixels normalised at once in train_base: 12.8 MB of floats at batch 256


def train_base(
    data: MnistData,
    config: TrainConfig | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> tuple[MLP, RunResult]:
    """Train a fresh MLP with Adam and cross-entropy; raise RunStopped or TrainingDiverged."""
    config = config or TrainConfig()
    config.validate()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)  # the layers' initial weights come from the global generator
    model = MLP(*config.hidden).to(device)
    # uint8 pixels as load_mnist keeps them, normalised batch by batch (bit-identical to normalising all first)
    images, y = data.train_images.to(device), data.train_y.to(device)
    optimizer = adam(model.parameters(), config.lr, device)
    generator = torch.Generator().manual_seed(config.seed)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    reporter = _Reporter("train", steps_per_epoch * config.epochs, progress, stop)
    scheduler = _scheduler(optimizer, config.lr_schedule, reporter.total)
    model.train()
    step = 0
    # Batches are normalised NORMALISE_STEPS at a time: the same values, in fewer and larger operations
    # than one conversion per step (each small operation syncs the threads, costly on a busy machine).
    block_rows = config.batch_size * NORMALISE_STEPS
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, config.batch_size):
            if start % block_rows == 0:
                block = as_inputs(images[order[start : start + block_rows]])
            idx = order[start : start + config.batch_size]
            rows = start % block_rows
            with autocast(precision, device):  # the forward pass and the loss; backward and Adam stay fp32
                loss = F.cross_entropy(model(block[rows : rows + config.batch_size]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            reporter.step(step, loss.detach(), idx.numel(), epoch)
    model.eval()
    return model, dataclasses.replace(reporter.result(), precision=precision)


def finetune(
    lora_model: LoraModel,
    name: str,
    data: MnistData,
    config: FinetuneConfig,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """Add adapter `name` to `lora_model` and train only its A and B on `config.digits`. With init "pissa" the
    training runs on a copy holding PiSSA's residual base, and the adapter added is its plain-LoRA conversion.

    Each batch holds (1 - replay) target-digit images and replay images of the other digits.
    On a stop or divergence the half-trained adapter is removed again and the error raised.
    """
    validate_adapter_name(name)
    config.validate(lora_model.model)
    if config.digits is None:
        raise ConfigError("digit", "choose the target digit(s) to fine-tune on (config.digits)")
    torch.manual_seed(config.seed)  # dropout masks come from the global generator
    if config.init == PISSA:
        if name in lora_model.adapters:
            raise ConfigError("name", f"an adapter called {name!r} is already loaded")
        start = residual_start(lora_model, name, config.lora_config(), seed=config.seed)
        trained = start.model
    else:
        lora_model.add_adapter(name, config.lora_config(), seed=config.seed, quantization=config.quantization())
        trained = lora_model
    try:
        params = trained.mark_only_lora_trainable(name)
        groups = None if config.loraplus_lr_ratio is None else loraplus_groups(trained, name, config)
        run = train_parameters(
            trained,
            params,
            data,
            config,
            phase="finetune",
            progress=progress,
            stop=stop,
            param_groups=groups,
            on_step=on_step,
        )
    except TrainingDiverged as exc:
        trained.delete_adapter(name)
        scale = config.lora_config().scale
        advice = f"The update is scaled by alpha/r = {scale:.3g}: a smaller alpha helps too."
        raise TrainingDiverged(f"{exc} {advice}") from None
    except BaseException:
        trained.delete_adapter(name)
        raise
    if trained is lora_model:
        return run
    plain, tensors = as_plain_lora(start, name)
    lora_model.load_adapter_tensors(name, plain, tensors)
    return dataclasses.replace(run, residual_base=trained.model)


def loraplus_groups(lora_model: LoraModel, name: str, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups for LoRA+: every A of adapter `name` (and DoRA's magnitudes, as PEFT groups them)
    at config.lr, every B at config.lr x config.loraplus_lr_ratio (the schedule scales both alike)."""
    ratio = config.loraplus_lr_ratio if config.loraplus_lr_ratio is not None else 1.0
    a, b = [], []
    for layer in lora_model.lora_layers().values():
        if name in layer.lora_A:
            a.append(layer.lora_A[name].weight)
            b.append(layer.lora_B[name].weight)
            if layer.is_dora(name):
                a.append(layer.lora_magnitude_vector[name].weight)
    return [{"params": a, "lr": config.lr}, {"params": b, "lr": config.lr * ratio}]


def train_parameters(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    data: MnistData,
    config: FinetuneConfig,
    *,
    phase: str,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """Train `params` of `model` (the caller sets which require gradients) for `config.steps` batches of
    `config.digits` plus `config.replay` of the other digits, with Adam, the config's schedule and precision.

    One loop for every method (LoRA's adapter, full fine-tuning, the last layer: lora_core.lab.experiments), so
    the same config and seed draw the same batches. Leaves `params` frozen and the model in eval mode. The
    batches come from a generator seeded with config.seed; anything the model draws at random (dropout)
    comes from the global generator, which the caller seeds. `param_groups` (each with its own lr, LoRA+'s)
    replace `params` in the optimizer; they must hold the same tensors.
    """
    if config.digits is None:
        raise ConfigError("digit", "choose the target digit(s) to fine-tune on (config.digits)")
    device = next(model.parameters()).device
    precision = resolve_precision(config.precision, device)
    optimizer = adam(param_groups if param_groups is not None else params, config.lr, device)
    images, y = data.train_images.to(device), data.train_y.to(device)  # normalised per batch, as in train_base
    is_target = torch.isin(y, torch.tensor(config.digits, device=device))
    target_idx = is_target.nonzero().flatten()
    other_idx = (~is_target).nonzero().flatten()
    n_other = round(config.batch_size * config.replay) if other_idx.numel() else 0
    n_target = config.batch_size - n_other
    if n_target == 0 and n_other == 0:
        raise ConfigError("batch_size", "the batch is empty")
    generator = torch.Generator().manual_seed(config.seed)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        picks = []
        if n_target:
            picks.append(target_idx[torch.randint(target_idx.numel(), (n_target,), generator=generator).to(device)])
        if n_other:
            picks.append(other_idx[torch.randint(other_idx.numel(), (n_other,), generator=generator).to(device)])
        idx = torch.cat(picks)
        return as_inputs(images[idx]), y[idx]

    return optimise(
        model,
        params,
        next_batch,
        optimizer,
        config.lr_schedule,
        config.steps,
        precision,
        phase,
        progress,
        stop,
        on_step,
    )


def optimise(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    lr_schedule: str,
    steps: int,
    precision: PrecisionChoice,
    phase: str,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """The optimisation loop every fine-tuning shares (train_parameters' methods, the personal adapter): `steps`
    batches from `next_batch()` (inputs, labels), cross-entropy under the precision's autocast, the schedule,
    progress and stop. Leaves `params` frozen and the model in eval mode."""
    device = next(model.parameters()).device
    reporter = _Reporter(phase, steps, progress, stop)
    scheduler = _scheduler(optimizer, lr_schedule, steps)
    model.train()
    try:
        for step in range(1, steps + 1):
            x, y = next_batch()
            with autocast(precision, device):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            reporter.step(step, loss.detach(), y.numel())
            if on_step is not None:
                paused = time.perf_counter()
                model.eval()
                with torch.no_grad():
                    on_step(step, model)
                model.train()
                reporter.excluded += time.perf_counter() - paused
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    return dataclasses.replace(reporter.result(), precision=precision)
