"""Methods side by side on one task: LoRA, full fine-tuning of a copy of the base, and the last layer only.

Every method trains for the same steps on the same batches (same sampler, same seed) and is judged on the
task's test set and on plain MNIST with the method applied; LoRA also with its adapter switched off, where
it must give the base model's logits exactly.

    ctx = prepare_task(store, data, parse_task("rotate:45"), settings)     # base, task data, "before" (task_context)
    result = run_method(ctx, "lora", settings)                             # one method (sweeps call this)
    experiment = run_experiment(store, data, task, settings)               # all, under the writer lock, saved

Where things go:
    <artifacts>/adapters/<task slug>/              the LoRA adapter, a normal adapter (rotate-45, rotate-45-2 ...)
    <artifacts>/bases/unseen-8-9/base/             the base trained without 8 and 9: an ArtifactStore of its own,
    <artifacts>/bases/unseen-8-9/adapters/         with its adapters, so all the storage code works on it as is
    <artifacts>/experiments/<slug>-<time>.json     ExperimentResult.to_dict(), written atomically

Peak memory of a method's training, from its set-up to its last step (evaluation and saving left out), is
lora_core.lab.run.PeakMemory's; `memory_measure` in each result says how it was taken. The deterministic
`train_state_bytes` (trainable weights, their gradients and Adam's two moments, 4 bytes each) is reported
beside it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired

import torch
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MnistData
from lora_core.errors import AdapterExistsError, ConfigError
from lora_core.evaluate import EvaluationSummary, evaluate, predict
from lora_core.lab.analysis.dora import LAYER as DORA_LAYER
from lora_core.lab.analysis.dora import effective_weight, magnitude_direction
from lora_core.lab.experiment_settings import (
    ADAPTER_METHODS,
    HEAD_LAYER,
    METHOD_LABELS,
    METHODS,
    ExperimentSettings,
    SettingsRecord,
)
from lora_core.lab.readings import METHOD_NAMES
from lora_core.lab.run import PeakMemory, environment, named_progress, safetensors_size
from lora_core.lab.study import disabled_equals_base, finetune_and_save_adapter
from lora_core.lab.task_context import BaseRecord, TaskContext, prepare_task
from lora_core.lab.tasks import Task, TaskRecord
from lora_core.lora import LoraModel
from lora_core.lora.nf4 import import_nf4
from lora_core.model import MLP
from lora_core.numbers import Number
from lora_core.params import parameter_table
from lora_core.store.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ArtifactStore
from lora_core.store.bases import base_store
from lora_core.store.results import (
    RunRecord,
    check_format,
    known_fields,
    load_result,
    run_fields,
    run_record,
    save_result,
    saved_results,
)
from lora_core.train import (
    ProgressCallback,
    StepHook,
    TrainConfig,
    finetune,
    resolve_device,
    train_parameters,
)

FORMAT = "lora_core.experiment.v1"
BYTES_PER_TRAINED_PARAM = 4 * 4  # float32 weight, gradient and Adam's two moments


@dataclass
class MethodResult:
    method: str
    lr: float
    trainable_params: int
    stored_bytes: int  # what must be kept per task: adapter files, a full model copy, or the head
    stored_what: str
    seconds: float  # the training loop alone (the same steps for every method)
    wall_seconds: float  # training, evaluation and saving
    samples_per_s: float
    final_loss: float | None
    peak_memory_bytes: int
    memory_measure: str
    train_state_bytes: int
    task: dict[str, Any]  # Evaluation.summary on the task's test set, the method applied
    plain: dict[str, Any]  # the same on plain MNIST
    task_accuracy: float
    plain_accuracy: float
    kept_accuracy: float
    adapter: str | None = None  # LoRA: the saved adapter's name and folder
    adapter_path: str | None = None
    adapter_off_plain: dict[str, Any] | None = None  # LoRA: plain MNIST with the adapter switched off
    adapter_off_equals_base: bool | None = None  # ... giving the base model's logits exactly
    # (step, task accuracy as in task_accuracy) from step 0 (the base) every settings.curve_every steps; None: not asked
    curve: list[list[float]] | None = None
    # at the same checkpoints: (step, dM, dD) of linear2's weight against the base's (the DoRA paper's figure 2,
    # lora_core.lab.analysis.dora); None: no curve asked
    magnitude_direction: list[list[float]] | None = None
    # QLoRA: its NF4 base on its own (the adapter at weight 0) on the task and plain MNIST, and that base's bytes
    quantized_base: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CURVE_BATCH = 500  # test images per forward pass at a curve's checkpoint: its activations stay small beside training


class TrainingCurve:
    """Accuracy on test images `x`, `y` every `every` steps and after the last one, from a step hook inside the
    training loop (its time is left out of the run's seconds; its batches of CURVE_BATCH images do count in the
    peak memory measured around the loop). `every` 0 records nothing."""

    def __init__(
        self, every: int, steps: int, x: torch.Tensor, y: torch.Tensor, start_accuracy: float, w0: torch.Tensor
    ) -> None:
        self.every, self.steps, self.x, self.y, self.w0 = every, steps, x, y, w0
        self.points: list[list[float]] = [[0, start_accuracy]]
        self.decomposition: list[list[float]] = [[0, 0.0, 0.0]]

    @classmethod
    def off(cls) -> TrainingCurve:
        """A curve that records nothing (no checkpoint asked for)."""
        empty = torch.empty(0)
        return cls(0, 0, empty, empty, 0.0, empty)

    def hook(self) -> StepHook | None:
        return self._checkpoint if self.every else None

    def _checkpoint(self, step: int, model: torch.nn.Module) -> None:
        if step % self.every == 0 or step == self.steps:
            predicted = predict(model, self.x, CURVE_BATCH).argmax(dim=1)
            self.points.append([step, int((predicted == self.y.to(predicted.device)).sum()) / len(self.y)])
            self.decomposition.append([step, *magnitude_direction(self.w0, effective_weight(model, DORA_LAYER))])

    def result(self) -> list[list[float]] | None:
        return self.points if self.every else None

    def decomposition_result(self) -> list[list[float]] | None:
        return self.decomposition if self.every else None

    def memory_note(self) -> str:
        """What a peak measured around a loop with checkpoints also holds."""
        return ", with the training curve's evaluations" if self.every else ""


@dataclass
class ExperimentResult:
    task: dict[str, Any]
    settings: dict[str, Any]
    base: dict[str, Any]
    methods: list[MethodResult]
    created: str
    seconds: float
    environment: dict[str, Any]
    path: str | None = None  # where the JSON was saved
    notes: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == name), None)

    def gain_share(self, name: str) -> float | None:
        """The share of full fine-tuning's task gain that method `name` reaches (1.0: as much)."""
        full, other = self.method("full"), self.method(name)
        if full is None or other is None:
            return None
        gain = full.task_accuracy - self.base["task_accuracy"]
        return (other.task_accuracy - self.base["task_accuracy"]) / gain if gain > 0 else None

    def param_share(self, name: str) -> float | None:
        full, other = self.method("full"), self.method(name)
        if full is None or other is None or not full.trainable_params:
            return None
        return other.trainable_params / full.trainable_params

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "task": self.task,
            "settings": self.settings,
            "base": self.base,
            "methods": [m.to_dict() for m in self.methods],
            "comparison": {
                m.method: {
                    "gain_share_of_full": self.gain_share(m.method),
                    "param_share_of_full": self.param_share(m.method),
                }
                for m in self.methods
            },
            **run_record(self),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentResult:
        check_format(data, FORMAT, "an experiment result")
        return cls(
            task=data["task"],
            settings=data["settings"],
            base=data["base"],
            methods=[MethodResult(**known_fields(MethodResult, m)) for m in data["methods"]],
            **run_fields(data),
        )


class QuantizedBaseScores(TypedDict):
    """What a QLoRA run measures of its NF4 base alone: accuracy on the task and on plain MNIST (fractions), and
    the bytes of the quantised layers against float32's."""

    block_size: int
    task_accuracy: Number
    plain_accuracy: Number
    bytes: int
    fp32_bytes: int
    fp32_layers: dict[str, str]


class MethodRecord(TypedDict):
    """MethodResult as saved."""

    method: str
    lr: Number
    trainable_params: int
    stored_bytes: int
    stored_what: str
    seconds: Number
    wall_seconds: Number
    samples_per_s: Number
    final_loss: Number | None
    peak_memory_bytes: int
    memory_measure: str
    train_state_bytes: int
    task: EvaluationSummary
    plain: EvaluationSummary
    task_accuracy: Number
    plain_accuracy: Number
    kept_accuracy: Number
    adapter: NotRequired[str | None]
    adapter_path: NotRequired[str | None]
    adapter_off_plain: NotRequired[EvaluationSummary | None]
    adapter_off_equals_base: NotRequired[bool | None]
    curve: NotRequired[list[list[Number]] | None]
    magnitude_direction: NotRequired[list[list[Number]] | None]
    quantized_base: NotRequired[QuantizedBaseScores | None]


class ExperimentRecord(RunRecord):
    """An experiment's saved file (ExperimentResult.to_dict): the schema its reader checks."""

    format: str
    task: TaskRecord
    settings: SettingsRecord
    base: BaseRecord
    methods: list[MethodRecord]


# --- where things are stored ---------------------------------------------------------------------------
def list_experiments(store: ArtifactStore) -> list[Path]:
    """Saved experiment results, newest first."""
    # sweeps (lora_core.lab.sweeps) share the folder under their own prefix and format
    return saved_results(store, "*.json", exclude=(".", "sweep-"))


def load_experiment(path: Path | str) -> ExperimentResult:
    return load_result(path, "experiment result", ExperimentResult.from_dict, ExperimentRecord, FORMAT)


# --- the methods ---------------------------------------------------------------------------------------------
def adapter_method_name(name: str, method: str) -> str:
    """The name a method's adapter is saved under: LoRA's is `name` itself, another adapter method's
    `name`-METHOD (`name`-loraplus, `name`-dora, `name`-pissa)."""
    return name if method == "lora" else f"{name}-{method}"


def run_method(
    ctx: TaskContext,
    method: str,
    settings: ExperimentSettings,
    *,
    adapter_name: str | None = None,
    overwrite: bool = False,
    save_adapter: bool = True,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    on_step: StepHook | None = None,
) -> MethodResult:
    """Train and judge one method on the task. LoRA saves its adapter (under the task's base store)
    unless save_adapter=False (a sweep's many points: the adapter is measured, its would-be file size
    computed, and dropped); the full and head copies are thrown away once measured. `on_step` sees the model
    being trained after every step (an analysis reads its weights at the last)."""
    if method not in METHODS:
        raise ConfigError("methods", f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    named = named_progress(progress, METHOD_NAMES[method])  # the name the tables and charts use
    started = time.perf_counter()
    if method == "qlora":  # torchao's import (seconds, tens of MB of code) stays out of the run's time and memory
        import_nf4()
    if method in ADAPTER_METHODS:
        return _run_lora(ctx, settings, adapter_name, overwrite, named, stop, started, save_adapter, method, on_step)
    return _run_copy(ctx, method, settings, named, stop, started, on_step)


def _run_lora(
    ctx: TaskContext,
    settings: ExperimentSettings,
    adapter_name: str | None,
    overwrite: bool,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    started: float,
    save_adapter: bool = True,
    method: str = "lora",
    on_step: StepHook | None = None,
) -> MethodResult:
    """LoRA, LoRA+ (the same adapter, its B trained at a higher rate: saved as NAME-loraplus), DoRA (a
    magnitude per row beside A and B: NAME-dora) or PiSSA (started from W's top singular directions on the
    residual base, saved converted to plain LoRA on W: NAME-pissa)."""
    config = settings.finetune_config(ctx.target_digits, method, ctx.task.kind)
    curve = _curve(ctx, settings)
    lora_model = ctx.lora_model
    device = next(lora_model.model.parameters()).device
    usual = adapter_method_name(ctx.task.adapter_name(ctx.target_digits), method)
    if save_adapter:  # exactly the study's fine-tune-and-save
        name = adapter_method_name(adapter_name, method) if adapter_name else ctx.store.unused_adapter_name(usual)
        with PeakMemory(device) as memory:  # marked at the last step: evaluation and saving left out
            outcome = finetune_and_save_adapter(
                ctx.store,
                ctx.base,
                lora_model,
                ctx.task_data,
                config,
                name,
                overwrite,
                memory.progress(progress),
                stop,
                base_eval=ctx.before_task,
                extra_metrics={"task": ctx.task.describe(ctx.before_plain.weakest_digit)},
                on_step=both(curve.hook(), on_step),
            )
        trainable, seconds, path = outcome.trainable_params, outcome.seconds, outcome.path
        samples_per_s, final_loss = (
            float(outcome.metrics.get("samples_per_s") or 0.0),
            outcome.metrics.get("final_loss"),
        )
        task_summary = outcome.after.summary(misclassified=False)
        stored = sum((Path(path) / f).stat().st_size for f in (ADAPTER_WEIGHTS, ADAPTER_CONFIG))
    else:  # a sweep's point: the same training, measured, then dropped
        name, path = adapter_method_name(adapter_name, method) if adapter_name else f"unsaved-{usual}", None
        if name in lora_model.adapters:
            lora_model.delete_adapter(name)
        with PeakMemory(device) as memory:
            run = finetune(
                lora_model,
                name,
                ctx.task_data,
                config,
                progress=memory.progress(progress),
                stop=stop,
                on_step=both(curve.hook(), on_step),
            )
        trainable = parameter_table(lora_model, config.lora_config()).lora_params  # PiSSA saves twice its rank
        seconds, samples_per_s = run.seconds, run.samples_per_s
        final_loss = run.losses[-1] if run.losses else None
        task_summary = evaluate(lora_model, ctx.task_data.test_x, ctx.task_data.test_y).summary(misclassified=False)
        config_bytes = len((json.dumps(lora_model.adapter_config(name).to_peft(), indent=2) + "\n").encode())
        stored = safetensors_size(lora_model.adapter_state_dict(name)) + config_bytes
    lora_model.set_adapter(name)
    plain_summary = (
        task_summary
        if ctx.task_data is ctx.plain_data
        else evaluate(lora_model, ctx.plain_data.test_x, ctx.plain_data.test_y).summary(misclassified=False)
    )
    with lora_model.adapters_disabled():
        off = evaluate(lora_model, ctx.plain_data.test_x, ctx.plain_data.test_y).summary(misclassified=False)
    off_equals_base = disabled_equals_base(lora_model, ctx.plain_data.test_x)
    quantized = _quantized_base_scores(ctx, lora_model, name)
    if not save_adapter:
        lora_model.delete_adapter(name)
    return MethodResult(
        method=method,
        lr=config.lr,
        trainable_params=trainable,
        stored_bytes=stored,
        stored_what=f"{ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}",
        seconds=seconds,
        wall_seconds=time.perf_counter() - started,
        samples_per_s=samples_per_s,
        final_loss=final_loss,
        peak_memory_bytes=memory.peak_bytes,
        memory_measure=memory.measure + curve.memory_note(),
        train_state_bytes=trainable * BYTES_PER_TRAINED_PARAM,
        task=task_summary,
        plain=plain_summary,
        **ctx.scores(task_summary, plain_summary),
        adapter=name if save_adapter else None,
        adapter_path=path,
        adapter_off_plain=off,
        adapter_off_equals_base=off_equals_base,
        curve=curve.result(),
        magnitude_direction=curve.decomposition_result(),
        quantized_base=quantized,
    )


def _quantized_base_scores(ctx: TaskContext, lora_model: LoraModel, name: str) -> dict[str, Any] | None:
    """QLoRA's NF4 base on its own (adapter `name` at weight 0): task and plain accuracy, and its bytes."""
    record = lora_model.quantized_record(name)
    if record is None:
        return None
    with lora_model.active_adapters_kept():
        lora_model.set_adapter([name], weights=[0.0])
        task = evaluate(lora_model, ctx.task_data.test_x, ctx.task_data.test_y).summary(misclassified=False)
        plain = (
            task
            if ctx.task_data is ctx.plain_data
            else evaluate(lora_model, ctx.plain_data.test_x, ctx.plain_data.test_y).summary(misclassified=False)
        )
    scores = ctx.scores(task, plain)
    layers = record["layers"].values()
    return {
        "block_size": record["block_size"],
        "task_accuracy": scores["task_accuracy"],
        "plain_accuracy": scores["plain_accuracy"],
        "bytes": sum(layer["bytes"] for layer in layers),
        "fp32_bytes": sum(layer["fp32_bytes"] for layer in layers),
        "fp32_layers": record["fp32_layers"],
    }


def both(first: StepHook | None, second: StepHook | None) -> StepHook | None:
    """One step hook that calls each given one in turn."""
    if first is None or second is None:
        return first or second

    def hook(step: int, model: torch.nn.Module) -> None:
        first(step, model)
        second(step, model)

    return hook


def _curve(ctx: TaskContext, settings: ExperimentSettings) -> TrainingCurve:
    """The curve of the table's task figure: accuracy over the task's test images of its target digits (all ten
    for a domain task), starting from the base's."""
    if not settings.curve_every:
        return TrainingCurve.off()
    x, y = ctx.task_data.test_x, ctx.task_data.test_y
    rows = torch.isin(y, torch.tensor(ctx.target_digits, device=y.device))
    w0 = ctx.base_state[f"{DORA_LAYER}.weight"]
    return TrainingCurve(settings.curve_every, settings.steps, x[rows], y[rows], ctx.base_scores()["task_accuracy"], w0)


def _run_copy(
    ctx: TaskContext,
    method: str,
    settings: ExperimentSettings,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    started: float,
    on_step: StepHook | None = None,
) -> MethodResult:
    """Full fine-tuning (every weight) or the last layer only, on a private copy of the base."""
    config = settings.finetune_config(ctx.target_digits, method, ctx.task.kind)
    curve = _curve(ctx, settings)
    device = next(ctx.lora_model.model.parameters()).device

    def copy_of_base() -> MLP:
        model = MLP(*ctx.base.model.hidden)
        model.load_state_dict(ctx.base_state)  # copies into the new model's own tensors
        return model.to(device)

    # Full fine-tuning needs its own copy of every weight, so the copy counts in its peak. Training the last
    # layer only needs none of the frozen layers copied (they could be the base's, as LoRA's are): the copy is
    # made before the measure starts, else "head" showed ~11 MB more than LoRA for a tenth of its parameters.
    model = None if method == "full" else copy_of_base()
    with PeakMemory(device) as memory:
        if model is None:
            model = copy_of_base()
        for name, p in model.named_parameters():
            p.requires_grad_(method == "full" or name.startswith(HEAD_LAYER + "."))
        params = [p for p in model.parameters() if p.requires_grad]
        run = train_parameters(
            model,
            params,
            ctx.task_data,
            config,
            phase=method,
            progress=memory.progress(progress),
            stop=stop,
            on_step=both(curve.hook(), on_step),
        )
    task_eval = evaluate(model, ctx.task_data.test_x, ctx.task_data.test_y)
    trainable = sum(p.numel() for p in params)
    kept = {k: v for k, v in model.state_dict().items() if method == "full" or k.startswith(HEAD_LAYER + ".")}
    task_summary = task_eval.summary(misclassified=False)
    plain_summary = (
        task_summary
        if ctx.task_data is ctx.plain_data
        else evaluate(model, ctx.plain_data.test_x, ctx.plain_data.test_y).summary(misclassified=False)
    )
    return MethodResult(
        method=method,
        lr=config.lr,
        trainable_params=trainable,
        stored_bytes=safetensors_size(kept),
        stored_what="a full copy of the model (safetensors)"
        if method == "full"
        else "linear3 weight and bias (safetensors)",
        seconds=run.seconds,
        wall_seconds=time.perf_counter() - started,
        samples_per_s=run.samples_per_s,
        final_loss=run.losses[-1] if run.losses else None,
        peak_memory_bytes=memory.peak_bytes,
        memory_measure=memory.measure + curve.memory_note(),
        train_state_bytes=trainable * BYTES_PER_TRAINED_PARAM,
        task=task_summary,
        plain=plain_summary,
        **ctx.scores(task_summary, plain_summary),
        curve=curve.result(),
        magnitude_direction=curve.decomposition_result(),
    )


# --- the whole comparison ------------------------------------------------------------------------------
def run_experiment(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    settings: ExperimentSettings | None = None,
    *,
    adapter_name: str | None = None,
    overwrite: bool = False,
    base_config: TrainConfig | None = None,
    retrain_base: bool = False,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    save: bool = True,
) -> ExperimentResult:
    """Every method of `settings` on `task`, under the artifacts folder's writer lock; the result is saved
    to <artifacts>/experiments/ (unless save=False). A stop or failure saves no result (an adapter
    trained before it stays saved, like any adapter)."""
    settings = settings or ExperimentSettings()
    settings.validate()
    resolve_device(settings.device)
    if adapter_name is not None and not overwrite:
        sub = base_store(store, task.base_name) if task.base_name else store
        for method in settings.methods:
            if method in ADAPTER_METHODS and sub.adapter_exists(adapter_method_name(adapter_name, method)):
                raise AdapterExistsError(adapter_method_name(adapter_name, method))
    started = time.perf_counter()
    with store.writing(f"running the experiment {task.spec}"):
        ctx = prepare_task(
            store,
            data,
            task,
            settings,
            base_config=base_config,
            retrain_base=retrain_base,
            progress=progress,
            stop=stop,
            log=log,
        )
        results = []
        for method in settings.methods:
            log(f"{method}: {METHOD_LABELS[method]}, {settings.steps} steps of batch {settings.batch_size}")
            results.append(
                run_method(
                    ctx, method, settings, adapter_name=adapter_name, overwrite=overwrite, progress=progress, stop=stop
                )
            )
        result = ExperimentResult(
            task=task.describe(ctx.before_plain.weakest_digit),
            settings={**settings.to_dict(), "replay_used": settings.replay_used(task)},
            base=ctx.base_dict(),
            methods=results,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=time.perf_counter() - started,
            environment=environment(next(ctx.lora_model.model.parameters()).device),
        )
        if save:
            save_result(store, task.slug, result)
    return result
