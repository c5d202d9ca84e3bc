"""`python -m lora_core sweep KIND`: LoRA's rank or replay share over a list of values on a task (and LoRA's
variants beside it with --methods)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import check_replay, experiment_settings, run_on_task
from lora_core.cli.options import (
    EXPERIMENT_FLAGS,
    UsageError,
    adapter_method_options,
    adapter_methods_arg,
    float_arg,
    int_arg,
    run_options,
    task_arg,
    usage_error,
)
from lora_core.cli.render import sweep_report
from lora_core.errors import ConfigError
from lora_core.lab.experiment_settings import ADAPTER_METHODS, ExperimentSettings
from lora_core.lab.sweeps import DEFAULT_RANKS, DEFAULT_REPLAYS, SWEEP_KINDS, check_values, run_sweep
from lora_core.lab.tasks import TASK_FORMS, parse_task
from lora_core.train import TrainConfig

# the swept values and the task are options; the rest as for experiment
SWEEP_FLAGS: dict[str, tuple[str, ...]] = {
    **EXPERIMENT_FLAGS,
    "task": ("--task",),
    "digit": ("--task",),
    "values": ("--values",),
    "kind": ("KIND",),
}


def values_arg(text: str) -> list[str]:
    """--values 1,2,4 or --values 1 2 4: each piece checked once the sweep's kind is known."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got {text!r}")
    return parts


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="LoRA's rank or replay share over a list of values on a task",
        description="Train a LoRA adapter per value with the same steps, batches and seed, and compare task "
        "accuracy, plain-MNIST accuracy, trainable parameters, time and file size. The base is loaded once; the "
        "adapters are measured and dropped. The results go to <artifacts>/experiments/sweep-KIND-*.json.",
    )
    d = ExperimentSettings()
    p.add_argument("kind", metavar="KIND", choices=SWEEP_KINDS, help="what to sweep: rank or replay")
    p.add_argument("--task", type=task_arg, default=None, help=f"what to learn: {TASK_FORMS} (default: weakest)")
    p.add_argument(
        "--values",
        nargs="+",
        type=values_arg,
        default=None,
        help=f"the values to try (default: rank {','.join(map(str, DEFAULT_RANKS))}; "
        f"replay {','.join(f'{v:g}' for v in DEFAULT_REPLAYS)})",
    )
    p.add_argument("--rank", type=int_arg, default=d.rank, help="LoRA's rank (replay sweep)")
    p.add_argument(
        "--methods",
        type=adapter_methods_arg,
        default=("lora",),
        help="comma-separated adapter methods, each measured at every value, from "
        f"{','.join(ADAPTER_METHODS)} (default: lora); a rank sweep sets VeRA's shared rank",
    )
    run_options(p, d, "point")
    adapter_method_options(p, d)
    p.add_argument(
        "--replay", type=float_arg, default=None, help="rank sweep on a digit task: share of replayed other digits"
    )
    p.set_defaults(handler=cmd_sweep, flags=SWEEP_FLAGS)


def sweep_values(kind: str, given: list[list[str]] | None) -> tuple[Any, ...]:
    """--values as numbers of the sweep's kind (checked again, with the ranges, by lora_core.lab.sweeps)."""
    if given is None:
        return DEFAULT_RANKS if kind == "rank" else DEFAULT_REPLAYS
    values: list[Any] = []
    for text in (piece for group in given for piece in group):
        try:
            values.append(int(text) if kind == "rank" else float(text))
        except ValueError:
            what = "whole numbers (ranks)" if kind == "rank" else "numbers from 0 to below 1 (replay shares)"
            raise UsageError(f"--values: expected {what}, got {text!r}") from None
    return tuple(values)


def cmd_sweep(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    task = args.task or parse_task("weakest")
    values = sweep_values(args.kind, args.values)
    check_replay(args, task)
    settings = experiment_settings(args)
    try:
        check_values(args.kind, values)
        if args.kind == "replay" and task.is_domain:
            raise ConfigError(
                "task", f"replay applies to digit tasks (weakest, digits:D,..., unseen:D,...), not {task.spec}"
            )
    except ConfigError as exc:
        raise usage_error(exc, args.flags, args.argv) from exc
    result = run_on_task(
        args,
        task,
        settings,
        lambda store, data, **live: run_sweep(
            store,
            data,
            task,
            args.kind,
            values,
            settings,
            base_config=TrainConfig(device=args.device, precision=args.precision),
            stop=stop,
            **live,
        ),
    )
    sweep_report(result)
    return result.to_dict()
