"""`python -m lora_core experiment TASK`: LoRA, full fine-tuning and the last layer side by side on a task."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import check_replay, experiment_settings, run_on_task
from lora_core.cli.options import (
    EXPERIMENT_FLAGS,
    adapter_method_options,
    check_name,
    float_arg,
    int_arg,
    methods_arg,
    run_options,
    task_arg,
)
from lora_core.cli.render import experiment_report
from lora_core.lab.experiment_settings import METHODS, UNSEEN_REPLAY, ExperimentSettings
from lora_core.lab.experiments import run_experiment
from lora_core.lab.tasks import TASK_FORMS
from lora_core.train import FinetuneConfig, TrainConfig


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "experiment",
        parents=[common],
        help="LoRA, full fine-tuning and the last layer side by side on a task",
        description="Train each method with the same steps, batches and seed on the task, and compare trainable "
        "parameters, bytes stored per task, time, peak memory, and accuracy on the task and on plain MNIST. "
        "The LoRA adapter is saved as a normal adapter; the results go to <artifacts>/experiments/.",
    )
    d = ExperimentSettings()
    p.add_argument("task", metavar="TASK", type=task_arg, help=f"what to learn: {TASK_FORMS}")
    p.add_argument(
        "--methods",
        type=methods_arg,
        default=d.methods,
        help=f"comma-separated, run in this order, from {','.join(METHODS)} (default: {','.join(d.methods)})",
    )
    p.add_argument("--rank", type=int_arg, default=d.rank, help="LoRA's rank")
    run_options(p, d, "method")
    p.add_argument("--full-lr", dest="full_lr", type=float_arg, default=d.full_lr)
    p.add_argument("--head-lr", dest="head_lr", type=float_arg, default=d.head_lr)
    adapter_method_options(p, d)
    p.add_argument(
        "--curve-every",
        dest="curve_every",
        type=int_arg,
        default=d.curve_every,
        help="also measure each method's accuracy on the task's test set every this many steps (a training curve; "
        "0: none)",
    )
    p.add_argument(
        "--replay",
        type=float_arg,
        default=None,
        help="digit tasks and unseen: share of each batch drawn from the other digits "
        f"(default: {UNSEEN_REPLAY:g} for unseen, {FinetuneConfig().replay:g} for the digit tasks)",
    )
    p.add_argument(
        "--name", help="the LoRA adapter's name (default: from the task, e.g. rotate-45; if taken, rotate-45-2, ...)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an adapter of that --name (else refused)")
    p.add_argument(
        "--retrain-base",
        dest="retrain_base",
        action="store_true",
        help="unseen: train the base model without those digits again, even if one is saved",
    )
    p.set_defaults(handler=cmd_experiment, flags=EXPERIMENT_FLAGS)


def cmd_experiment(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    check_name(args)
    check_replay(args, args.task)
    settings = experiment_settings(args)
    result = run_on_task(
        args,
        args.task,
        settings,
        lambda store, data, **live: run_experiment(
            store,
            data,
            args.task,
            settings,
            adapter_name=args.name,
            overwrite=args.overwrite,
            base_config=TrainConfig(device=args.device, precision=args.precision),
            retrain_base=args.retrain_base,
            stop=stop,
            **live,
        ),
    )
    experiment_report(result)
    return result.to_dict()
