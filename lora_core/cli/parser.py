"""The command line's options, and how a setting's name maps back to the option the user typed.

Every mistake is reported the same way, whether argparse or lora_core found it:
    error: --batch-size: must be a whole number from 1 to 60000, got 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lora_core.errors import ConfigError
from lora_core.model import LAYER_NAMES
from lora_core.precision import PRECISIONS
from lora_core.train import DEVICES, SCHEDULES, FinetuneConfig, TrainConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; the message already names the options as the user typed them."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake raises UsageError (one line, exit status 2) instead of printing usage."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """Every option's --help line shows its default, unless its help text already says it."""
        default, text = kwargs.get("default"), kwargs.get("help") or ""
        if (
            args
            and str(args[0]).startswith("--")
            and default is not None
            and default is not False
            and "default" not in text
        ):
            shown = (
                " ".join(map(str, default))
                if isinstance(default, list | tuple)
                else f"{default:g}"
                if isinstance(default, float)
                else str(default)
            )
            kwargs["help"] = (text + " " if text else "") + f"(default: {shown})"
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message.removeprefix("argument "))


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


# Which option sets which field of TrainConfig / FinetuneConfig, per command. Where a command accepts two
# spellings (finetune's --batch-size and --ft-batch-size), an error names the one the user typed.
COMMON_FLAGS: dict[str, tuple[str, ...]] = {
    "device": ("--device",),
    "precision": ("--precision",),
    "adapter": ("--adapter",),
    "name": ("--name",),
    "json": ("--json",),
}
TRAIN_FLAGS: dict[str, tuple[str, ...]] = {
    "epochs": ("--epochs",),
    "batch_size": ("--batch-size",),
    "lr": ("--lr",),
    "lr_schedule": ("--lr-schedule",),
    "seed": ("--seed",),
    "hidden": ("--hidden",),
}
# evaluate, inspect and predict name an adapter with --adapter
ADAPTER_FLAGS: dict[str, tuple[str, ...]] = {"name": ("--adapter",)}
# study: the base model's options carry a --train- prefix, beside the adapter's --ft- ones
STUDY_TRAIN_FLAGS: dict[str, tuple[str, ...]] = {
    field: ("--train-" + flags[0].removeprefix("--"),) for field, flags in TRAIN_FLAGS.items()
}
FINETUNE_FLAGS: dict[str, tuple[str, ...]] = {
    "digit": ("--digit",),
    "rank": ("--rank",),
    "alpha": ("--alpha",),
    "targets": ("--targets",),
    "steps": ("--steps",),
    "replay": ("--replay",),
    "dropout": ("--dropout",),
    "init": ("--init",),
    "batch_size": ("--batch-size", "--ft-batch-size"),
    "lr": ("--lr", "--ft-lr"),
    "lr_schedule": ("--lr-schedule", "--ft-lr-schedule"),
    "seed": ("--seed", "--ft-seed"),
}
STUDY_FINETUNE_FLAGS = {
    **FINETUNE_FLAGS,
    "batch_size": ("--ft-batch-size",),
    "lr": ("--ft-lr",),
    "lr_schedule": ("--ft-lr-schedule",),
    "seed": ("--ft-seed",),
}
# experiment: the task is a positional argument; each method has its own learning rate
EXPERIMENT_FLAGS: dict[str, tuple[str, ...]] = {
    "task": ("TASK",),
    "digit": ("TASK",),
    "methods": ("--methods",),
    "rank": ("--rank",),
    "alpha": ("--alpha",),
    "targets": ("--targets",),
    "steps": ("--steps",),
    "batch_size": ("--batch-size",),
    "seed": ("--seed",),
    "lr": ("--lora-lr",),
    "lora_lr": ("--lora-lr",),
    "full_lr": ("--full-lr",),
    "head_lr": ("--head-lr",),
    "replay": ("--replay",),
    "lr_schedule": ("--lr-schedule",),
}
# sweep: the swept values and the task are options; the rest as for experiment
SWEEP_FLAGS: dict[str, tuple[str, ...]] = {
    **EXPERIMENT_FLAGS,
    "task": ("--task",),
    "digit": ("--task",),
    "values": ("--values",),
    "kind": ("KIND",),
}
# options that other commands spell differently, with what to use under study instead
STUDY_RENAMED = {
    flags[0]: f"{STUDY_TRAIN_FLAGS[field][0]} for the base model"
    + (f" or {STUDY_FINETUNE_FLAGS[field][0]} for the adapter" if field in STUDY_FINETUNE_FLAGS else "")
    for field, flags in TRAIN_FLAGS.items()
}


def flag_for(field: str, flags: dict[str, tuple[str, ...]], argv: Sequence[str]) -> str:
    """The option that sets `field`, spelled as the user typed it (else its first spelling)."""
    if field.startswith("--"):
        return field
    candidates = flags.get(field) or COMMON_FLAGS.get(field) or ("--" + field.replace("_", "-"),)
    for flag in candidates:
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
            return flag
    return candidates[0]


def usage_error(exc: ConfigError, flags: dict[str, tuple[str, ...]], argv: Sequence[str]) -> UsageError:
    return UsageError(f"{flag_for(exc.field, flags, argv)}: {exc.reason}")


def _train_options(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, ...]], study: bool) -> None:
    """Base-training options. Under study their defaults are None, so that the command can tell which
    ones were given (they have no effect while a saved base model is reused)."""
    d = TrainConfig()

    def default(value: object) -> object:
        return None if study else value

    def note(value: object) -> str | None:  # under study the real default lives in TrainConfig
        return f"(default: {' '.join(map(str, value)) if isinstance(value, tuple) else value})" if study else None

    parser.add_argument(
        flags["epochs"][0], dest="epochs", type=_int_arg, default=default(d.epochs), help=note(d.epochs)
    )
    parser.add_argument(
        flags["batch_size"][0], dest="batch_size", type=_int_arg, default=default(d.batch_size), help=note(d.batch_size)
    )
    parser.add_argument(flags["lr"][0], dest="lr", type=_float_arg, default=default(d.lr), help=note(d.lr))
    parser.add_argument(
        flags["lr_schedule"][0],
        dest="lr_schedule",
        choices=SCHEDULES,
        default=default(d.lr_schedule),
        help=note(d.lr_schedule),
    )
    parser.add_argument(flags["seed"][0], dest="seed", type=_int_arg, default=default(d.seed), help=note(d.seed))
    parser.add_argument(
        flags["hidden"][0],
        dest="hidden",
        type=_int_arg,
        nargs=2,
        metavar=("H1", "H2"),
        default=default(list(d.hidden)),
        help=note(d.hidden),
    )


def _finetune_options(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig()
    parser.add_argument("--digit", type=_int_arg, nargs="+", help="target digit(s); default: the weakest")
    parser.add_argument("--rank", type=_int_arg, default=d.rank)
    parser.add_argument("--alpha", type=_float_arg, default=d.alpha)
    parser.add_argument("--targets", nargs="+", choices=LAYER_NAMES, default=list(d.targets))
    parser.add_argument("--steps", type=_int_arg, default=d.steps)
    parser.add_argument("--ft-batch-size", dest="ft_batch_size", type=_int_arg, default=d.batch_size)
    parser.add_argument("--ft-lr", dest="ft_lr", type=_float_arg, default=d.lr)
    parser.add_argument("--ft-lr-schedule", dest="ft_lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    parser.add_argument(
        "--replay",
        type=_float_arg,
        default=d.replay,
        help="share of each batch drawn from the other digits (0: the tutorials' forgetting)",
    )
    parser.add_argument("--dropout", type=_float_arg, default=d.dropout)
    parser.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    parser.add_argument("--init", choices=("kaiming", "gaussian"), default=d.init)
    parser.add_argument("--ft-seed", dest="ft_seed", type=_int_arg, default=d.seed)
    parser.add_argument("--name", help="adapter name (default: digit-<D>); letters, digits, '-', '_' and '.'")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing adapter of the same name (else refused)"
    )


PRECISION_HELP = (
    "arithmetic of the training steps: fp32, bf16 (forward pass and loss under bfloat16 autocast; weights, "
    "gradients, Adam and saved files stay float32), or auto: bf16 where a quick matmul probe "
    "measures it faster on this device, else fp32. Evaluation always runs in fp32."
)


def _precision_option(parser: argparse.ArgumentParser, default: str, study: bool = False) -> None:
    """--precision, defaulting to what the command's own settings class defaults to."""
    both = " Under study it applies to both the base model's training and the adapter's." if study else ""
    parser.add_argument("--precision", choices=PRECISIONS, default=default, help=PRECISION_HELP + both)


def _adapter_choice(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--adapter", help=f"adapter to {what} (default: the newest saved one that fits the base)")
    group.add_argument("--base-only", action="store_true", help="the base model alone, without any adapter")


def _task_arg(text: str) -> Any:
    from lora_core.lab.tasks import parse_task

    try:
        return parse_task(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _methods_arg(text: str) -> tuple[str, ...]:
    from lora_core.lab.experiments import METHODS

    methods = tuple(m.strip().lower() for m in text.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(METHODS)}, got {text!r}"
            + (f" (unknown: {', '.join(repr(m) for m in unknown)})" if unknown and text.strip() else "")
        )
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"lists a method twice: {text!r}")
    return methods


def _run_options(parser: argparse.ArgumentParser, d: Any, each: str) -> None:
    """The options experiment and sweep share; each one's dest is the ExperimentSettings field it sets
    (commands._experiment_settings relies on it), and `d` holds the defaults."""
    parser.add_argument(
        "--alpha", type=_float_arg, default=None, help="LoRA's alpha (default: 2 x rank, so every rank has scale 2)"
    )
    parser.add_argument("--targets", nargs="+", choices=LAYER_NAMES, default=list(d.targets), help="LoRA's layers")
    parser.add_argument("--steps", type=_int_arg, default=d.steps, help=f"training steps of every {each}")
    parser.add_argument("--batch-size", dest="batch_size", type=_int_arg, default=d.batch_size)
    parser.add_argument("--seed", type=_int_arg, default=d.seed)
    parser.add_argument("--lora-lr", dest="lora_lr", type=_float_arg, default=d.lora_lr)
    parser.add_argument("--lr-schedule", dest="lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    _precision_option(parser, d.precision)


def _experiment_options(parser: argparse.ArgumentParser) -> None:
    from lora_core.lab.experiments import METHODS, UNSEEN_REPLAY, ExperimentSettings
    from lora_core.lab.tasks import TASK_FORMS

    d = ExperimentSettings()
    parser.add_argument("task", metavar="TASK", type=_task_arg, help=f"what to learn: {TASK_FORMS}")
    parser.add_argument(
        "--methods",
        type=_methods_arg,
        default=d.methods,
        help=f"comma-separated, run in this order (default: {','.join(METHODS)})",
    )
    parser.add_argument("--rank", type=_int_arg, default=d.rank, help="LoRA's rank")
    _run_options(parser, d, "method")
    parser.add_argument("--full-lr", dest="full_lr", type=_float_arg, default=d.full_lr)
    parser.add_argument("--head-lr", dest="head_lr", type=_float_arg, default=d.head_lr)
    parser.add_argument(
        "--replay",
        type=_float_arg,
        default=None,
        help="digit tasks and unseen: share of each batch drawn from the other digits "
        f"(default: {UNSEEN_REPLAY:g} for unseen, {FinetuneConfig().replay:g} for the digit tasks)",
    )
    parser.add_argument(
        "--name", help="the LoRA adapter's name (default: from the task, e.g. rotate-45; if taken, rotate-45-2, ...)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter of that --name (else refused)")
    parser.add_argument(
        "--retrain-base",
        dest="retrain_base",
        action="store_true",
        help="unseen: train the base model without those digits again, even if one is saved",
    )


def _values_arg(text: str) -> list[str]:
    """--values 1,2,4 or --values 1 2 4: each piece checked once the sweep's kind is known."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got {text!r}")
    return parts


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    from lora_core.lab.experiments import ExperimentSettings
    from lora_core.lab.sweeps import DEFAULT_RANKS, DEFAULT_REPLAYS, SWEEP_KINDS
    from lora_core.lab.tasks import TASK_FORMS

    d = ExperimentSettings()
    parser.add_argument("kind", metavar="KIND", choices=SWEEP_KINDS, help="what to sweep: rank or replay")
    parser.add_argument("--task", type=_task_arg, default=None, help=f"what to learn: {TASK_FORMS} (default: weakest)")
    parser.add_argument(
        "--values",
        nargs="+",
        type=_values_arg,
        default=None,
        help=f"the values to try (default: rank {','.join(map(str, DEFAULT_RANKS))}; "
        f"replay {','.join(f'{v:g}' for v in DEFAULT_REPLAYS)})",
    )
    parser.add_argument("--rank", type=_int_arg, default=d.rank, help="LoRA's rank (replay sweep)")
    _run_options(parser, d, "point")
    parser.add_argument(
        "--replay", type=_float_arg, default=None, help="rank sweep on a digit task: share of replayed other digits"
    )


# combine: the adapters and their weights in one option, the tasks to score them on in another
COMBINE_FLAGS: dict[str, tuple[str, ...]] = {
    "adapters": ("--adapters",),
    "weights": ("--adapters",),
    "adapter": ("--adapters",),
    "name": ("--adapters",),
    "task": ("--task",),
}


def _weighted_adapters_arg(text: str) -> list[tuple[str, float]]:
    from lora_core.lab.combine import parse_weighted_adapters

    try:
        return parse_weighted_adapters(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _combine_options(parser: argparse.ArgumentParser) -> None:
    from lora_core.lab.combine import WEIGHTED_FORM
    from lora_core.lab.tasks import TASK_FORMS

    parser.add_argument(
        "--adapters",
        type=_weighted_adapters_arg,
        required=True,
        metavar="NAME:WEIGHT,...",
        help=f"two or more saved adapters and their weights: {WEIGHTED_FORM}",
    )
    parser.add_argument(
        "--task",
        type=_task_arg,
        action="append",
        metavar="TASK",
        help=f"score on this task (repeatable; default: each adapter's own task): {TASK_FORMS}",
    )


def build_parser() -> argparse.ArgumentParser:
    from lora_core.cli import commands

    parser = _Parser(prog="python -m lora_core", description="LoRA on MNIST: train, fine-tune, evaluate, inspect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--artifacts", type=Path, help="artifacts folder (default: $LORA_ARTIFACTS_DIR or ./artifacts)")
    common.add_argument("--data", type=Path, help="MNIST folder (default: $LORA_DATA_DIR or ./data)")
    common.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    common.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, then mps, else cpu")

    p = sub.add_parser("train", parents=[common], help="train and save the base model")
    _train_options(p, TRAIN_FLAGS, study=False)
    _precision_option(p, TrainConfig().precision)
    p.set_defaults(handler=commands.cmd_train, flags=TRAIN_FLAGS)

    p = sub.add_parser("evaluate", parents=[common], help="per-digit accuracy of the base model and an adapter")
    _adapter_choice(p, "evaluate beside the base model")
    p.set_defaults(handler=commands.cmd_evaluate, flags=ADAPTER_FLAGS)

    p = sub.add_parser("finetune", parents=[common], help="fine-tune and save a LoRA adapter")
    _finetune_options(p)
    # finetune's own batch size, learning rate and seed may also be spelled like train's
    d = FinetuneConfig()
    p.add_argument("--batch-size", dest="ft_batch_size", type=_int_arg, default=d.batch_size)
    p.add_argument("--lr", dest="ft_lr", type=_float_arg, default=d.lr)
    p.add_argument("--lr-schedule", dest="ft_lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    p.add_argument("--seed", dest="ft_seed", type=_int_arg, default=d.seed)
    _precision_option(p, d.precision)
    p.set_defaults(handler=commands.cmd_finetune, flags=FINETUNE_FLAGS)

    p = sub.add_parser("inspect", parents=[common], help="parameter table, adapter update, recorded base-tensor hashes")
    _adapter_choice(p, "inspect")
    p.set_defaults(handler=commands.cmd_inspect, flags=ADAPTER_FLAGS)

    p = sub.add_parser(
        "prove",
        parents=[common],
        help="live check: N LoRA steps leave every base tensor bit-identical; the same steps of full "
        "fine-tuning (the control) change them",
    )
    p.add_argument("--steps", type=_int_arg, default=20, help="training steps of each run (default: 20)")
    p.set_defaults(handler=commands.cmd_prove, flags={"steps": ("--steps",)})

    p = sub.add_parser("predict", parents=[common], help="read digit pictures (PNG, JPEG) with base and adapter")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="picture files, or folders of pictures")
    _adapter_choice(p, "compare with the base")
    p.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="dark ink on light paper: auto-detected from the border by default",
    )
    p.set_defaults(handler=commands.cmd_predict, flags=ADAPTER_FLAGS)

    p = sub.add_parser(
        "study",
        parents=[common],
        help="the whole study, end to end",
        description="Train (or reuse) the base model, fine-tune its weakest digit, and compare the base tensors of "
        "the model really fine-tuned with the checkpoint. "
        "--train-* options set the base model's training (used only when one is trained: no saved base, "
        "or --retrain); --ft-* and the other options set the adapter's.",
    )
    _train_options(p, STUDY_TRAIN_FLAGS, study=True)
    _finetune_options(p)
    p.add_argument("--retrain", action="store_true", help="train a new base model even if one is saved")
    _precision_option(p, TrainConfig().precision, study=True)  # FinetuneConfig's default is the same
    p.set_defaults(handler=commands.cmd_study, flags=STUDY_FINETUNE_FLAGS)

    p = sub.add_parser(
        "experiment",
        parents=[common],
        help="LoRA, full fine-tuning and the last layer side by side on a task",
        description="Train each method with the same steps, batches and seed on the task, and compare trainable "
        "parameters, bytes stored per task, time, peak memory, and accuracy on the task and on plain MNIST. "
        "The LoRA adapter is saved as a normal adapter; the results go to <artifacts>/experiments/.",
    )
    _experiment_options(p)
    p.set_defaults(handler=commands.cmd_experiment, flags=EXPERIMENT_FLAGS)

    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="LoRA's rank or replay share over a list of values on a task",
        description="Train a LoRA adapter per value with the same steps, batches and seed, and compare task "
        "accuracy, plain-MNIST accuracy, trainable parameters, time and file size. The base is loaded once; the "
        "adapters are measured and dropped. The results go to <artifacts>/experiments/sweep-KIND-*.json.",
    )
    _sweep_options(p)
    p.set_defaults(handler=commands.cmd_sweep, flags=SWEEP_FLAGS)

    from lora_core.cli.analyze import add_analyze_parser  # the analyze command keeps its options in its own module

    add_analyze_parser(sub, common)

    p = sub.add_parser(
        "combine",
        parents=[common],
        help="two or more adapters at once, each with a weight: accuracy on each adapter's task",
        description="Activate several saved adapters at once, each update scaled by its weight (the sum "
        "W x + b + sum_k w_k scale_k B_k A_k x, like PEFT's weighted combination), and compare the base model, "
        "each adapter alone and the combination on plain MNIST and on each adapter's task (a digit adapter on "
        "its digits, a domain adapter such as rotate-45 on its transformed test set).",
    )
    _combine_options(p)
    p.set_defaults(handler=commands.cmd_combine, flags=COMBINE_FLAGS)

    from lora_core.cli import mydigits as mydigits_cli  # issue 11's commands live in their own module

    mydigits_cli.add_parser(sub, _Parser, _int_arg, _float_arg)
    return parser


def unrecognized(command: str | None, extras: Sequence[str]) -> UsageError:
    """Unknown options, with the right spelling where study names an option differently."""
    hints = [
        f"instead of {arg}, study takes {STUDY_RENAMED[arg]}"
        for arg in extras
        if command == "study" and arg in STUDY_RENAMED
    ]
    return UsageError(f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else ""))
