"""A task made ready for training: its base model (loaded, or for unseen trained once), its data and the base's
scores on it, shared by every method an experiment or a sweep trains on it.

    ctx = prepare_task(store, data, parse_task("rotate:45"), settings)     # base, task data, "before"

An unseen task's base is a separate base model (lora_core.store.bases): trained on the training set without the
task's digits the first time, reused after that; the main base model is never touched.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MnistData
from lora_core.errors import ArtifactError
from lora_core.evaluate import Evaluation, EvaluationSummary, accuracy_on, evaluate
from lora_core.lab.study import load_base_for_lora, train_and_save_base
from lora_core.lab.tasks import Task, without_digits
from lora_core.lora import LoraModel
from lora_core.model import MLP
from lora_core.numbers import Number
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord
from lora_core.store.bases import base_store
from lora_core.train import ProgressCallback, TrainConfig, finetune, train_parameters

if TYPE_CHECKING:
    from lora_core.lab.experiment_settings import ExperimentSettings


class BaseRecord(TypedDict):
    """TaskContext.base_dict as saved: the base model and its scores on the task, before any training."""

    name: str
    path: str
    sha256: str
    parameters: int
    left_out_digits: list[int] | None
    task: EvaluationSummary
    plain: EvaluationSummary
    task_accuracy: Number
    plain_accuracy: Number
    kept_accuracy: Number


@dataclass
class TaskContext:
    """What every method of one task shares: the base (loaded once), the task's data, the "before"."""

    task: Task
    store: ArtifactStore  # the store holding this task's base model (main, or bases/<name>)
    base: BaseModelRecord
    lora_model: LoraModel
    base_state: dict[str, torch.Tensor]  # a private copy of the base weights, for the full and head copies
    task_data: MnistData
    plain_data: MnistData
    target_digits: tuple[int, ...]
    before_task: Evaluation
    before_plain: Evaluation
    base_name: str  # "main" or the separate base's name

    @property
    def kept_digits(self) -> tuple[int, ...]:
        """The digits a digit task does not target (whose plain accuracy measures forgetting); all ten for
        a domain task, whose plain test set is another domain."""
        if self.task.is_domain:
            return tuple(range(10))
        return tuple(d for d in range(10) if d not in self.target_digits)

    def base_scores(self) -> dict[str, float]:
        """`scores` of the base model itself: what every method's figures are measured against."""
        return self.scores(
            self.before_task.summary(misclassified=False), self.before_plain.summary(misclassified=False)
        )

    def scores(self, task_summary: dict[str, Any], plain_summary: dict[str, Any]) -> dict[str, float]:
        return {
            "task_accuracy": accuracy_on(task_summary, self.target_digits),
            "plain_accuracy": plain_summary["accuracy"],
            "kept_accuracy": accuracy_on(plain_summary, self.kept_digits),
        }

    def base_dict(self) -> dict[str, Any]:
        task_summary = self.before_task.summary(misclassified=False)
        plain_summary = self.before_plain.summary(misclassified=False)
        return {
            "name": self.base_name,
            "path": str(self.base.path),
            "sha256": self.base.fingerprint,
            "parameters": sum(t.numel() for t in self.base_state.values()),
            "left_out_digits": self.base.meta.get("left_out_digits"),
            "task": task_summary,
            "plain": plain_summary,
            **self.scores(task_summary, plain_summary),
        }


def ensure_unseen_base(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    config: TrainConfig | None = None,
    retrain: bool = False,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> ArtifactStore:
    """The separate base model of an unseen task: trained on the training set without its digits the
    first time (or with retrain), reused after that. The main base model is never touched."""
    assert task.base_name is not None
    sub = base_store(store, task.base_name)
    if sub.has_base() and not retrain:
        left_out = sub.base_meta().get("left_out_digits")
        if left_out != list(task.digits):
            raise ArtifactError(
                f"{sub.base_dir} holds a base model trained without digits {left_out}, not {list(task.digits)}; "
                "retrain it"
            )
        log(f"Reusing the base model trained without digits {list(task.digits)} in {sub.base_dir}")
        return sub
    config = config or TrainConfig()
    filtered = without_digits(data, task.digits)
    log(
        f"Training a base model without digits {list(task.digits)} on {filtered.train_x.shape[0]:,} images "
        f"(saved to {sub.base_dir}; the main base model stays as it is)"
    )
    train_and_save_base(
        sub,
        filtered,
        config,
        progress,
        stop,
        extra_meta={
            "left_out_digits": list(task.digits),
            "train_samples": int(filtered.train_x.shape[0]),
            "task": task.spec,
        },
    )
    return sub


def prepare_task(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    settings: ExperimentSettings,
    *,
    base_config: TrainConfig | None = None,
    retrain_base: bool = False,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> TaskContext:
    """Load (or, for unseen, train) the task's base, build the task's data and evaluate the base on it.
    Call it under the main store's writer lock when the task may train a base (run_experiment does)."""
    base_store_used, base_name = store, "main"
    if task.kind == "unseen":
        base_store_used = ensure_unseen_base(store, data, task, base_config, retrain_base, progress, stop, log)
        base_name = str(task.base_name)
    base, lora_model = load_base_for_lora(base_store_used, settings.device)
    settings.validate(lora_model.model)
    base_state = {k: v.detach().clone() for k, v in lora_model.base_state_dict().items()}
    if task.is_domain:
        log(f"Transforming the training and test images: {task.label}")
    task_data = task.apply(data)
    before_plain = evaluate(base.model, data.test_x, data.test_y)
    before_task = before_plain if task_data is data else evaluate(base.model, task_data.test_x, task_data.test_y)
    targets = task.target_digits(before_plain.weakest_digit)
    ctx = TaskContext(
        task,
        base_store_used,
        base,
        lora_model,
        base_state,
        task_data,
        data,
        targets,
        before_task,
        before_plain,
        base_name,
    )
    _warm_up(ctx, settings)
    return ctx


def _warm_up(ctx: TaskContext, settings: ExperimentSettings) -> None:
    """Two untimed steps of LoRA and of full training on throwaway copies, so that the first method
    measured does not pay for PyTorch's one-time set-up (kernels and library code loaded on first use,
    the autograd engine's and the optimizer's first allocations): measured at 160 MB and seconds."""
    config = dataclasses.replace(settings.finetune_config(ctx.target_digits, "lora", ctx.task.kind), steps=2)
    finetune(ctx.lora_model, "warm-up", ctx.task_data, config)
    ctx.lora_model.delete_adapter("warm-up")
    model = MLP(*ctx.base.model.hidden).to(next(ctx.lora_model.model.parameters()).device)
    model.load_state_dict(ctx.base_state)
    train_parameters(model, list(model.parameters()), ctx.task_data, config, phase="warm-up")
