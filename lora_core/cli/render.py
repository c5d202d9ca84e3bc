"""Text for the terminal: tables, the progress bar, and the blocks each command prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from lora_core.evaluate import weakest_digit
from lora_core.lab.analysis.dora import LAYER as DORA_LAYER
from lora_core.lab.experiment_settings import ADAPTER_METHODS
from lora_core.lab.readings import METHOD_NAMES, read_machine_load, read_magnitude_direction, read_quantized_base
from lora_core.lab.study import headline_from_study
from lora_core.lab.sweeps import smallest_within_best
from lora_core.numbers import pct
from lora_core.params import ParameterTable
from lora_core.train import Progress


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


class ProgressBar:
    """A tqdm bar fed by lora_core's progress callback."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase = ""

    def __call__(self, p: Progress) -> None:
        if self.bar is None or p.phase != self.phase:
            self.close()
            self.phase = p.phase
            self.bar = tqdm(
                total=p.total_steps, desc=p.phase, unit="step", file=sys.stderr, mininterval=0.5, dynamic_ncols=True
            )
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix(loss=f"{p.loss:.4f}", samples_s=f"{p.samples_per_s:,.0f}", refresh=False)
        if p.step == p.total_steps:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def digit_table(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    rows = []
    for d in range(10):
        row: list[Any] = [d, pct(before["per_digit_accuracy"][d]), before["wrong_counts"][d]]
        if after is not None:
            row += [
                pct(after["per_digit_accuracy"][d]),
                after["wrong_counts"][d],
                after["wrong_counts"][d] - before["wrong_counts"][d],
            ]
        rows.append(row)
    headers = ["digit", "accuracy", "wrong"]
    if after is not None:
        headers = ["digit", "base acc", "base wrong", "adapted acc", "adapted wrong", "change"]
    return table(headers, rows)


def param_table(params: dict[str, Any]) -> str:
    parameters = ParameterTable.from_dict(params)
    columns = parameters.columns()
    text = table(columns, [[row[c] for c in columns] for row in parameters.rows()])
    return (
        f"{text}\nbase parameters {parameters.base_params:,}; LoRA adds {parameters.lora_params:,} "
        f"({parameters.lora_percent:.3f}% of the base)"
    )


def _diff_cell(value: float) -> str:
    return f"{value:.1e}" if value else "0"


def _proof_table(proof: list[dict[str, Any]]) -> str:
    """A trained model's base tensors against the checkpoint (run_study's comparison)."""
    rows = [[p["tensor"], _diff_cell(p["max_abs_diff"]), "yes" if p["identical"] else "NO"] for p in proof]
    return table(["base tensor", "max |now - saved|", "bit-identical"], rows)


def recorded_table(check: Any) -> str:
    """An adapter's recorded base-tensor hashes (a lora_core.lab.proof.RecordedCheck)."""
    if check.status == "not recorded":
        return f"Base-tensor hashes: {check.source} (nothing to check; fine-tune the adapter again)."
    rows = check.rows()
    text = table(list(rows[0]), [list(row.values()) for row in rows])
    return f"Base-tensor hashes {check.source}:\n{text}\nBase weights: {check.status.upper()}"


def live_check_tables(check: dict[str, Any]) -> str:
    """lora_core.lab.proof.LiveCheck.to_dict as tables and a verdict line."""
    control = {c["tensor"]: c for c in check["control_run"]}
    rows = [
        [
            r["tensor"],
            _diff_cell(r["max_abs_diff"]),
            "yes" if r["identical"] else "NO",
            _diff_cell(control[r["tensor"]]["max_abs_diff"]),
            "yes" if control[r["tensor"]]["changed"] else "NO",
        ]
        for r in check["lora_run"]
    ]
    base = table(
        ["base tensor", "LoRA: max |diff|", "LoRA: identical", "control: max |diff|", "control: changed"], rows
    )
    norms = table(
        ["layer", "|A| before", "|A| after", "|B| before", "|B| after", "A, B changed"],
        [
            [
                n["layer"],
                n["a_before"],
                n["a_after"],
                n["b_before"],
                n["b_after"],
                "yes" if n["a_changed"] and n["b_changed"] else "NO",
            ]
            for n in check["adapter"]
        ],
    )
    seconds = check["seconds"]
    return (
        f"{check['steps']} steps of batch {check['batch_size']} (lr {check['lr']:g}, rank {check['rank']}, "
        f"seed {check['seed']}) on copies of the base model; control: the same steps with W trainable.\n"
        f"{base}\n\nThe throwaway adapter (Frobenius norms; B starts at 0):\n{norms}\n"
        f"Time: LoRA run {seconds['lora']:.2f} s, control {seconds['control']:.2f} s, "
        f"{seconds['total']:.2f} s in all\n{check['summary']}"
        + (f"\n{check['pissa_summary']}" if check.get("pissa_summary") else "")
        + (f"\n{check['qlora_summary']}" if check.get("qlora_summary") else "")
    )


def study_report(result: dict[str, Any], root: str) -> None:
    """The study's numbered summary, from run_study's result."""
    tm = result["train_metrics"]
    d = result["target_digit"]
    base, adapted, adapter = result["base"], result["adapted"], result["adapter"]
    say(
        f"\n1. Base model: {tm['epochs']} epoch(s), batch {tm['batch_size']}, lr {tm['lr']:g}, "
        f"{tm['seconds']:.1f} s at {tm['samples_per_s']:,.0f} samples/s, final loss {tm['final_loss']:.4f}"
    )
    per_digit = base["per_digit_accuracy"]
    weakest = weakest_digit(per_digit)
    say(f"   Test accuracy {pct(base['accuracy'])}; weakest digit {weakest} at {pct(per_digit[weakest])}")
    say(
        f"\n2. LoRA adapter {adapter['name']!r} on digit {d}: rank {adapter['rank']}, alpha {adapter['alpha']:g}, "
        f"replay {adapter['finetune']['replay']:g}, {adapter['finetune']['steps']} steps, {adapter['seconds']:.1f} s"
    )
    say(
        f"   Digit {d}: {pct(base['per_digit_accuracy'][d])} -> {pct(adapted['per_digit_accuracy'][d])}; "
        f"overall {pct(base['accuracy'])} -> {pct(adapted['accuracy'])}"
    )
    hit = headline_from_study(result).worst_hit_other
    if hit is not None:
        o, change = hit
        before_o, after_o = base["per_digit_accuracy"][o], adapted["per_digit_accuracy"][o]
        kind = "lost most" if change < 0 else "gained least"
        say(f"   The other digit that {kind}: {o}, {pct(before_o)} -> {pct(after_o)} ({100 * change:+.2f} points)")
    say("\n3. Wrong test images per digit, before and after:")
    say(digit_table(base, adapted))
    say("\n4. Parameters:")
    say(param_table(result["parameters"]))
    say("\n5. Base weights after fine-tuning against the checkpoint saved before it:")
    say(_proof_table(result["weights_proof"]))
    verdict = "UNCHANGED" if result["base_weights_unchanged"] else "CHANGED"
    say(
        f"   Base weights {verdict}; adapter disabled gives the base logits exactly: "
        f"{'yes' if result['disabled_adapter_equals_base'] else 'NO'}"
    )
    say(f"\nArtifacts in {root}; {result['seconds']['total']:.1f} s in all")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as file browsers show sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"


def experiment_report(result: Any) -> None:
    """The methods side by side, from lora_core.lab.experiments.ExperimentResult."""
    task, base, settings = result.task, result.base, result.settings
    domain = bool(task["domain"])
    say(f"\nTask {task['spec']}: {task['label']}" + (" (training and test images alike)" if domain else ""))
    base_line = f"Base model {base['name']!r} (sha256 {base['sha256'][:12]}"
    if base.get("left_out_digits"):
        base_line += f", trained without digits {', '.join(map(str, base['left_out_digits']))}"
    say(base_line + ")")
    say(
        f"Every method: {settings['steps']} steps of batch {settings['batch_size']}, seed {settings['seed']}; "
        f"LoRA rank {settings['rank']} (alpha {settings['alpha']:g}) on {', '.join(settings['targets'])}"
    )
    task_header = _task_header(task)
    headers = ["method", "lr", "trainable", "% of full", "stored per task", "train s", "peak memory"]
    headers += [task_header, "plain MNIST"] + ([] if domain else ["other digits"])
    full = result.method("full")

    def accuracies(row: dict[str, Any] | Any) -> list[Any]:
        get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
        return [pct(get("task_accuracy")), pct(get("plain_accuracy"))] + ([] if domain else [pct(get("kept_accuracy"))])

    rows: list[list[Any]] = [["base", None, None, None, None, None, None, *accuracies(base)]]
    for m in result.methods:
        share = f"{100 * m.trainable_params / full.trainable_params:.2f}%" if full else None
        rows.append(
            [
                m.method,
                m.lr,
                m.trainable_params,
                share,
                human_bytes(m.stored_bytes),
                round(m.seconds, 1),
                human_bytes(m.peak_memory_bytes),
                *accuracies(m),
            ]
        )
    say(table(headers, rows))
    adapters = [m for m in result.methods if m.method in ADAPTER_METHODS]
    for m in adapters:  # every adapter method alike: switched off, each must give the base model back
        same = "yes" if m.adapter_off_equals_base else "NO"
        say(
            f"{METHOD_NAMES[m.method]} adapter switched off: plain MNIST {pct(m.adapter_off_plain['accuracy'])} "
            f"(base {pct(base['plain_accuracy'])}); the base model's logits exactly: {same}"
        )
        if m.method == "pissa":
            say(
                "  (PiSSA's adapter as saved, converted to run on the untouched W; the residual base W - s B0 A0 "
                "it trained on is not W, and gives other logits)"
            )
        if m.quantized_base is not None:
            say("  " + read_quantized_base(m.quantized_base, base["task_accuracy"], base["plain_accuracy"], "the task"))
    lora = result.method("lora")
    if lora is not None:
        gain, params = result.gain_share("lora"), result.param_share("lora")
        if gain is not None and params is not None:
            say(
                f"LoRA reaches {100 * gain:.1f}% of full fine-tuning's gain on the task with "
                f"{100 * params:.2f}% of its trainable parameters."
            )
    curves = [m for m in result.methods if m.curve]
    if curves:
        steps = [int(step) for step, _ in curves[0].curve]
        say(f"\nDuring training, {task_header} (as in the table; step 0: the base model):")
        say(
            table(
                ["step", *(m.method for m in curves)],
                [[s, *(pct(m.curve[i][1]) for m in curves)] for i, s in enumerate(steps)],
            )
        )
        decompositions = {m.method: m.magnitude_direction for m in curves if m.magnitude_direction}
        if decompositions:
            say(read_magnitude_direction(decompositions, DORA_LAYER))
    names = ["base", *(m.method for m in result.methods)]
    say(f"\nPer digit, {'the task test set' if domain else 'MNIST test set'}:")
    say(table(["digit", *names], _per_digit_rows(base["task"], [m.task for m in result.methods])))
    if domain:
        say("\nPer digit, plain MNIST (the method applied):")
        say(table(["digit", *names], _per_digit_rows(base["plain"], [m.plain for m in result.methods])))
    saved = [m for m in adapters if m.adapter is not None]
    if saved:
        say("")
        for m in saved:
            say(f"Adapter {m.adapter!r} saved to {m.adapter_path}")
    measure = result.methods[0].memory_measure if result.methods else "-"
    _saved_and_timed(result, f"; peak memory: {measure}")


def _task_header(task: dict[str, Any]) -> str:
    """The task accuracy column's title: the target digits, or a domain task's whole test set."""
    if task["domain"]:
        return "task test set"
    targets = task["target_digits"] or []
    return f"digit{'s' if len(targets) > 1 else ''} {','.join(map(str, targets))}"


def _saved_and_timed(result: Any, more: str = "") -> None:
    """An experiment's or a sweep's last lines: where it was saved, how long it took, at what load."""
    if result.path:
        say(f"Results saved to {result.path}")
    load = result.environment.get("loadavg")
    load_text = f" (load average {' '.join(f'{v:.2f}' for v in load)})" if load else ""
    say(f"{result.seconds:.1f} s in all{load_text}{more}")
    if busy := read_machine_load(result.environment):
        say(busy)


def _per_digit_rows(base: dict[str, Any], others: list[dict[str, Any]]) -> list[list[Any]]:
    return [[d, *(pct(s["per_digit_accuracy"][d]) for s in (base, *others))] for d in range(10)]


def sweep_report(result: Any) -> None:
    """A sweep's points as a table, from lora_core.lab.sweeps.SweepResult."""
    task, base, settings = result.task, result.base, result.settings
    domain = bool(task["domain"])
    say(f"\n{result.kind.capitalize()} sweep on {task['spec']}: {task['label']}")
    say(f"Every point: {result.fixed_settings()}, on {', '.join(settings['targets'])}")
    task_header = _task_header(task)
    others = "plain MNIST" if domain else "other digits"
    several = len(result.methods) > 1
    headers = [
        *(["method"] if several else []),
        result.kind,
        task_header,
        "gain",
        "plain MNIST",
        f"{others} change",
        "trainable",
        "stored",
        "train s",
        "",
    ]
    rows: list[list[Any]] = [
        [
            *(["base"] if several else []),
            "base" if not several else "-",
            pct(base["task_accuracy"]),
            None,
            pct(base["plain_accuracy"]),
            None,
            None,
            None,
            None,
            "",
        ]
    ]
    marked = {  # each method's own smallest rank within 0.5 points of its best (the saved mark is the first's)
        method: smallest_within_best(
            [p.value for p in result.points_of(method)], [p.task_accuracy for p in result.points_of(method)]
        )
        if result.kind == "rank"
        else result.marked
        for method in result.methods
    }
    for p in result.points:
        if result.kind == "rank":
            capped = {k: v for k, v in p.layer_ranks.items() if v != p.value}
            note = ("capped: " + ", ".join(f"{k} {v}" for k, v in capped.items())) if capped else ""
        else:
            note = ""
        if p.value == marked[p.method]:
            note = ("<- " + ("smallest within 0.5 pt of best" if result.kind == "rank" else "default")) + (
                f"; {note}" if note else ""
            )
        rows.append(
            [
                *([METHOD_NAMES[p.method]] if several else []),
                f"{p.value:g}",
                pct(p.task_accuracy),
                f"{100 * p.task_gain:+.2f}",
                pct(p.plain_accuracy),
                f"{100 * p.kept_change:+.2f}",
                p.trainable_params,
                human_bytes(p.stored_bytes),
                f"{p.seconds:.2f}",
                note,
            ]
        )
    say(table(headers, rows))
    say(result.reading)
    _saved_and_timed(result)


def combine_table(report: Any) -> str:
    """One row per model (base, each adapter alone, the combination), one column per task, in percent."""
    headers = ["model", *[column.key for column in report.columns]]
    rows = [[row["model"], *[pct(row["accuracy"][c.key]) for c in report.columns]] for row in report.rows]
    legend = "; ".join(f"{c.key} = {c.label}" for c in report.columns)
    return table(headers, rows) + f"\n({legend})"
