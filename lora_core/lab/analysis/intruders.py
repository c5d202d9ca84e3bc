"""Intruder dimensions (Shuttleworth et al., 2024, "LoRA vs full fine-tuning: an illusion of equivalence") on our
layers, and whether they go with forgetting.

For a layer trained from W0 to W1, take the top-k left singular vectors of W1 (its output directions) and, for each,
its largest |cosine| with any left singular vector of W0: a vector below a threshold eps is an intruder, a direction
W0 did not have. The runs: LoRA at several ranks and full fine-tuning, each on a task, with the same steps, batches
and seed; each run's intruder counts sit beside how much it forgot (the change on the digits or the images it was
not trained for).

    result = run_intruders(store, data, IntruderSettings())    # trains every run, measures, saves JSON
    saved = load_intruders(store)                               # for the CLI and the Insight page
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MnistData
from lora_core.errors import ConfigError
from lora_core.lab.analysis.dora import effective_weight
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import run_method
from lora_core.lab.run import RunContext, environment
from lora_core.lab.task_context import prepare_task
from lora_core.lab.tasks import parse_task
from lora_core.model import LAYER_NAMES
from lora_core.numbers import Number
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.results import read_saved, write_saved
from lora_core.train import ProgressCallback, check_int, resolve_device

FORMAT = "lora-lab/intruders/1"
FILE = "intruders.json"
KS = (10, 20, 50)
EPSILONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HEADLINE = (10, 0.5)  # the (k, eps) the chart and the sentence read


# --- the measurement ----------------------------------------------------------------------------------------------
def left_singular_vectors(weight: torch.Tensor) -> torch.Tensor:
    """Columns: the left singular vectors of `weight` (out x in), largest singular value first."""
    u, _, _ = torch.linalg.svd(weight.detach().to("cpu", torch.float32), full_matrices=False)
    return u


def best_matches(u0: torch.Tensor, w1: torch.Tensor, k: int) -> list[float]:
    """For each of the top-k left singular vectors of `w1`, its largest |cosine| with any column of `u0`
    (W0's left singular vectors); k is capped at the number of singular vectors."""
    u1 = left_singular_vectors(w1)[:, : min(k, u0.shape[1])]
    return (u1.T @ u0).abs().max(dim=1).values.tolist()


def intruder_count(matches: Sequence[float], k: int, eps: float) -> int:
    """How many of the first k matches fall below eps."""
    return sum(1 for m in matches[:k] if m < eps)


# --- the settings -------------------------------------------------------------------------------------------------
@dataclass
class IntruderSettings:
    """The runs: LoRA at each of `ranks` and full fine-tuning, on each of `tasks`, each with the experiment's steps,
    batches, seed and rates (alpha = 2 x rank)."""

    ranks: tuple[int, ...] = (1, 8, 64)
    tasks: tuple[str, ...] = ("weakest", "rotate:45")
    steps: int = 600
    batch_size: int = 128
    seed: int = 0
    lora_lr: float = ExperimentSettings.lora_lr
    full_lr: float = ExperimentSettings.full_lr
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self) -> None:
        self.ranks, self.tasks = tuple(self.ranks), tuple(self.tasks)

    def experiment_settings(self, rank: int) -> ExperimentSettings:
        return ExperimentSettings(
            methods=("lora", "full"),
            rank=rank,
            steps=self.steps,
            batch_size=self.batch_size,
            seed=self.seed,
            lora_lr=self.lora_lr,
            full_lr=self.full_lr,
            precision=self.precision,
            device=self.device,
        )

    def validate(self) -> None:
        if not self.ranks:
            raise ConfigError("ranks", "give at least one LoRA rank")
        for rank in self.ranks:
            check_int("ranks", rank, 1, 1024)
        if not self.tasks:
            raise ConfigError("tasks", "give at least one task")
        for spec in self.tasks:
            try:
                parse_task(spec)
            except ConfigError as exc:
                raise ConfigError("tasks", exc.reason) from None
        for rank in self.ranks:
            self.experiment_settings(rank).validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ranks"], d["tasks"] = list(self.ranks), list(self.tasks)
        return d


# --- the runs -----------------------------------------------------------------------------------------------------
@dataclass
class IntruderRun:
    task: str
    method: str  # "lora" or "full"
    rank: int | None  # LoRA's rank; None for full fine-tuning
    task_accuracy: float
    forgot: float  # how much the run lost where it was not trained (points: the other digits, or plain MNIST)
    forgot_on: str  # "the other digits" or "plain MNIST"
    matches: dict[str, list[float]]  # per layer: the best |cosine| of each of its top max(KS) directions
    counts: dict[str, dict[str, dict[str, int]]]  # per layer, per k, per eps (as text): intruders

    @property
    def label(self) -> str:
        return f"LoRA r={self.rank}" if self.method == "lora" else "full fine-tuning"

    def total(self, k: int = HEADLINE[0], eps: float = HEADLINE[1]) -> int:
        """Intruders over every layer at (k, eps)."""
        return sum(per_k[str(k)][f"{eps:g}"] for per_k in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _counts(matches: list[float], limit: int) -> dict[str, dict[str, int]]:
    return {str(k): {f"{e:g}": intruder_count(matches, min(k, limit), e) for e in EPSILONS} for k in KS}


def run_intruders(
    store: ArtifactStore,
    data: MnistData,
    settings: IntruderSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    save: bool = True,
) -> dict[str, Any]:
    """Every run of `settings`, measured at its last step, under the writer lock; saved to
    <artifacts>/analysis/intruders.json once all have run (a stop saves nothing). Returns what is saved."""
    settings = settings or IntruderSettings()
    settings.validate()
    device = resolve_device(settings.device)
    started = time.perf_counter()
    runs: list[IntruderRun] = []
    plan = [(spec, rank) for spec in settings.tasks for rank in settings.ranks] + [(s, None) for s in settings.tasks]
    plan.sort(key=lambda item: settings.tasks.index(item[0]))
    context = RunContext(progress, stop)
    with store.writing("measuring intruder dimensions"):
        contexts: dict[str, Any] = {}
        directions: dict[str, dict[str, torch.Tensor]] = {}
        for i, (spec, rank) in enumerate(plan, 1):
            task = parse_task(spec)
            experiment = settings.experiment_settings(rank or settings.ranks[0])
            if spec not in contexts:
                contexts[spec] = prepare_task(store, data, task, experiment, progress=progress, stop=stop, log=log)
            ctx = contexts[spec]
            method = "lora" if rank is not None else "full"
            label = f"{spec}: " + (f"LoRA r={rank}" if rank is not None else "full fine-tuning")
            context.check_stop(f"the intruder runs stopped before {label}; nothing was saved.")
            log(f"{label} ({i}/{len(plan)})")
            if spec not in directions:  # W0's directions, once per task's base
                directions[spec] = {
                    name: left_singular_vectors(ctx.base_state[f"{name}.weight"]) for name in LAYER_NAMES
                }
            seen: dict[str, list[float]] = {}

            def measure(
                step: int,
                model: nn.Module,
                last: int = experiment.steps,
                into: dict = seen,
                u0s: dict = directions[spec],
            ) -> None:
                if step == last:
                    for name, u0 in u0s.items():
                        into[name] = best_matches(u0, effective_weight(model, name), max(KS))

            result = run_method(
                ctx,
                method,
                experiment,
                save_adapter=False,
                progress=context.part(label, i, len(plan)),
                stop=stop,
                on_step=measure,
            )
            domain = ctx.task.is_domain
            forgot = (result.plain_accuracy if domain else result.kept_accuracy) - (
                ctx.before_plain.accuracy if domain else ctx.base_scores()["kept_accuracy"]
            )
            runs.append(
                IntruderRun(
                    task=spec,
                    method=method,
                    rank=rank,
                    task_accuracy=result.task_accuracy,
                    forgot=100 * forgot,
                    forgot_on="plain MNIST" if domain else "the other digits",
                    matches=seen,
                    counts={name: _counts(seen[name], len(seen[name])) for name in seen},
                )
            )
        out = {
            "format": FORMAT,
            "settings": settings.to_dict(),
            "ks": list(KS),
            "epsilons": list(EPSILONS),
            "headline": {"k": HEADLINE[0], "eps": HEADLINE[1]},
            "runs": [r.to_dict() for r in runs],
            # per task: its runs forget on one scale (the other digits, or plain MNIST), so they are read apart
            "correlation": {
                spec: correlation([(r.total(), r.forgot) for r in runs if r.task == spec]) for spec in settings.tasks
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - started,
            "environment": environment(device),
        }
        if save:
            write_saved(store.root / "analysis" / FILE, out)
    return out


def correlation(points: Sequence[tuple[float, float]]) -> float | None:
    """Pearson's r of (intruders, forgetting) over the runs; None with fewer than 3 runs or no spread."""
    if len(points) < 3:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


def runs_of(saved: dict[str, Any]) -> list[IntruderRun]:
    return [IntruderRun(**run) for run in saved["runs"]]


class IntrudersRecord(TypedDict):
    """intruders.json as saved: the schema its reader checks."""

    format: str
    settings: dict[str, Any]
    ks: list[int]
    epsilons: list[Number]
    headline: dict[str, Number]
    runs: list[dict[str, Any]]
    correlation: dict[str, Number | None]
    created: str
    seconds: Number
    environment: dict[str, Any]


def load_intruders(store: ArtifactStore) -> dict[str, Any] | None:
    """The saved measurement, or None when none was saved (a damaged file raises ArtifactError, naming it)."""
    try:
        return read_saved(store.root / "analysis" / FILE, "intruder measurement", FORMAT, IntrudersRecord)
    except FileNotFoundError:
        return None
