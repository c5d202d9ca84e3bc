"""Sweeps: one setting of LoRA varied over a list of values on one task, every other setting fixed.

    result = sweep_rank(store, data, parse_task("weakest"))                   # ranks 1, 2, 4, ... 64
    result = sweep_replay(store, data, parse_task("digits:9"), values=(0, 0.5))

The task's base is loaded (or, for unseen, trained) once by lora_core.lab.task_context.prepare_task; each point
trains a LoRA adapter with run_method(..., save_adapter=False): measured, its would-be file size computed,
then dropped. The whole sweep is one stoppable run under the artifacts folder's writer lock; its result goes
to <artifacts>/experiments/sweep-<kind>-<task slug>-<time>.json, written atomically once every point is
measured (a stop or failure saves nothing).

- rank: alpha follows the rank (2 x rank, the study's ratio) unless set, so every point has the same scale
  and only the rank changes; a rank above a layer's limit is capped there (linear3: 10), as PEFT's
  rank_pattern says. The smallest rank within WITHIN_POINTS points of the best task accuracy is marked.
- replay: the share of each batch drawn from the other digits (digit tasks and unseen only: a domain task
  trains on every digit). Each point's gain on the target digits is set against the change on the others.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired

from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MnistData
from lora_core.errors import ArtifactError, ConfigError
from lora_core.lab.experiment_settings import (
    ADAPTER_METHODS,
    ExperimentSettings,
    SweepSettingsRecord,
)
from lora_core.lab.experiments import run_method
from lora_core.lab.readings import METHOD_NAMES
from lora_core.lab.run import RunContext, environment
from lora_core.lab.task_context import BaseRecord, TaskContext, prepare_task
from lora_core.lab.tasks import Task, TaskRecord
from lora_core.lora.config import MAX_RANK
from lora_core.numbers import Number, is_finite_number
from lora_core.store.artifacts import ArtifactStore
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
from lora_core.train import Progress, ProgressCallback, TrainConfig, resolve_device

FORMAT = "lora_core.sweep.v1"
SWEEP_KINDS = ("rank", "replay")
FILE_PREFIX = "sweep-"
DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_REPLAYS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
WITHIN_POINTS = 0.5  # percentage points below the best task accuracy that still count as "as good"
MAX_POINTS = 20  # each point trains a full adapter: at the default 600 steps, 20 take 10 minutes or more on a CPU


@dataclass
class SweepPoint:
    """One value of the swept setting, measured."""

    value: float
    task_accuracy: float
    plain_accuracy: float  # plain MNIST with the adapter applied
    kept_accuracy: float  # the digits the task does not target (all ten for a domain task), adapter applied
    task_gain: float  # task_accuracy minus the base model's, in accuracy (0.02 = 2 points)
    kept_change: float  # kept_accuracy minus the base model's
    plain_change: float
    trainable_params: int
    stored_bytes: int
    seconds: float  # the training loop
    wall_seconds: float  # training and evaluation
    samples_per_s: float
    final_loss: float | None
    layer_ranks: dict[str, int]  # the rank each adapted layer got (capped where r is above its limit; VeRA: its r)
    task_per_digit: list[float]
    plain_per_digit: list[float]
    adapter_off_equals_base: bool | None
    method: str = "lora"  # which adapter method this point trained (a sweep may run several side by side)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepResult:
    kind: str
    task: dict[str, Any]
    settings: dict[str, Any]
    base: dict[str, Any]
    points: list[SweepPoint]
    marked: float | None  # rank: the smallest rank within WITHIN_POINTS of the best; replay: the default
    reading: str  # one sentence read from the measured numbers
    created: str
    seconds: float
    environment: dict[str, Any]
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        """The values swept, in order (each once, however many methods were measured at it)."""
        return list(dict.fromkeys(p.value for p in self.points))

    def fixed_settings(self) -> str:
        """What every point shares, in words: '600 steps of batch 128, seed 0, rank 8 (alpha 16)'."""
        s = self.settings
        alpha = s["alpha"] if isinstance(s["alpha"], str) else f"{s['alpha']:g}"
        fixed = f"{s['steps']} steps of batch {s['batch_size']}, seed {s['seed']}"
        if s["rank"] is None:  # the swept setting
            return f"{fixed}, alpha {alpha}"
        return f"{fixed}, rank {s['rank']} (alpha {alpha})"

    def point(self, value: float, method: str | None = None) -> SweepPoint | None:
        """The point at `value` of `method` (default: the sweep's first method)."""
        method = method or self.methods[0]
        return next((p for p in self.points if p.value == value and p.method == method), None)

    @property
    def methods(self) -> list[str]:
        """The adapter methods swept, in the order they ran (["lora"] for a sweep of LoRA alone)."""
        return list(dict.fromkeys(p.method for p in self.points)) or ["lora"]

    def points_of(self, method: str) -> list[SweepPoint]:
        return [p for p in self.points if p.method == method]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": f"sweep-{self.kind}",
            "task": self.task,
            "settings": self.settings,
            "base": self.base,
            "points": [p.to_dict() for p in self.points],
            "marked": self.marked,
            "within_points": WITHIN_POINTS if self.kind == "rank" else None,
            "reading": self.reading,
            **run_record(self),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        check_format(data, FORMAT, "a sweep result")
        kind = str(data["kind"]).removeprefix("sweep-")
        if kind not in SWEEP_KINDS:
            raise ArtifactError(f"unknown sweep kind {data['kind']!r}")
        return cls(
            kind=kind,
            task=data["task"],
            settings=data["settings"],
            base=data["base"],
            points=[SweepPoint(**known_fields(SweepPoint, p)) for p in data["points"]],
            marked=data["marked"],
            reading=data["reading"],
            **run_fields(data),
        )


# --- reading the points ----------------------------------------------------------------------------------
def smallest_within_best(values: Sequence[float], accuracies: Sequence[float], points: float = WITHIN_POINTS) -> float:
    """The smallest value whose accuracy (a fraction) is within `points` percentage points of the best."""
    if not values or len(values) != len(accuracies):
        raise ValueError("give one accuracy per value, at least one")
    best = max(accuracies)
    # compared in points, rounded to 1e-9 so that 0.975 - 0.970 counts as 0.5 points, not 0.5000000001
    return min(v for v, a in zip(values, accuracies) if round(100 * (best - a), 9) <= points)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} points"


def _rank_reading(points: list[SweepPoint], marked: float) -> str:
    best = max(points, key=lambda p: p.task_accuracy)
    chosen = next(p for p in points if p.value == marked)
    if chosen is best:
        smaller = any(p.value < marked for p in points)
        tail = f"no smaller rank comes within {WITHIN_POINTS:g} points of it" if smaller else "the smallest rank tried"
        return (
            f"The best task accuracy is {100 * best.task_accuracy:.2f}% at rank {best.value:g} "
            f"({best.trainable_params:,} trainable parameters); {tail}."
        )
    return (
        f"The best task accuracy is {100 * best.task_accuracy:.2f}% at rank {best.value:g}; rank {marked:g} "
        f"is the smallest within {WITHIN_POINTS:g} points of it ({100 * chosen.task_accuracy:.2f}% with "
        f"{chosen.trainable_params:,} trainable parameters, {chosen.trainable_params / best.trainable_params:.0%} "
        f"of rank {best.value:g}'s)."
    )


def _replay_reading(points: list[SweepPoint], default: float, domain: bool) -> str:
    others = "plain MNIST" if domain else "the other digits"
    parts = []
    lowest = min(points, key=lambda p: p.value)
    parts.append(
        f"At replay {lowest.value:g} the target gains {_pts(lowest.task_gain)} while {others} change by "
        f"{_pts(lowest.kept_change)}"
    )
    chosen = next((p for p in points if p.value == default), None)
    if chosen is not None:
        best_gain = max(p.task_gain for p in points)
        least_loss = max(p.kept_change for p in points)
        parts.append(
            f"the default {default:g} gains {_pts(chosen.task_gain)} (best {_pts(best_gain)}) and changes "
            f"{others} by {_pts(chosen.kept_change)} (best {_pts(least_loss)})"
        )
    else:
        parts.append(f"the default replay {default:g} was not among the values")
    # the balance: what the target gains plus what the others change (a loss counts against the gain)
    balanced = max(points, key=lambda p: p.task_gain + p.kept_change)
    where = "the default" if balanced.value == default else f"not the default {default:g}"
    parts.append(
        f"the largest gain plus change is at replay {balanced.value:g} "
        f"({_pts(balanced.task_gain + balanced.kept_change)}), {where}"
    )
    return "; ".join(parts) + "."


class SweepPointRecord(TypedDict):
    """SweepPoint as saved."""

    value: Number
    task_accuracy: Number
    plain_accuracy: Number
    kept_accuracy: Number
    task_gain: Number
    kept_change: Number
    plain_change: Number
    trainable_params: int
    stored_bytes: int
    seconds: Number
    wall_seconds: Number
    samples_per_s: Number
    final_loss: Number | None
    layer_ranks: dict[str, int]
    task_per_digit: list[Number]
    plain_per_digit: list[Number]
    adapter_off_equals_base: bool | None
    method: NotRequired[str]


class SweepRecord(RunRecord):
    """A sweep's saved file (SweepResult.to_dict): the schema its reader checks."""

    format: str
    kind: str
    task: TaskRecord
    settings: SweepSettingsRecord
    base: BaseRecord
    points: list[SweepPointRecord]
    marked: Number | None
    within_points: NotRequired[Number | None]
    reading: str


# --- storing -------------------------------------------------------------------------------------------
def list_sweeps(store: ArtifactStore, kind: str | None = None) -> list[Path]:
    """Saved sweep results (of `kind`, rank or replay, or all), newest first."""
    return saved_results(store, FILE_PREFIX + (f"{kind}-" if kind else "") + "*.json")


def load_sweep(path: Path | str) -> SweepResult:
    return load_result(path, "sweep result", SweepResult.from_dict, SweepRecord, FORMAT)


def _save(store: ArtifactStore, task: Task, result: SweepResult) -> Path:
    return save_result(store, f"{FILE_PREFIX}{result.kind}-{task.slug}", result)


# --- checking the values ---------------------------------------------------------------------------------
def check_values(kind: str, values: Sequence[Any]) -> tuple[float, ...]:
    """The sweep's values, checked: ConfigError('values', ...) says what is wrong."""
    if kind not in SWEEP_KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(SWEEP_KINDS)}, got {kind!r}")
    values = tuple(values)
    if not values:
        raise ConfigError("values", "give at least one value")
    if len(values) > MAX_POINTS:
        raise ConfigError(
            "values", f"{len(values)} values is more than the {MAX_POINTS} a sweep runs (each trains an adapter)"
        )
    for v in values:
        if kind == "rank":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_RANK:
                raise ConfigError("values", f"ranks must be whole numbers from 1 to {MAX_RANK}, got {v!r}")
        elif not is_finite_number(v) or not 0.0 <= v < 1.0:
            raise ConfigError("values", f"replay shares must be numbers from 0 to below 1, got {v!r}")
    if len(set(values)) != len(values):
        raise ConfigError("values", f"lists a value twice: {', '.join(f'{v:g}' for v in values)}")
    return tuple(sorted(values))


# --- running -------------------------------------------------------------------------------------------------
def sweep_rank(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    values: Sequence[int] = DEFAULT_RANKS,
    settings: ExperimentSettings | None = None,
    **kwargs: Any,
) -> SweepResult:
    """LoRA (and the adapter methods among `settings.methods`) at each rank of `values` on `task`; see run_sweep."""
    return run_sweep(store, data, task, "rank", values, settings, **kwargs)


def sweep_replay(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    values: Sequence[float] = DEFAULT_REPLAYS,
    settings: ExperimentSettings | None = None,
    **kwargs: Any,
) -> SweepResult:
    """LoRA at each replay share of `values` on a digit task; see run_sweep."""
    return run_sweep(store, data, task, "replay", values, settings, **kwargs)


def run_sweep(
    store: ArtifactStore,
    data: MnistData,
    task: Task,
    kind: str,
    values: Sequence[Any],
    settings: ExperimentSettings | None = None,
    *,
    base_config: TrainConfig | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    save: bool = True,
) -> SweepResult:
    """Every value of the sweep, under the artifacts folder's writer lock; saved once all are measured."""
    ordered = check_values(kind, values)
    settings = settings or ExperimentSettings()
    # a sweep trains an adapter at each point: the adapter methods among the settings' (LoRA alone where there are
    # none, as with the comparison's default); full fine-tuning and the last layer are an experiment's references
    swept = tuple(m for m in settings.methods if m in ADAPTER_METHODS) or ("lora",)
    settings = dataclasses.replace(settings, methods=swept)
    settings.validate()
    if kind == "replay":
        task.check_replay("task")
    resolve_device(settings.device)
    started = time.perf_counter()
    with store.writing(f"running the {kind} sweep on {task.spec}"):
        ctx = prepare_task(store, data, task, settings, base_config=base_config, progress=progress, stop=stop, log=log)
        run = RunContext(progress, stop)
        before = ctx.base_scores()
        points = []
        runs = [(value, method) for value in ordered for method in settings.methods]
        for i, (value, method) in enumerate(runs, 1):
            named = "" if len(settings.methods) == 1 else f", {METHOD_NAMES[method]}"
            run.check_stop(f"the {kind} sweep stopped before {kind} {value:g}{named}; nothing was saved.")
            point_settings = _point_settings(settings, kind, value, method)
            label = f"{kind} {value:g}{named} ({i}/{len(runs)})"
            log(f"{label}: {point_settings.steps} steps of batch {point_settings.batch_size}")
            points.append(_measure(ctx, point_settings, value, before, run.part(label, i, len(runs)), stop, method))
        marked, reading = _mark(kind, points, settings, task)
        result = SweepResult(
            kind=kind,
            task=task.describe(ctx.before_plain.weakest_digit),
            settings={
                **settings.to_dict(),
                kind: None,  # the swept setting: see values
                "alpha": "2 x rank" if kind == "rank" and settings.alpha is None else settings.lora_alpha,
                "values": list(ordered),
                "replay_used": None if kind == "replay" else settings.replay_used(task),
                "default_replay": settings.replay_for(task.kind) if kind == "replay" else None,
            },
            base=ctx.base_dict(),
            points=points,
            marked=marked,
            reading=reading,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=time.perf_counter() - started,
            environment=environment(next(ctx.lora_model.model.parameters()).device),
        )
        if save:
            _save(store, task, result)
    return result


def _mark(kind: str, points: list[SweepPoint], settings: ExperimentSettings, task: Task) -> tuple[float, str]:
    """What the sweep marks (for its first method), and a sentence reading each method's points."""
    readings = []
    marked = None
    methods = list(dict.fromkeys(p.method for p in points))
    for method in methods:
        own = [p for p in points if p.method == method]
        if kind == "rank":
            mark = smallest_within_best([p.value for p in own], [p.task_accuracy for p in own])
            reading = _rank_reading(own, mark)
        else:
            mark = settings.replay_for(task.kind)
            reading = _replay_reading(own, mark, task.is_domain)
        marked = mark if marked is None else marked
        readings.append(reading if len(methods) == 1 else f"{METHOD_NAMES[method]}: {reading}")
    assert marked is not None
    return marked, " ".join(readings)


def _point_settings(settings: ExperimentSettings, kind: str, value: float, method: str = "lora") -> ExperimentSettings:
    if kind == "rank":  # VeRA's rank is its shared pair's
        return dataclasses.replace(settings, **{"vera_rank" if method == "vera" else "rank": int(value)})
    return dataclasses.replace(settings, replay=float(value))


def _measure(
    ctx: TaskContext,
    settings: ExperimentSettings,
    value: float,
    before: dict[str, float],
    progress: Callable[[Progress], None] | None,
    stop: threading.Event | None,
    method: str = "lora",
) -> SweepPoint:
    m = run_method(ctx, method, settings, save_adapter=False, progress=progress, stop=stop)
    lora = settings.finetune_config(ctx.target_digits, method, ctx.task.kind).lora_config()
    capped = lora.capped_for(ctx.lora_model.model)
    return SweepPoint(
        value=value,
        task_accuracy=m.task_accuracy,
        plain_accuracy=m.plain_accuracy,
        kept_accuracy=m.kept_accuracy,
        task_gain=m.task_accuracy - before["task_accuracy"],
        kept_change=m.kept_accuracy - before["kept_accuracy"],
        plain_change=m.plain_accuracy - before["plain_accuracy"],
        trainable_params=m.trainable_params,
        stored_bytes=m.stored_bytes,
        seconds=m.seconds,
        wall_seconds=m.wall_seconds,
        samples_per_s=m.samples_per_s,
        final_loss=m.final_loss,
        layer_ranks={name: capped.rank_for(name) for name in settings.targets},
        task_per_digit=list(m.task["per_digit_accuracy"]),
        plain_per_digit=list(m.plain["per_digit_accuracy"]),
        adapter_off_equals_base=m.adapter_off_equals_base,
        method=method,
    )
