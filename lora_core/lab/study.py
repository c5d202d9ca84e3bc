"""The study's workflows, shared by the command line and the dashboard.

train_and_save_base -> evaluate -> finetune_and_save_adapter (which records a hash of every base tensor
before and after training) -> the trained model's base tensors against the checkpoint.
"""

from __future__ import annotations

import dataclasses
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lora_core.data import MnistData
from lora_core.errors import AdapterExistsError
from lora_core.evaluate import Evaluation, compare, evaluate, predict, weakest_digit
from lora_core.lab.proof import (
    RecordedCheck,
    base_tensor_hashes,
    base_tensor_record,
    pissa_record,
    recorded_check,
)
from lora_core.lora import LoraModel
from lora_core.model import MLP, count_parameters
from lora_core.params import parameter_table, weights_unchanged
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord, writes
from lora_core.train import (
    FinetuneConfig,
    ProgressCallback,
    RunResult,
    StepHook,
    TrainConfig,
    finetune,
    resolve_device,
    train_base,
)


def default_adapter_name(digits: tuple[int, ...]) -> str:
    return "digit-" + "-".join(str(d) for d in digits)


@writes("training the base model")  # the whole run holds the artifacts folder's writer lock
def train_and_save_base(
    store: ArtifactStore,
    data: MnistData,
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save the base model; a stopped or failed run saves nothing.

    `extra_meta` adds keys to model.json (an experiment's base records the digits it left out)."""
    meta, _evaluation = _train_evaluate_and_save(store, data, config, progress, stop, extra_meta)
    return meta


def _train_evaluate_and_save(
    store: ArtifactStore,
    data: MnistData,
    config: TrainConfig,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], TrainedEvaluation]:
    """train_and_save_base, also returning its evaluation so that run_study need not evaluate again."""
    store.require_free_space(count_parameters(tuple(config.hidden)) * 4, "the base model")  # float32 weights
    model, run = train_base(data, config, progress, stop)
    evaluation = evaluate(model, data.test_x, data.test_y)
    meta = {
        "training": {
            **config.to_dict(),
            "device_used": str(next(model.parameters()).device),
            "optimizer": "Adam",
            "loss": "cross_entropy",
            "seconds": run.seconds,
            "samples_per_s": run.samples_per_s,
            "final_loss": run.losses[-1] if run.losses else None,
            **_precision_fields(run),
        },
        "normalization": {"mean": 0.1307, "std": 0.3081},
        "seed": config.seed,
        "metrics": evaluation.summary(misclassified=False),
        "data": {"source": data.source, "md5": data.md5},
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        **(extra_meta or {}),
    }
    device = str(next(model.parameters()).device)
    return store.save_base(model.cpu(), meta), TrainedEvaluation(evaluation, device)


@dataclass(frozen=True)
class TrainedEvaluation:
    """The test-set evaluation of a model just trained, and the device it ran on."""

    evaluation: Evaluation
    device: str

    def of_saved_model(self, saved: MLP) -> Evaluation | None:
        """The evaluation, if it holds for `saved`: the checkpoint of that model, loaded on the same device
        (float32 tensors saved exactly, so the same weights on the same device predict the same labels)."""
        return self.evaluation if str(next(saved.parameters()).device) == self.device else None


def _precision_fields(run: RunResult) -> dict[str, Any]:
    """The precision actually trained in and why, beside the requested `precision` of the config."""
    choice = run.precision
    if choice is None:
        return {}
    return {"precision_used": choice.used, "precision_reason": choice.reason}


@dataclass
class AdapterOutcome:
    name: str
    digits: tuple[int, ...]
    before: Evaluation
    after: Evaluation
    config: FinetuneConfig
    seconds: float
    trainable_params: int
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)  # as saved in metrics.json

    def to_dict(self) -> dict[str, Any]:
        lora = self.config.lora_config()
        return {
            "name": self.name,
            "target_digits": list(self.digits),
            "rank": lora.r,
            "alpha": lora.alpha,
            "targets": list(lora.target_modules),
            "trainable_params": self.trainable_params,
            "path": self.path,
            "seconds": self.seconds,
            "finetune": self.config.to_dict(),
        }


def load_base_for_lora(store: ArtifactStore, device: str = "auto") -> tuple[BaseModelRecord, LoraModel]:
    record = store.load_base(resolve_device(device))
    return record, LoraModel(record.model)


@writes("fine-tuning an adapter")  # the whole run holds the artifacts folder's writer lock
def finetune_and_save_adapter(
    store: ArtifactStore,
    base: BaseModelRecord,
    lora_model: LoraModel,
    data: MnistData,
    config: FinetuneConfig,
    name: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    base_eval: Evaluation | None = None,
    extra_metrics: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
) -> AdapterOutcome:
    """Fine-tune an adapter (default target: the base model's weakest digit), evaluate it, save it.

    `extra_metrics` adds keys to metrics.json (an experiment's adapter records its task)."""
    config.validate(lora_model.model)
    with lora_model.adapters_disabled():
        before = base_eval or evaluate(lora_model, data.test_x, data.test_y)
    if config.digits is None:
        config = dataclasses.replace(config, digits=(before.weakest_digit,))
    digits = config.digits
    name = name or default_adapter_name(digits)
    refuse_existing_adapter(store, name, overwrite)
    if name in lora_model.adapters:
        lora_model.delete_adapter(name)
    hashes_before = base_tensor_hashes(lora_model)  # the tensors the loop really trains with
    run = finetune(lora_model, name, data, config, progress=progress, stop=stop, on_step=on_step)
    hashes_after = base_tensor_hashes(lora_model)
    after = evaluate(lora_model, data.test_x, data.test_y)
    table = parameter_table(lora_model, config.lora_config())
    metrics = {
        "target_digits": list(digits),
        "finetune": {**config.to_dict(), **_precision_fields(run)},
        "seconds": run.seconds,
        "samples_per_s": run.samples_per_s,
        "final_loss": run.losses[-1] if run.losses else None,
        "trainable_params": table.lora_params,
        "before": before.summary(misclassified=False),
        "after": after.summary(misclassified=False),
        "difference": {k: v for k, v in compare(before, after).items() if k not in ("fixed", "broken")},
        "base_tensors": base_tensor_record(hashes_before, hashes_after),
        **(
            {"pissa": pissa_record(lora_model, name, config.rank, run.residual_base, hashes_before)}
            if run.residual_base is not None
            else {}
        ),
        **quantized_base_metrics(lora_model, name, data),
        **(extra_metrics or {}),
    }
    path = store.save_adapter(lora_model, name, metrics, base.fingerprint, overwrite=overwrite)
    return AdapterOutcome(
        name, tuple(digits), before, after, config, run.seconds, table.lora_params, str(path), metrics
    )


def quantized_base_metrics(lora_model: LoraModel, name: str, data: MnistData) -> dict[str, Any]:
    """A QLoRA adapter's "quantized_base" record (LoraModel.quantized_record) with the NF4 base's own accuracy on
    the test set (the adapter at weight 0: the quantisation's cost); nothing for an adapter on the float32 base."""
    record = lora_model.quantized_record(name)
    if record is None:
        return {}
    with lora_model.active_adapters_kept():
        lora_model.set_adapter([name], weights=[0.0])
        nf4_base = evaluate(lora_model, data.test_x, data.test_y)
    return {"quantized_base": {**record, "base_accuracy": nf4_base.summary(misclassified=False)}}


def refuse_existing_adapter(store: ArtifactStore, name: str, overwrite: bool) -> None:
    """Raise AdapterExistsError when adapter `name` is saved and replacing it was not allowed."""
    if not overwrite and store.adapter_exists(name):
        raise AdapterExistsError(name)


def _trained_against_checkpoint(checkpoint: MLP, lora_model: LoraModel) -> list[dict[str, Any]]:
    """Per tensor: max |trained - checkpoint| and bit-identity. It can fail only because `lora_model`
    was trained since it was loaded; a model just loaded from the checkpoint matches it by construction."""
    current = {k: v.detach().cpu() for k, v in lora_model.base_state_dict().items()}
    return [
        {"tensor": c.key, "max_abs_diff": c.max_abs_diff, "identical": c.identical}
        for c in weights_unchanged(checkpoint.state_dict(), current)
    ]


@writes("running the whole study")  # the whole run holds the artifacts folder's writer lock
def run_study(
    store: ArtifactStore,
    data: MnistData,
    train_config: TrainConfig,
    finetune_config: FinetuneConfig,
    name: str | None = None,
    retrain: bool = False,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    overwrite: bool = False,
    fresh_name: bool = False,
) -> dict[str, Any]:
    """Train (or reuse) the base model, fine-tune its weakest digit, and measure everything.

    An existing adapter of the same name is replaced only with overwrite=True; when the name is known
    up front (given, or fixed by the target digits) that is checked before any training. With
    fresh_name and no name, the adapter never replaces a saved one: digit-9 taken, it becomes digit-9-2.
    """
    seconds: dict[str, float] = {}
    train_config.validate()
    finetune_config.validate()
    fresh_name = fresh_name and name is None
    if not fresh_name and (name is not None or finetune_config.digits is not None):
        refuse_existing_adapter(store, name or default_adapter_name(finetune_config.digits or ()), overwrite)
    t = time.perf_counter()
    trained: TrainedEvaluation | None = None
    if retrain or not store.has_base():
        log("Training the base model")
        _, trained = _train_evaluate_and_save(store, data, train_config, progress, stop)
        seconds["train"] = time.perf_counter() - t
    else:
        log(f"Reusing the base model in {store.base_dir} (--retrain to train a new one)")
        seconds["train"] = 0.0
    base, lora_model = load_base_for_lora(store, finetune_config.device)
    t = time.perf_counter()
    # the model just trained was evaluated before it was saved; only a reused or moved base is evaluated here
    base_eval = (trained and trained.of_saved_model(base.model)) or evaluate(base.model, data.test_x, data.test_y)
    seconds["evaluate_base"] = time.perf_counter() - t
    log(f"Base accuracy {base_eval.accuracy:.2%}; weakest digit {base_eval.weakest_digit}")
    if fresh_name:
        usual = default_adapter_name(finetune_config.digits or (base_eval.weakest_digit,))
        name = store.unused_adapter_name(usual)
        if name != usual:
            log(f"An adapter called '{usual}' is saved already: this one is saved as '{name}'")
    t = time.perf_counter()
    outcome = finetune_and_save_adapter(
        store,
        base,
        lora_model,
        data,
        finetune_config,
        name,
        overwrite=overwrite,
        progress=progress,
        stop=stop,
        base_eval=base_eval,
    )
    seconds["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    checkpoint = store.load_base("cpu").model
    weights = _trained_against_checkpoint(checkpoint, lora_model)
    recorded = recorded_check(outcome.metrics, checkpoint)
    disabled_ok = disabled_equals_base(lora_model, data.test_x)
    seconds["verify"] = time.perf_counter() - t
    table = parameter_table(lora_model, outcome.config.lora_config())
    return {
        "artifacts": str(store.root),
        "data_source": data.source,
        "base": base_eval.summary(misclassified=False),
        "adapted": outcome.after.summary(misclassified=False),
        "target_digit": outcome.digits[0],
        "target_digits": list(outcome.digits),
        "adapter": outcome.to_dict(),
        "base_params": table.base_params,
        "parameters": table.to_dict(),
        # the fine-tuned model itself against the checkpoint saved before fine-tuning
        "weights_proof": weights,
        "base_weights_unchanged": all(w["identical"] for w in weights),
        "recorded_check": recorded.to_dict(),
        "disabled_adapter_equals_base": disabled_ok,
        "train_metrics": store.base_meta()["training"],
        "seconds": seconds,
    }


def disabled_equals_base(lora_model: LoraModel, x: torch.Tensor) -> bool:
    """With adapters disabled, the LoRA model's logits are exactly those of a plain MLP built
    from the base weights alone."""
    with lora_model.adapters_disabled():
        disabled = predict(lora_model, x)
    plain = MLP(*lora_model.model.hidden)
    plain.load_state_dict(lora_model.base_state_dict())
    plain.to(next(lora_model.model.parameters()).device)
    return torch.equal(disabled, predict(plain, x))


# --- the headline figures ---------------------------------------------------------------------------------
@dataclass
class Headline:
    """The study's headline figures: from a study just run, or from a saved adapter's metrics.json."""

    source: str
    adapter: str
    digits: list[int]  # the adapter's target digits
    base_accuracy: float
    adapted_accuracy: float
    per_digit_before: list[float]
    per_digit_after: list[float]
    lora_params: int
    lora_percent: float
    weights_unchanged: bool | None  # None: the adapter recorded nothing to check
    weights_note: str
    # a domain task's adapter (rotate, invert...): its figures are on the task's own test set, and it has no
    # target digit (it trains on all ten); None for an adapter on digits of plain MNIST
    task_label: str | None = None

    @property
    def measured_on(self) -> str:
        if self.task_label is not None:
            return f"the task's own test set (the 10,000 MNIST test images, {self.task_label})"
        return "the 10,000 MNIST test images"

    @property
    def digit(self) -> int:
        return self.digits[0]

    @property
    def other_digits(self) -> list[int]:
        return [d for d in range(len(self.per_digit_before)) if d not in self.digits]

    @property
    def worst_hit_other(self) -> tuple[int, float] | None:
        """(digit, change in accuracy) of the digit outside the targets that changed for the worse the most (a
        negative change), or the smallest gain when none got worse; None when every digit is a target."""
        others = self.other_digits
        if not others:
            return None
        changes = {d: self.per_digit_after[d] - self.per_digit_before[d] for d in others}
        digit = min(others, key=lambda d: (changes[d], d))
        return digit, changes[digit]

    @property
    def weakest_digit(self) -> int:
        """The base model's weakest digit (the lowest accuracy, the smaller digit on ties)."""
        return weakest_digit(self.per_digit_before)


def headline_from_study(result: dict[str, Any]) -> Headline:
    """From what `run_study` returns: the figures and its comparison of the really-trained model."""
    params = result["parameters"]
    unchanged = bool(result["base_weights_unchanged"])
    note = (
        "Base weights unchanged: every base tensor of the model the study fine-tuned is bit-identical to the "
        "checkpoint saved before fine-tuning (the study's own comparison)."
        if unchanged
        else "Base weights CHANGED: base tensors of the model the study fine-tuned differ from the checkpoint "
        "saved before fine-tuning (the study's own comparison)."
    )
    return Headline(
        source=f"the study just run (adapter `{result['adapter']['name']}`)",
        adapter=result["adapter"]["name"],
        digits=list(result["target_digits"]),
        base_accuracy=result["base"]["accuracy"],
        adapted_accuracy=result["adapted"]["accuracy"],
        per_digit_before=list(result["base"]["per_digit_accuracy"]),
        per_digit_after=list(result["adapted"]["per_digit_accuracy"]),
        lora_params=int(params["lora_params"]),
        lora_percent=float(params["lora_percent"]),
        weights_unchanged=unchanged,
        weights_note=note,
    )


def headline_from_adapter(name: str, metrics: dict[str, Any], base_params: int, check: RecordedCheck) -> Headline:
    """From a saved adapter: the before/after it recorded in metrics.json and its recorded check."""
    before, after = metrics["before"], metrics["after"]
    lora_params = int(metrics.get("trainable_params") or 0)
    task = metrics.get("task") if isinstance(metrics.get("task"), dict) else {}
    task_label = str(task.get("label") or task.get("spec")) if task.get("domain") else None
    if task_label is not None:  # trained on every digit of the transformed images: none is its target
        digits: list[int] = []
    else:
        digits = list(metrics.get("target_digits") or [weakest_digit(before["per_digit_accuracy"])])
    return Headline(
        source=f"the active adapter `{name}` (figures recorded when it was saved)",
        adapter=name,
        digits=digits,
        base_accuracy=before["accuracy"],
        adapted_accuracy=after["accuracy"],
        per_digit_before=list(before["per_digit_accuracy"]),
        per_digit_after=list(after["per_digit_accuracy"]),
        lora_params=lora_params,
        lora_percent=100.0 * lora_params / base_params if base_params else 0.0,
        weights_unchanged=None if check.status == "not recorded" else check.passed,
        weights_note=check.summary,
        task_label=task_label,
    )
