"""Two or more adapters at once, each with a weight: what the combination does on each adapter's task.

    combination_report(lora_model, [("digit-9", 1.0), ("rotate-45", 1.0)], data)

scores the base model, each adapter alone (at weight 1, as trained) and the combination on every task the
adapters were trained for, plus plain MNIST over all digits:
- a digit task (digit-9: `digits:9`, or the study's weakest digit) is scored on those digits of plain MNIST;
- a domain task (rotate-45: `rotate:45`) on the whole test set transformed the way it was trained on.
The sum of updates itself lives in lora_core.lora (LoraModel.set_adapter with a list of names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lora_core.data import MnistData
from lora_core.errors import ConfigError
from lora_core.evaluate import accuracy_on, evaluate
from lora_core.lab.tasks import Task, task_of, task_test_set
from lora_core.lora import LoraModel, validate_adapter_name
from lora_core.numbers import is_finite_number, pct

PLAIN = "plain"
WEIGHTED_FORM = "NAME:WEIGHT,NAME:WEIGHT (e.g. digit-9:1.0,rotate-45:0.5; a missing weight is 1)"


def parse_weighted_adapters(text: str | Sequence[str]) -> list[tuple[str, float]]:
    """'digit-9:1.0,rotate-45:0.5' (or a list of such pieces) -> [('digit-9', 1.0), ('rotate-45', 0.5)].

    Adapter names never contain ':' (validate_adapter_name), so the last ':' separates the weight."""
    pieces = [text] if isinstance(text, str) else list(text)
    parts = [p.strip() for piece in pieces for p in piece.split(",")]
    if not parts or not all(parts):
        raise ConfigError("adapters", f"expected {WEIGHTED_FORM}, got {','.join(pieces)!r}")
    out: list[tuple[str, float]] = []
    for part in parts:
        name, sep, weight_text = part.partition(":")
        name = name.strip()
        validate_adapter_name(name)
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                raise ConfigError(
                    "adapters", f"the weight of {name!r} must be a number, got {weight_text.strip()!r}"
                ) from None
            if not is_finite_number(weight):
                raise ConfigError("adapters", f"the weight of {name!r} must be a finite number, got {weight_text!r}")
        if any(name == n for n, _ in out):
            raise ConfigError("adapters", f"lists {name!r} twice")
        out.append((name, weight))
    return out


def adapter_task(meta: dict[str, Any] | None) -> Task | None:
    """The task an adapter was trained for, from its saved metrics: an Experiments adapter's recorded task
    (rotate:45, ...; lora_core.lab.tasks.task_of), else its target digits (digits:9 for the study's digit-9); None
    when neither is there."""
    task = task_of(meta)
    if task is not None and task.kind != "weakest":
        return task
    digits = (meta or {}).get("target_digits")
    if isinstance(digits, list) and digits and all(isinstance(d, int) and 0 <= d <= 9 for d in digits):
        return Task("digits", digits=tuple(sorted(set(digits))))
    return None


@dataclass(frozen=True)
class ScoreColumn:
    """One accuracy to measure: `digits` of plain MNIST, or a domain task's whole transformed test set."""

    key: str
    label: str
    task: Task | None = None  # a domain task; None: plain MNIST
    digits: tuple[int, ...] | None = None  # only these digits' test images; None: all ten

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "task": self.task.spec if self.task else None,
            "digits": list(self.digits) if self.digits is not None else None,
        }


def score_columns(tasks: Sequence[Task], weakest: int | None = None) -> list[ScoreColumn]:
    """Plain MNIST over all digits first, then one column per task (duplicates dropped)."""
    columns = [ScoreColumn(PLAIN, "plain MNIST, all digits")]
    for task in tasks:
        if task.is_domain:
            column = ScoreColumn(task.spec, f"whole test set, {task.label}", task=task)
        else:
            digits = task.target_digits(weakest)
            names = ",".join(map(str, digits))
            plural = "s" if len(digits) > 1 else ""
            column = ScoreColumn(f"digits:{names}", f"digit{plural} {names} of plain MNIST", digits=digits)
        if all(column.key != c.key for c in columns):
            columns.append(column)
    return columns


def scoring_sets(data: MnistData, columns: Sequence[ScoreColumn]) -> dict[str, torch.Tensor]:
    """The test images each column is scored on: plain MNIST, and each domain task's transformed copy
    (only the 10,000 test images are transformed, never the training set)."""
    sets = {PLAIN: data.test_x}
    for column in columns:
        if column.task is not None and column.key not in sets:
            sets[column.key], _ = task_test_set(column.task, data)
    return sets


def score(
    model: torch.nn.Module, columns: Sequence[ScoreColumn], sets: dict[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, float]:
    """Accuracy (0..1) of `model` as it is now on every column; one pass per distinct test set."""
    summaries = {key: evaluate(model, x, labels).summary(misclassified=False) for key, x in sets.items()}
    out: dict[str, float] = {}
    for column in columns:
        summary = summaries[column.key if column.task is not None else PLAIN]
        out[column.key] = accuracy_on(summary, column.digits) if column.digits is not None else summary["accuracy"]
    return out


def combination_label(weighted: Sequence[tuple[str, float]]) -> str:
    """'digit-9 ×1 + rotate-45 ×0.5'."""
    return " + ".join(f"{name} ×{weight:g}" for name, weight in weighted)


@dataclass
class CombinationReport:
    weights: list[tuple[str, float]]
    columns: list[ScoreColumn]
    rows: list[dict[str, Any]] = field(default_factory=list)  # model, kind, weights, accuracy {column key: 0..1}

    def row(self, kind: str, name: str | None = None) -> dict[str, Any]:
        """The row of the base model ('base'), of adapter `name` alone ('alone'), or of the combination."""
        for row in self.rows:
            if row["kind"] == kind and (name is None or row["model"] == name):
                return row
        raise KeyError((kind, name))

    def readings(self) -> list[str]:
        """One sentence per column for people: the combination against the best adapter alone and the base."""
        base, combined = self.row("base")["accuracy"], self.row("combined")["accuracy"]
        alone = [row for row in self.rows if row["kind"] == "alone"]
        out = []
        for column in self.columns:
            key = column.key
            best = max(alone, key=lambda row: row["accuracy"][key])
            gap = 100 * (combined[key] - best["accuracy"][key])
            verdict = (
                "keeps what the best adapter alone reaches"
                if gap >= -0.5
                else f"loses {-gap:.1f} points against the best adapter alone"
            )
            out.append(
                f"{column.label}: the combination reads {pct(combined[key])}, {best['model']} alone "
                f"{pct(best['accuracy'][key])}, the base {pct(base[key])}; the combination {verdict}."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "readings": self.readings(),
            "weights": [{"adapter": n, "weight": w} for n, w in self.weights],
            "combination": combination_label(self.weights),
            "columns": [c.to_dict() for c in self.columns],
            "rows": self.rows,
        }


@torch.no_grad()
def combination_report(
    lora_model: LoraModel,
    weighted: Sequence[tuple[str, float]],
    data: MnistData,
    tasks: Sequence[Task] | None = None,
    weakest: int | None = None,
) -> CombinationReport:
    """Accuracy of the base model, of each adapter alone (weight 1) and of the weighted combination, on plain
    MNIST and on each task: `tasks`, or else the ones the adapters were trained for (adapter_task).

    `weakest` resolves a `weakest` task (default: the base model's weakest digit, measured here). The
    model's active adapter (or combination) is restored afterwards."""
    weighted = [(str(n), float(w)) for n, w in weighted]
    names = [n for n, _ in weighted]
    before_names, before_weights = lora_model.active_adapters, lora_model.adapter_weights
    lora_model.set_adapter(names, [w for _, w in weighted])  # checks names, weights and the shared base first
    try:
        lora_model.set_adapter(None)
        if tasks is None:
            tasks = [t for t in (adapter_task(lora_model.adapter_meta(n)) for n in names) if t is not None]
        if weakest is None and any(t.kind == "weakest" for t in tasks):
            weakest = evaluate(lora_model, data.test_x, data.test_y).weakest_digit
        columns = score_columns(tasks, weakest)
        sets = scoring_sets(data, columns)
        report = CombinationReport(weighted, columns)

        def add(kind: str, model: str, weights: dict[str, float]) -> None:
            accuracy = score(lora_model, columns, sets, data.test_y)
            report.rows.append({"model": model, "kind": kind, "weights": weights, "accuracy": accuracy})

        add("base", "base model", {})
        for name in names:
            lora_model.set_adapter(name)
            add("alone", name, {name: 1.0})
        lora_model.set_adapter(names, [w for _, w in weighted])
        add("combined", combination_label(weighted), dict(weighted))
    finally:
        if len(before_names) > 1 or any(w != 1.0 for w in before_weights.values()):
            lora_model.set_adapter(before_names, list(before_weights.values()))
        else:
            lora_model.set_adapter(before_names[0] if before_names else None)
    return report


# a coarse grid from 0 to 1.5 in steps of 0.25: 49 weight pairs, each one pass per test set
MAP_STEP = 0.25
MAP_WEIGHTS: tuple[float, ...] = tuple(i * MAP_STEP for i in range(7))


@dataclass(frozen=True)
class CombinationMap:
    """Every column's accuracy at each pair of weights (w1, w2) of a grid, for two adapters acting at once."""

    names: tuple[str, str]
    weights: tuple[float, ...]
    columns: tuple[ScoreColumn, ...]
    scores: dict[tuple[float, float], dict[str, float]]  # (w1, w2) -> column key -> accuracy

    def grid(self, key: str) -> list[list[float]]:
        """The accuracies of column `key`, one row per w2 and one column per w1 (a heat map's z)."""
        return [[self.scores[(w1, w2)][key] for w1 in self.weights] for w2 in self.weights]

    def at(self, w1: float, w2: float) -> dict[str, float]:
        """Every column's accuracy at a pair of the grid (ConfigError for one off it)."""
        for (a, b), scores in self.scores.items():
            if abs(a - w1) < 1e-9 and abs(b - w2) < 1e-9:
                return scores
        raise ConfigError(
            "weights", f"({w1:g}, {w2:g}) is not on the map's grid of {', '.join(map(str, self.weights))}"
        )


@torch.no_grad()
def combination_map(
    model: LoraModel,
    names: Sequence[str],
    columns: Sequence[ScoreColumn],
    sets: dict[str, torch.Tensor],
    labels: torch.Tensor,
    weights: Sequence[float] = MAP_WEIGHTS,
) -> CombinationMap:
    """Score two adapters acting at once at every pair of `weights` (w1 for the first, w2 for the second; 0 leaves
    one out, so the corner (0, 0) is the base model). The model's active adapters are restored afterwards."""
    if len(names) != 2 or names[0] == names[1]:
        raise ConfigError("adapters", f"a map needs two different adapters, got {list(names)!r}")
    if not weights:
        raise ConfigError("weights", "give at least one weight")
    scores: dict[tuple[float, float], dict[str, float]] = {}
    with model.active_adapters_kept():
        for w1 in weights:
            for w2 in weights:
                model.set_adapter(list(names), weights=[float(w1), float(w2)])
                scores[(float(w1), float(w2))] = score(model, columns, sets, labels)
    return CombinationMap((names[0], names[1]), tuple(float(w) for w in weights), tuple(columns), scores)
