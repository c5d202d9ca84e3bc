"""Readings: sentences that say what a chart of measured figures shows, written from the figures themselves.

These turn measured figures into sentences that must hold for every value: whichever method wins, whether
full fine-tuning gained anything, one rank or many. Nothing here draws; the dashboard shows each sentence
under the chart it reads (dashboard/charts.py draws those charts from the same numbers).

    read_methods(base_task, task, kept, trainable, lora_off_kept, kept_what)  # methods side by side
    read_learned_vs_forgot(base, points, kept_what)                            # learned against kept
    read_rank_cost(ranks, seconds, stored_bytes)                               # a rank sweep's cost

Accuracies come in as fractions (0..1) and are written as percentages (lora_core.numbers.pct).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lora_core.lab.analysis.dora import slope
from lora_core.numbers import pct

# The short names the sentences (and the dashboard's legends) give the methods of lora_core.lab.experiments
METHOD_NAMES = {
    "base": "base model",
    "lora": "LoRA",
    "loraplus": "LoRA+",
    "dora": "DoRA",
    "pissa": "PiSSA",
    "vera": "VeRA",
    "qlora": "QLoRA",
    "full": "full fine-tuning",
    "head": "last layer only",
}


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def _kb(n: float) -> str:
    return f"{n / 1000:,.1f} KB" if n < 1_000_000 else f"{n / 1e6:,.2f} MB"


def read_methods(
    base_task: float,
    task: dict[str, float],
    plain: dict[str, float],
    trainable: dict[str, int],
    lora_off_plain: float | None = None,
    plain_what: str = "plain MNIST",
) -> str:
    """One sentence reading the methods chart from the measured numbers (fractions 0..1): how much of full
    fine-tuning's gain LoRA reached and with what share of its parameters, and what each leaves of the
    original task. Methods missing from the dicts are left out of the sentence."""
    parts: list[str] = []
    lora, full = task.get("lora"), task.get("full")
    if lora is not None and full is not None and full > base_task:
        share = (lora - base_task) / (full - base_task)
        parts.append(
            f"LoRA recovered {_share(share)} of full fine-tuning's gain (task {pct(base_task)} → "
            f"{pct(lora)}, full {pct(full)}) with {trainable['lora'] / trainable['full']:.1%} of its "
            "trainable parameters"
        )
    elif lora is not None:
        parts.append(f"LoRA took the task from {pct(base_task)} to {pct(lora)}")
    elif full is not None:
        parts.append(f"Full fine-tuning took the task from {pct(base_task)} to {pct(full)}")
    for variant in ("loraplus", "dora", "pissa", "vera", "qlora"):  # LoRA's family, each against LoRA where it ran
        if variant in task:
            reached, named = task[variant], METHOD_NAMES[variant]
            if lora is not None:
                parts.append(f"{named} reached {pct(reached)} ({100 * (reached - lora):+.2f} points against LoRA)")
            else:
                parts.append(f"{named} took the task from {pct(base_task)} to {pct(reached)}")
    if "head" in task:
        parts.append(f"the last layer alone reached {pct(task['head'])}")
    keeps: list[str] = []
    if lora_off_plain is not None:
        keeps.append(f"with the adapter off the base still reads {pct(lora_off_plain)} of {plain_what}")
    if "full" in plain:
        keeps.append(f"the fully fine-tuned copy reads {pct(plain['full'])}")
    elif "lora" in plain:
        keeps.append(f"with LoRA applied it reads {pct(plain['lora'])}")
    sentence = "; ".join(parts) if parts else f"The base model reads {pct(base_task)} of the task"
    if keeps:
        sentence += "; " + ", while ".join(keeps)
    return sentence + "."


def read_quantized_base(scores: dict[str, Any], base_task: float, base_plain: float, task_what: str) -> str:
    """One sentence on QLoRA's NF4 base alone (an experiment's quantized_base scores, fractions): its accuracy on
    the task and plain MNIST beside the float32 base's, and its bytes against float32's."""
    share = scores["bytes"] / scores["fp32_bytes"] if scores["fp32_bytes"] else 0.0
    left = scores.get("fp32_layers") or {}
    kept = "; ".join(f"{layer} stays float32 ({why})" for layer, why in left.items())
    return (
        f"QLoRA's NF4 base alone (block {scores['block_size']}, the adapter at weight 0): {task_what} "
        f"{pct(scores['task_accuracy'])} (float32 base {pct(base_task)}), plain MNIST {pct(scores['plain_accuracy'])} "
        f"(float32 {pct(base_plain)}); its quantised layers hold {_kb(scores['bytes'])} against "
        f"{_kb(scores['fp32_bytes'])} in float32 ({share:.1%})" + (f"; {kept}" if kept else "") + "."
    )


def read_nf4_levels(level_shares: Sequence[float], uniform_shares: Sequence[float], layer: str, weights: int) -> str:
    """One sentence on how evenly W's weights use NF4's 16 levels, against 16 evenly spaced levels."""
    return (
        f"Each of NF4's 16 levels holds {_share(min(level_shares))} to {_share(max(level_shares))} of {layer}'s "
        f"{weights:,} weights (each divided by its block's largest |w|); 16 evenly spaced levels would hold "
        f"{_share(min(uniform_shares))} to {_share(max(uniform_shares))} each. The nearer every level is to 1/16 "
        "(6.25%), the more each 4-bit code tells."
    )


def read_learned_vs_forgot(base: tuple[float, float], points: dict[str, tuple[float, float]], kept_what: str) -> str:
    """One sentence reading the learned-vs-forgot chart: which method learned most, which forgot least (and
    most). `base` and each point are (task accuracy, kept accuracy) as fractions; `kept_what` names the kept
    set ("plain MNIST", "the other digits")."""
    if not points:
        return "No method was run."

    def name(m: str) -> str:
        return METHOD_NAMES.get(m, m)

    def kept(m: str) -> str:
        return f"{kept_what} {pct(base[1])} → {pct(points[m][1])}"

    most = max(points, key=lambda m: points[m][0])
    least = max(points, key=lambda m: points[m][1])
    worst = min(points, key=lambda m: points[m][1])
    learned = f"task {pct(base[0])} → {pct(points[most][0])}"
    if most == least:
        sentence = f"{name(most)} learned the most ({learned}) and forgot the least ({kept(least)})"
    else:
        sentence = f"{name(most)} learned the most ({learned}); {name(least)} forgot the least ({kept(least)})"
    if worst != least:
        sentence += f"; {name(worst)} forgot the most ({kept(worst)})"
    return sentence[0].upper() + sentence[1:] + "."


def read_rank_cost(ranks: Sequence[float], seconds: Sequence[float], stored_bytes: Sequence[int]) -> str:
    """One sentence reading the cost chart from the measured times and file sizes."""
    if not ranks:
        return "No rank was measured."
    fast = min(range(len(ranks)), key=lambda i: seconds[i])
    slow = max(range(len(ranks)), key=lambda i: seconds[i])
    small = min(range(len(ranks)), key=lambda i: stored_bytes[i])
    large = max(range(len(ranks)), key=lambda i: stored_bytes[i])
    if len(ranks) == 1:
        return f"Rank {ranks[0]:g} trained in {seconds[0]:.1f} s and its adapter file holds {_kb(stored_bytes[0])}."
    return (
        f"Training took from {seconds[fast]:.1f} s (rank {ranks[fast]:g}) to {seconds[slow]:.1f} s "
        f"(rank {ranks[slow]:g}); the adapter file grows from {_kb(stored_bytes[small])} at rank "
        f"{ranks[small]:g} to {_kb(stored_bytes[large])} at rank {ranks[large]:g} "
        f"({stored_bytes[large] / stored_bytes[small]:.1f}x)."
    )


def read_machine_load(environment: dict | None) -> str | None:
    """A warning for times measured while other work competed for the cores: the 1-minute load average (taken as
    the run ended) above the CPUs plus one, the run's own threads aside. None on a quiet machine, or where the
    run recorded no load (an older file, a system without getloadavg)."""
    environment = environment or {}
    load, cpus = environment.get("loadavg"), environment.get("cpus")
    if not load or not isinstance(cpus, int) or cpus < 1 or load[0] <= cpus + 1:
        return None
    return (
        f"Measured while the machine was busy (load average {load[0]:.1f} on {cpus} CPUs over the run's last "
        "minute): its times are inflated and uneven, so differences in seconds between its rows may be the "
        "load's, not the methods'; rerun on a quiet machine to compare them."
    )


def pareto_front(points: dict[str, tuple[int, float]]) -> list[str]:
    """The methods no other beats on both counts, as (trainable parameters, accuracy) pairs: none has fewer or as
    many parameters and more accuracy, or fewer parameters and as much accuracy. Fewest parameters first."""
    front = [
        name
        for name, (params, accuracy) in points.items()
        if not any(
            (p <= params and a > accuracy) or (p < params and a >= accuracy)
            for other, (p, a) in points.items()
            if other != name
        )
    ]
    return sorted(front, key=lambda name: points[name][0])


def read_pareto(points: dict[str, tuple[int, float]]) -> str:
    """One sentence reading the accuracy-against-parameters chart: the front, and what each step along it buys."""
    front = pareto_front(points)
    if not front:
        return "No method was run."
    names = [METHOD_NAMES.get(m, m) for m in front]
    if len(front) == 1:
        return f"{names[0]} is the best buy: no other method reaches as much accuracy with as few trainable parameters."
    steps = [
        f"{names[i + 1]} adds {100 * (points[front[i + 1]][1] - points[front[i]][1]):.2f} points for "
        f"{points[front[i + 1]][0] / points[front[i]][0]:,.1f}× the parameters of {names[i]}"
        for i in range(len(front) - 1)
    ]
    left = [METHOD_NAMES.get(m, m) for m in points if m not in front]
    off = (
        f"; {', '.join(left)} {'lies' if len(left) == 1 else 'lie'} off the front: another method does at least as "
        "well with no more trainable parameters"
        if left
        else ""
    )
    return f"On the front, from fewest trainable parameters: {', '.join(names)}; " + "; ".join(steps) + off + "."


def read_curves(start: float, curves: dict[str, list[list[float]]], share: float = 0.9) -> str:
    """One sentence on training curves (step, accuracy) that all start at the base's `start`: the step at which each
    method first reached `share` of its own final gain, earliest first; a method that ended at or below the base
    is named as such."""
    reached: list[tuple[float, str]] = []
    flat: list[str] = []
    for method, points in curves.items():
        final = points[-1][1]
        named = METHOD_NAMES.get(method, method)
        if final <= start:
            flat.append(named)
            continue
        goal = start + share * (final - start)
        step = next(s for s, accuracy in points if accuracy >= goal)
        reached.append((step, f"{named} by step {int(step)} (ending at {pct(final)})"))
    parts = []
    if reached:
        order = [text for _, text in sorted(reached, key=lambda item: item[0])]
        parts.append(f"Each method's first checkpoint at {share:.0%} of its own final gain: {'; '.join(order)}")
    if flat:
        parts.append(f"{', '.join(flat)} ended no better than the base's {pct(start)}")
    return ". ".join(part[0].upper() + part[1:] for part in parts) + "." if parts else ""


# the DoRA paper's figure 2: the sign of dM against dD over training, per method
PAPER_SLOPE_SIGNS = {"full": -1, "lora": 1, "dora": -1}


def read_magnitude_direction(decompositions: dict[str, list[list[float]]], layer: str) -> str:
    """One sentence on each method's slope of dM against dD (lora_core.lab.analysis.dora) and whether the methods
    the DoRA paper plots show its signs here."""
    slopes = {method: slope(points) for method, points in decompositions.items()}
    shown = [f"{METHOD_NAMES.get(m, m)} {s:+.3g}" for m, s in slopes.items() if s is not None]
    if not shown:
        return f"Too few checkpoints to read a slope of the magnitude change against the direction change on {layer}."
    sentence = f"On {layer}, the slope of the magnitude change against the direction change over the checkpoints: "
    sentence += "; ".join(shown) + "."
    judged = {m: s for m, s in slopes.items() if m in PAPER_SLOPE_SIGNS and s is not None and s != 0}
    if not judged:
        return sentence
    agree = [METHOD_NAMES[m] for m, s in judged.items() if (s > 0) == (PAPER_SLOPE_SIGNS[m] > 0)]
    differ = [METHOD_NAMES[m] for m, s in judged.items() if (s > 0) != (PAPER_SLOPE_SIGNS[m] > 0)]
    sentence += " The DoRA paper finds it negative for full fine-tuning and DoRA and positive for LoRA"
    if not differ:
        return sentence + f"; here {', '.join(agree)} {'agrees' if len(agree) == 1 else 'agree'}."
    if not agree:
        return sentence + f"; here {', '.join(differ)} {'does' if len(differ) == 1 else 'do'} not."
    return sentence + f"; here {', '.join(agree)} {'agrees' if len(agree) == 1 else 'agree'}, {', '.join(differ)} not."


def read_intruders(saved: dict[str, Any]) -> str:
    """One sentence on a saved intruder measurement (lora_core.lab.analysis.intruders): which run had the most
    intruders at the headline (k, eps), and whether more intruders went with more forgetting across the runs."""
    k, eps = saved["headline"]["k"], saved["headline"]["eps"]
    runs = saved["runs"]
    totals = [(sum(layer[str(k)][f"{eps:g}"] for layer in run["counts"].values()), run) for run in runs]

    def name(run: dict[str, Any]) -> str:
        return f"{'LoRA r=' + str(run['rank']) if run['method'] == 'lora' else 'full fine-tuning'} on {run['task']}"

    most, top = max(totals, key=lambda item: item[0])
    if most == 0:
        sentence = f"No run had an intruder among any layer's top {k} directions at eps {eps:g}"
    else:
        sentence = f"At k = {k} and eps = {eps:g}, {name(top)} had the most intruders ({most} over its layers)"
    parts = []
    for task, r in (saved.get("correlation") or {}).items():
        count = sum(1 for run in runs if run["task"] == task)
        if r is None:
            parts.append(f"on {task} too few runs, or no spread, to relate them to forgetting")
        elif r == 0:
            parts.append(
                f"on {task} the count did not go with forgetting over {count} run{'s' * (count != 1)} (Pearson r = 0)"
            )
        else:
            lost = "more forgetting" if r < 0 else "less forgetting"
            parts.append(
                f"on {task} more intruders went with {lost} over {count} run{'s' * (count != 1)} (Pearson r = {r:+.2f})"
            )
    return sentence + ("; " + "; ".join(parts) if parts else "") + "."
