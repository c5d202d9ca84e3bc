"""Runs every item, prints the machine, a Markdown table and writes JSON (and optionally Markdown).

python -m benchmarks                              # full run, about 6-8 minutes on 2 quiet cores
python -m benchmarks --quick --json /tmp/b.json   # tiny sizes: checks that every row is produced
python -m benchmarks --only 3 4                   # some items only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_core.data import load_mnist
from lora_core.store.paths import default_data_dir

from .context import FULL, QUICK, Context
from .items import MEASUREMENTS
from .machine import load_average, machine_info
from .report import ITEMS, Row, markdown_table

QUICK_TEST_IMAGES = 1000  # enough to show that each accuracy of a quick run is computed
DEFAULT_JSON = Path(__file__).resolve().parent / "latest.json"
WARNING = (
    "Absolute times on a shared machine vary from run to run (other processes take the same cores); "
    "the ratios, measured side by side in one run, are the claim."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (1-2 minutes): checks it works, not speed")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help="write all figures here (default: benchmarks/latest.json)",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table as a Markdown file")
    parser.add_argument("--data", type=Path, help="MNIST folder (default: $LORA_DATA_DIR or ./data)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(MEASUREMENTS),
        metavar="ITEM",
        help=f"run only these items ({', '.join(MEASUREMENTS)})",
    )
    return parser


NOTE = (
    "Timings of two candidates are interleaved round by round; 'ratio' is the median of the per-round "
    "ratios, so it can differ slightly from the quotient of the two medians shown."
)


def busy_warning(load: list[float] | None, cpus: int, when: str) -> str | None:
    """A warning when other processes kept the CPUs busy (1-minute load above the CPU count)."""
    if load is None or load[0] <= cpus:
        return None
    return (
        f"Warning: the machine was busy {when} (load average {load[0]:.1f} on {cpus} CPUs): every time "
        "below is inflated and noisy, ratios included; rerun on a quiet machine."
    )


def machine_lines(machine: dict[str, Any]) -> list[str]:
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, torch threads "
        f"{machine['torch_threads']}, torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"Python {machine['python']}; load average at start {machine['load_average_at_start']}"
        + (f", at end {machine['load_average_at_end']}" if "load_average_at_end" in machine else ""),
        f"Warning: {WARNING}",
    ]
    for key, when in (("load_average_at_start", "at the start"), ("load_average_at_end", "at the end")):
        warning = busy_warning(machine.get(key), machine["usable_cpus"], when)
        if warning:
            lines.append(warning)
    return lines


def markdown_document(command: str, machine: dict[str, Any], rows: list[Row], quick: bool, seconds: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Made with:",
        "",
        "```bash",
        command,
        "```",
        "",
        *machine_lines(machine),
        "",
        f"Run took {seconds:.0f} s{' (quick: tiny sizes, not a measurement)' if quick else ''}.",
        "",
        markdown_table(rows, quick),
        "",
        NOTE,
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks", *argv_list])

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    machine = machine_info()
    for line in machine_lines(machine):
        print(line, flush=True)
    data_dir = args.data or default_data_dir()
    data = load_mnist(data_dir)
    if args.quick:  # every accuracy a quick run reports is on its first QUICK_TEST_IMAGES test images
        data = dataclasses.replace(data, test_x=data.test_x[:QUICK_TEST_IMAGES], test_y=data.test_y[:QUICK_TEST_IMAGES])
    ctx = Context(data=data, data_dir=data_dir, sizes=QUICK if args.quick else FULL, log=log)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    failed: list[str] = []
    for key, (measure, rows_of) in MEASUREMENTS.items():
        if args.only and key not in args.only:
            continue
        numbers = [int(k) for k in key.split("-")]
        log(f"item {key}: {'; '.join(ITEMS[n] for n in numbers)}")
        try:
            item_raw = measure(ctx)
            item_rows = [row for item_rows_of in rows_of for row in item_rows_of(ctx, item_raw)]
        except Exception as exc:  # one broken item must not hide the others' results
            traceback.print_exc()
            failed.append(key)
            item_rows = [Row(n, f"FAILED: {type(exc).__name__}: {exc}".splitlines()[0], "-") for n in numbers]
            item_raw = {"error": f"{type(exc).__name__}: {exc}"}
        rows += item_rows
        raw[key] = item_raw
    seconds = time.perf_counter() - started
    machine["load_average_at_end"] = load_average()
    print()
    print(markdown_table(rows, args.quick))
    print()
    print(NOTE)
    for line in machine_lines(machine)[2:]:
        print(line)
    if args.quick:
        print("Quick run: tiny sizes; the 'met?' column is not judged.")
    missed = [r for r in rows if r.met is False]
    if missed and not args.quick:
        print(f"Targets missed: {len(missed)} (see the rows marked **no**)")
    result = {
        "command": command,
        "quick": args.quick,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "machine": machine,
        "warning": WARNING,
        "items": ITEMS,
        "rows": [r.to_dict() for r in rows],
        "raw": raw,
        "failed": failed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(args.json)
    log(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            markdown_document(command, result["machine"], rows, args.quick, seconds), encoding="utf-8"
        )
        log(f"wrote {args.markdown}")
    return 1 if failed else 0
