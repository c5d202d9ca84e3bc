"""Rows of the benchmark table, and their Markdown and JSON forms (used by `python -m benchmarks`)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ITEMS: dict[int, str] = {
    1: "Base training: against the tutorial-style baseline, and bf16 against fp32",
    2: "Closeness to the matmul peak of the precision training runs in",
    3: "LoRA fine-tuning step time, fp32 and bf16",
    4: "Inference: merged and unmerged adapter against the base model",
    5: "Draw-to-prediction latency",
    6: "`python -m lora_core study`: wall time and peak memory, on a fresh clone and once the data exists",
    7: "Scaling with hidden size and with LoRA rank",
    8: "`python -m lora_core train` as a whole process",
    9: "The whole study from the dashboard's page, in a real browser, against the CLI",
    10: "The dashboard in a real browser: page loads, page switches, and each control's time to its figure",
    11: "QLoRA on a CPU: the NF4 base's bytes, and a QLoRA step against a LoRA step",
}


@dataclass(frozen=True)
class Target:
    """A goal a figure must meet: `value <op> limit`; shown in the table as "<op> <shown>"."""

    op: str
    limit: float
    shown: str

    @property
    def text(self) -> str:
        return f"{self.op} {self.shown}"

    def met(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.limit)


OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
}

# Every target of the benchmark, in one place: the item functions judge their figures against these.
TARGETS: dict[str, Target] = {
    "training speed-up over the tutorial loop": Target(">=", 25, "25x"),
    "test accuracy after one epoch": Target(">=", 0.97, "97% (ours)"),
    "bf16 training speed-up over fp32": Target(">=", 1.8, "1.8x"),
    "bf16 test accuracy within fp32's (points)": Target("<=", 0.2, "0.2 points"),
    "fp32 training's share of the fp32 matmul peak": Target(">=", 0.75, "75%"),
    "bf16 training's share of the bf16 matmul peak": Target(">=", 0.65, "65%"),
    "LoRA step vs parametrize, batch 64": Target("<=", 0.55, "0.55x"),
    "LoRA step vs full fine-tuning, batch 256, fp32": Target("<=", 0.65, "0.65x"),
    "LoRA step vs full fine-tuning, batch 256, bf16": Target("<=", 0.65, "0.65x"),
    "merged adapter vs base model": Target("<=", 1.02, "1.02x"),
    "draw-to-prediction median (s)": Target("<", 0.020, "20 ms"),
    "study wall on a fresh clone (s)": Target("<=", 18.0, "18 s"),
    "study peak RSS on a fresh clone (bytes)": Target("<=", 1.0e9, "1.0 GB"),
    "study peak RSS once the data exists (bytes)": Target("<", 1.2e9, "1.2 GB"),
    "train command's speed-up over the tutorial loop": Target(">=", 15, "15x"),
    "study from the page vs from the CLI (speed)": Target(">=", 0.9, "0.9x"),
    "first page complete in a fresh tab (s)": Target("<=", 2.0, "2 s"),
    "page switch, slowest page (s)": Target("<=", 1.0, "1 s"),
    "control to figure (s)": Target("<=", 0.3, "300 ms"),
    "NF4 base's bytes against float32's": Target("<=", 0.2, "1/5"),
}


@dataclass
class Row:
    """One line of the table. `met` is True/False against `target`, None where there is no target;
    `goal` names the entry of TARGETS a judged row is judged against."""

    item: int
    measurement: str
    ours: str
    reference: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    goal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judged(item: int, measurement: str, ours: str, reference: str, ratio: str, target: str, value: float) -> Row:
    """A row whose figure `value` is judged against TARGETS[target]."""
    aim = TARGETS[target]
    return Row(item, measurement, ours, reference, ratio, aim.text, aim.met(value), goal=target)


def met_text(met: bool | None, quick: bool) -> str:
    if met is None:
        return "-"
    if quick:
        return "n/a (quick)"
    return "yes" if met else "**no**"


def markdown_table(rows: list[Row], quick: bool = False) -> str:
    """The rows as a GitHub Markdown table, in item order."""
    headers = ["#", "measurement", "ours", "reference", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    for r in sorted(rows, key=lambda r: r.item):
        cells = [str(r.item), r.measurement, r.ours, r.reference, r.ratio, r.target, met_text(r.met, quick)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"


def rate(samples_per_s: float) -> str:
    return f"{samples_per_s:,.0f} samples/s"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 1e-3 else ms(seconds)


def times(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"
