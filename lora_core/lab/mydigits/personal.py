"""The personal adapter: a LoRA adapter fine-tuned on the training split of your drawings (the collection in
lora_core.lab.mydigits.collection), with MNIST replay, judged on the held-out drawings and on MNIST's test set.

    result = train_personal(store, data, PersonalSettings(steps=300))

    <artifacts>/adapters/personal/           the adapter, a normal adapter (its metrics say it is the personal one)
    <artifacts>/mydigits/result.json         its evaluation (PersonalResult), written atomically with the adapter
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NotRequired

import numpy as np
import torch
import torch.nn.functional as F
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MEAN, STD, MnistData, as_inputs
from lora_core.errors import ArtifactError, ConfigError, LoraCoreError
from lora_core.evaluate import evaluate, predict
from lora_core.lab.mydigits.collection import (
    FOLDER,
    MAX_DIGITS,
    MIN_PER_DIGIT,
    MyDigit,
    MyDigits,
    describe_missing,
    missing,
    split,
)
from lora_core.lab.proof import base_tensor_hashes, base_tensor_record
from lora_core.lab.run import finetune_config
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import LAYER_NAMES, SIDE
from lora_core.numbers import Number
from lora_core.precision import resolve_precision
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.results import read_saved, write_saved
from lora_core.train import ProgressCallback, adam, check_int, optimise, resolve_device

PERSONAL_ADAPTER = "personal"
RESULT = "result.json"


class NotEnoughDigitsError(LoraCoreError):
    """Too few drawings of some digits to train and evaluate a personal adapter; `missing`: digit -> how many more."""

    def __init__(self, missing: dict[int, int]) -> None:
        self.missing = dict(sorted(missing.items()))
        super().__init__(f"not enough drawings to train a personal adapter: {describe_missing(self.missing)}")


# --- the personal adapter --------------------------------------------------------------------------
@dataclass
class PersonalResult:
    adapter: str
    trained: int
    heldout: int
    heldout_rows: list[dict[str, Any]]  # {"id", "label", "base": prediction, "personal": prediction}
    base_heldout_accuracy: float
    personal_heldout_accuracy: float
    base_errors: int
    personal_errors: int
    mnist_before: float  # MNIST test accuracy of the base model
    mnist_after: float  # ... with the personal adapter applied
    seconds: float  # the training loop
    config: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonalResult:
        names = {f.name for f in dataclasses.fields(cls)}
        missing_keys = sorted(n for n in names - set(data) if n not in ("config", "created"))
        if missing_keys:
            raise ValueError(f"missing {', '.join(missing_keys)}")
        return cls(**{k: v for k, v in data.items() if k in names})


class _HeldoutRow(TypedDict):
    id: str
    label: int
    base: int
    personal: int


class _PersonalConfig(TypedDict):
    rank: NotRequired[int]
    alpha: NotRequired[Number]
    steps: NotRequired[int]
    batch_size: NotRequired[int]
    lr: NotRequired[Number]
    replay: NotRequired[Number]
    augment: NotRequired[bool]
    seed: NotRequired[int]
    holdout_every: NotRequired[int]
    min_per_digit: NotRequired[int]
    device: NotRequired[str]
    precision: NotRequired[str]
    precision_used: NotRequired[str]
    train_ids: NotRequired[list[str]]


class PersonalRecord(TypedDict):
    """mydigits/result.json (PersonalResult.to_dict): the schema its reader checks."""

    adapter: str
    trained: int
    heldout: int
    heldout_rows: list[_HeldoutRow]
    base_heldout_accuracy: Number
    personal_heldout_accuracy: Number
    base_errors: int
    personal_errors: int
    mnist_before: Number
    mnist_after: Number
    seconds: Number
    config: NotRequired[_PersonalConfig]
    created: NotRequired[str]


@dataclass(frozen=True)
class PersonalSettings:
    """How the personal adapter is trained. Each batch: `batch_size * (1 - replay)` of your drawings, each
    moved a little at random (augment), and the rest real MNIST training digits, so it learns your hand
    without forgetting MNIST. Measured with benchmarks/personal.py (3 synthetic writers the base misreads,
    10 drawings of each digit; MNIST change in points / mistakes on 100 fresh drawings of the writer):
    150 steps, lr 3e-3, replay 0.5: -0.30 to -0.45 / 0; 80 steps: -0.6 to -0.7 (more steps let the replay
    repair MNIST); replay 0.75: -0.2 to -0.35; rank 4 or distilling the base's outputs on the replay: no
    better; 300 steps, lr 2e-3, replay 0.875: +0.01 to +0.09 / 0. Without augmentation MNIST suffers less
    at replay 0.5, but real hands vary more than one synthetic writer, so it stays on."""

    rank: int = 8
    alpha: float = 16.0
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    replay: float = 0.875
    augment: bool = True
    seed: int = 0
    holdout_every: int = 5
    min_per_digit: int = MIN_PER_DIGIT
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        check_int("holdout_every", self.holdout_every, 2, 1000)
        check_int("min_per_digit", self.min_per_digit, 2, MAX_DIGITS)
        finetune_config(self, digits=tuple(range(10))).validate()
        if self.replay >= 1.0:
            raise ConfigError("replay", "must be below 1: some of each batch must be your own drawings")

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, alpha=self.alpha, target_modules=LAYER_NAMES)


def augment_pixels(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A small random affine move per picture ((N, 28, 28) floats in 0..1): rotation up to 12 degrees,
    scale 0.9-1.1, shear up to 0.15, shift up to 2 pixels. One batched affine_grid/grid_sample instead of
    a transform per picture: a few dozen pictures every step would otherwise cost more than the step."""
    n = pixels.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    scale = uniform(0.9, 1.1)
    shear = uniform(-0.15, 0.15)
    shift = uniform(-2.0, 2.0) * 2.0 / SIDE, uniform(-2.0, 2.0) * 2.0 / SIDE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, shift[0]], 1), torch.stack([sin, cos + shear * sin, shift[1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(pixels.device), [n, 1, SIDE, SIDE], align_corners=False)
    return F.grid_sample(pixels[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]


def _inputs(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) floats in 0..1 -> the network's normalised (N, 784) inputs."""
    return (pixels.reshape(-1, SIDE * SIDE) - MEAN) / STD


def train_personal(
    store: ArtifactStore,
    data: MnistData,
    settings: PersonalSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> PersonalResult:
    """Fine-tune the personal adapter on the training split of my digits (with MNIST replay), evaluate
    base and adapter on the held-out drawings and on MNIST's test set, and save adapter and result.

    Raises NotEnoughDigitsError (and trains nothing) while some digit has fewer than min_per_digit drawings.
    Holds the artifacts folder's writer lock from reading the drawings to saving, like every writer: the drawings,
    the base model and the adapter it replaces stay as they were read.
    """
    settings = settings or PersonalSettings()
    settings.validate()
    with store.writing("training the personal adapter on my digits"):
        return _train_personal(store, data, settings, progress, stop)


def _train_personal(
    store: ArtifactStore,
    data: MnistData,
    settings: PersonalSettings,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
) -> PersonalResult:
    collection = MyDigits(store)
    digits = collection.list()
    counts = dict.fromkeys(range(10), 0)
    for d in digits:
        counts[d.label] += 1
    lacking = missing(counts, settings.min_per_digit)
    if lacking:
        raise NotEnoughDigitsError(lacking)
    check_personal_name_free(store)
    train_set, heldout = split(digits, settings.seed, settings.holdout_every)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    base = store.load_base(device)
    lora_model = LoraModel(base.model)

    def stack(items: list[MyDigit]) -> torch.Tensor:
        return torch.from_numpy(np.stack([collection.pixels(d.id) for d in items])).float().div_(255.0).to(device)

    train_pixels, heldout_pixels = stack(train_set), stack(heldout)
    train_labels = torch.tensor([d.label for d in train_set], device=device)
    heldout_labels = torch.tensor([d.label for d in heldout])
    with lora_model.adapters_disabled():
        base_heldout = predict(lora_model, _inputs(heldout_pixels)).argmax(1)
        mnist_before = evaluate(lora_model, data.test_x, data.test_y)

    torch.manual_seed(settings.seed)
    lora_model.add_adapter(PERSONAL_ADAPTER, settings.lora_config(), seed=settings.seed)
    hashes_before = base_tensor_hashes(lora_model)
    params = lora_model.mark_only_lora_trainable(PERSONAL_ADAPTER)
    optimizer = adam(params, settings.lr, device)
    generator = torch.Generator().manual_seed(settings.seed)
    mnist_images, mnist_y = data.train_images.to(device), data.train_y.to(device)
    n_replay = min(round(settings.batch_size * settings.replay), settings.batch_size - 1)  # >= 1 of yours
    n_own = settings.batch_size - n_replay

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        own = torch.randint(train_pixels.shape[0], (n_own,), generator=generator).to(device)
        own_pixels = train_pixels[own]
        if settings.augment:
            own_pixels = augment_pixels(own_pixels, generator)
        x, y = _inputs(own_pixels), train_labels[own]
        if n_replay:
            idx = torch.randint(mnist_images.shape[0], (n_replay,), generator=generator).to(device)
            x, y = torch.cat([x, as_inputs(mnist_images[idx])]), torch.cat([y, mnist_y[idx]])
        return x, y

    run = optimise(
        lora_model, params, next_batch, optimizer, "linear", settings.steps, precision, "personal", progress, stop
    )
    hashes_after = base_tensor_hashes(lora_model)
    personal_heldout = predict(lora_model, _inputs(heldout_pixels)).argmax(1)
    mnist_after = evaluate(lora_model, data.test_x, data.test_y)

    rows = [
        {"id": d.id, "label": d.label, "base": int(b), "personal": int(p)}
        for d, b, p in zip(heldout, base_heldout.tolist(), personal_heldout.tolist())
    ]
    base_errors = int((base_heldout != heldout_labels).sum())
    personal_errors = int((personal_heldout != heldout_labels).sum())
    config = {
        **dataclasses.asdict(settings),
        "precision_used": precision.used,
        "train_ids": [d.id for d in train_set],
    }
    result = PersonalResult(
        adapter=PERSONAL_ADAPTER,
        trained=len(train_set),
        heldout=len(heldout),
        heldout_rows=rows,
        base_heldout_accuracy=1.0 - base_errors / len(heldout),
        personal_heldout_accuracy=1.0 - personal_errors / len(heldout),
        base_errors=base_errors,
        personal_errors=personal_errors,
        mnist_before=mnist_before.accuracy,
        mnist_after=mnist_after.accuracy,
        seconds=run.seconds,
        config=config,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    metrics = {
        "target_digits": list(range(10)),
        "finetune": config,
        "seconds": run.seconds,
        "samples_per_s": run.samples_per_s,
        "final_loss": run.losses[-1] if run.losses else None,
        "trainable_params": sum(p.numel() for p in params),
        "before": mnist_before.summary(misclassified=False),
        "after": mnist_after.summary(misclassified=False),
        "base_tensors": base_tensor_record(hashes_before, hashes_after),
        "personal": {k: v for k, v in result.to_dict().items() if k not in ("config",)},
    }
    store.save_adapter(lora_model, PERSONAL_ADAPTER, metrics, base.fingerprint, overwrite=True)
    write_saved(collection.folder / RESULT, result.to_dict())
    return result


def check_personal_name_free(store: ArtifactStore) -> None:
    """Refuse to replace an adapter called 'personal' that train_personal did not make (saved by finetune
    --name personal, say): replacing the previous personal adapter is expected, losing someone's own is not.
    A folder that cannot be read is no saved work and may be replaced."""
    if not store.adapter_exists(PERSONAL_ADAPTER):
        return
    try:
        metrics = store.read_adapter(PERSONAL_ADAPTER).metrics or {}
    except ArtifactError:
        return
    if "personal" not in metrics:
        raise ArtifactError(
            f"an adapter called {PERSONAL_ADAPTER!r} is saved in {store.adapters_dir} and was not trained on "
            "your drawings; the personal adapter would replace it: rename or delete that adapter first"
        )


def load_personal_result(store: ArtifactStore) -> PersonalResult | None:
    """The last personal adapter's result, or None before the first one is trained."""
    path = store.root / FOLDER / RESULT
    try:
        return PersonalResult.from_dict(read_saved(path, "personal adapter result", schema=PersonalRecord))
    except FileNotFoundError:
        return None
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; train the personal adapter again") from None
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}); train the personal adapter again") from None
