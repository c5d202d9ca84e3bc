"""`python -m lora_core combine --adapters NAME:WEIGHT,...`: two or more adapters at once, each with a weight."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import check_adapter_here, data_of, store_of
from lora_core.cli.options import UsageError, task_arg
from lora_core.cli.render import combine_table, say
from lora_core.errors import ConfigError
from lora_core.lab.combine import WEIGHTED_FORM, combination_report, parse_weighted_adapters
from lora_core.lab.study import load_base_for_lora
from lora_core.lab.tasks import TASK_FORMS

# the adapters and their weights in one option, the tasks to score them on in another
COMBINE_FLAGS: dict[str, tuple[str, ...]] = {
    "adapters": ("--adapters",),
    "weights": ("--adapters",),
    "adapter": ("--adapters",),
    "name": ("--adapters",),
    "task": ("--task",),
}


def weighted_adapters_arg(text: str) -> list[tuple[str, float]]:
    try:
        return parse_weighted_adapters(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "combine",
        parents=[common],
        help="two or more adapters at once, each with a weight: accuracy on each adapter's task",
        description="Activate several saved adapters at once, each update scaled by its weight (the sum "
        "W x + b + sum_k w_k scale_k B_k A_k x, like PEFT's weighted combination), and compare the base model, "
        "each adapter alone and the combination on plain MNIST and on each adapter's task (a digit adapter on "
        "its digits, a domain adapter such as rotate-45 on its transformed test set).",
    )
    p.add_argument(
        "--adapters",
        type=weighted_adapters_arg,
        required=True,
        metavar="NAME:WEIGHT,...",
        help=f"two or more saved adapters and their weights: {WEIGHTED_FORM}",
    )
    p.add_argument(
        "--task",
        type=task_arg,
        action="append",
        metavar="TASK",
        help=f"score on this task (repeatable; default: each adapter's own task): {TASK_FORMS}",
    )
    p.set_defaults(handler=cmd_combine, flags=COMBINE_FLAGS)


def cmd_combine(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    """Several adapters at once: the base, each alone and the weighted combination, per task."""
    weighted: list[tuple[str, float]] = args.adapters
    if len(weighted) < 2:
        raise UsageError("--adapters: give two or more adapters to combine, e.g. digit-9:1,rotate-45:1")
    store = store_of(args)
    base, lora_model = load_base_for_lora(store, args.device)
    for name, _ in weighted:  # refuses an adapter of another base model (StaleAdapterError) by name
        check_adapter_here(store, name)
        store.load_adapter(lora_model, name, base.fingerprint)
    data = data_of(args)
    report = combination_report(lora_model, weighted, data, tasks=args.task)
    say(combine_table(report))
    for sentence in report.readings():
        say(sentence)
    return {"artifacts": str(store.root), **report.to_dict()}
