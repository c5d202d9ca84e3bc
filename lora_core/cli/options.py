"""The options several commands share, their checks, and how a setting's name maps back to the option the
user typed. Imports no command: each command module builds its own subparser from these pieces.

Every mistake is reported the same way, whether argparse or lora_core found it:
    error: --batch-size: must be a whole number from 1 to 60000, got 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lora_core.errors import ConfigError
from lora_core.lab.experiment_settings import ADAPTER_METHODS, METHODS
from lora_core.lab.tasks import parse_task
from lora_core.lora import validate_adapter_name
from lora_core.lora.nf4 import BASE_PRECISIONS
from lora_core.model import LAYER_NAMES
from lora_core.precision import PRECISIONS
from lora_core.train import DEVICES, FINETUNE_INITS, SCHEDULES, FinetuneConfig, TrainConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; the message already names the options as the user typed them."""


class Parser(argparse.ArgumentParser):
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


def shown(text: str, limit: int = 40) -> str:
    """A value the user typed, quoted for a message: in full up to `limit` characters, else its start and length."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # also a number of more digits than Python converts
        raise argparse.ArgumentTypeError(f"expected a whole number, got {shown(text)}") from None


def float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {shown(text)}") from None


def folder_arg(text: str) -> Path:
    """A folder option's value: an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder, or leave the option out for the default")
    return Path(text)


def task_arg(text: str) -> Any:
    try:
        return parse_task(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


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
FINETUNE_FLAGS: dict[str, tuple[str, ...]] = {
    "digit": ("--digit",),
    "rank": ("--rank",),
    "alpha": ("--alpha",),
    "targets": ("--targets",),
    "steps": ("--steps",),
    "replay": ("--replay",),
    "dropout": ("--dropout",),
    "init": ("--init",),
    "loraplus_lr_ratio": ("--loraplus-ratio",),
    "use_vera": ("--vera",),
    "use_dora": ("--dora",),
    "base_precision": ("--base-precision",),
    "nf4_block_size": ("--nf4-block-size",),
    "batch_size": ("--batch-size", "--ft-batch-size"),
    "lr": ("--lr", "--ft-lr"),
    "lr_schedule": ("--lr-schedule", "--ft-lr-schedule"),
    "seed": ("--seed", "--ft-seed"),
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
    "loraplus_lr": ("--loraplus-lr",),
    "dora_lr": ("--dora-lr",),
    "pissa_lr": ("--pissa-lr",),
    "vera_lr": ("--vera-lr",),
    "vera_rank": ("--vera-rank",),
    "nf4_block_size": ("--nf4-block-size",),
    "curve_every": ("--curve-every",),
    "loraplus_ratio": ("--loraplus-ratio",),
    "loraplus_lr_ratio": ("--loraplus-ratio",),
    "replay": ("--replay",),
    "lr_schedule": ("--lr-schedule",),
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


def unrecognized(extras: Sequence[str], renamed: dict[str, str]) -> UsageError:
    """Unknown options, with the right spelling where the command names an option differently (`renamed`:
    an option other commands take -> what this command takes instead)."""
    hints = [f"instead of {arg}, {renamed[arg]}" for arg in extras if arg in renamed]
    return UsageError(f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else ""))


def validated(config: Any, flags: dict[str, tuple[str, ...]], args: argparse.Namespace, model: Any = None) -> Any:
    """Validate `config`, naming the option the user typed when a value is wrong."""
    try:
        if model is None:
            config.validate()
        else:
            config.validate(model)
    except ConfigError as exc:
        raise usage_error(exc, flags, args.argv) from exc
    return config


def check_name(args: argparse.Namespace) -> None:
    """Refuse a bad --name before any work is done."""
    if args.name is not None:
        try:
            validate_adapter_name(args.name)
        except ConfigError as exc:
            raise usage_error(exc, {}, args.argv) from exc


def common_options() -> Parser:
    """The options every command but mydigits takes, as a parent parser."""
    common = Parser(add_help=False)
    common.add_argument(
        "--artifacts", type=folder_arg, help="artifacts folder (default: $LORA_ARTIFACTS_DIR or ./artifacts)"
    )
    common.add_argument("--data", type=folder_arg, help="MNIST folder (default: $LORA_DATA_DIR or ./data)")
    common.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    common.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, then mps, else cpu")
    return common


def train_options(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, ...]], study: bool) -> None:
    """Base-training options. Under study their defaults are None, so that the command can tell which
    ones were given (they have no effect while a saved base model is reused)."""
    d = TrainConfig()

    def default(value: object) -> object:
        return None if study else value

    def note(value: object) -> str | None:  # under study the real default lives in TrainConfig
        return f"(default: {' '.join(map(str, value)) if isinstance(value, tuple) else value})" if study else None

    parser.add_argument(flags["epochs"][0], dest="epochs", type=int_arg, default=default(d.epochs), help=note(d.epochs))
    parser.add_argument(
        flags["batch_size"][0], dest="batch_size", type=int_arg, default=default(d.batch_size), help=note(d.batch_size)
    )
    parser.add_argument(flags["lr"][0], dest="lr", type=float_arg, default=default(d.lr), help=note(d.lr))
    parser.add_argument(
        flags["lr_schedule"][0],
        dest="lr_schedule",
        choices=SCHEDULES,
        default=default(d.lr_schedule),
        help=note(d.lr_schedule),
    )
    parser.add_argument(flags["seed"][0], dest="seed", type=int_arg, default=default(d.seed), help=note(d.seed))
    parser.add_argument(
        flags["hidden"][0],
        dest="hidden",
        type=int_arg,
        nargs=2,
        metavar=("H1", "H2"),
        default=default(list(d.hidden)),
        help=note(d.hidden),
    )


def finetune_options(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig()
    parser.add_argument("--digit", type=int_arg, nargs="+", help="target digit(s); default: the weakest")
    parser.add_argument("--rank", type=int_arg, default=d.rank)
    parser.add_argument("--alpha", type=float_arg, default=d.alpha)
    parser.add_argument("--targets", nargs="+", choices=LAYER_NAMES, default=list(d.targets))
    parser.add_argument("--steps", type=int_arg, default=d.steps)
    parser.add_argument("--ft-batch-size", dest="ft_batch_size", type=int_arg, default=d.batch_size)
    parser.add_argument("--ft-lr", dest="ft_lr", type=float_arg, default=d.lr)
    parser.add_argument("--ft-lr-schedule", dest="ft_lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    parser.add_argument(
        "--replay",
        type=float_arg,
        default=d.replay,
        help="share of each batch drawn from the other digits (0: the tutorials' forgetting)",
    )
    parser.add_argument("--dropout", type=float_arg, default=d.dropout)
    parser.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    loraplus_option(parser, d.loraplus_lr_ratio, "(16 in the paper; default: plain LoRA)")
    parser.add_argument(
        "--dora",
        action="store_true",
        help="DoRA: also train a magnitude per output row (W' = m (W + sBA) / ||W + sBA||); saved as PEFT's use_dora",
    )
    parser.add_argument(
        "--vera",
        action="store_true",
        help="VeRA: A and B one frozen random pair shared by the layers, each layer training two vectors "
        "(dW = diag(b) B diag(d) A; --rank is the pair's rank, 256 in the paper); saved as PEFT's VeRA",
    )
    parser.add_argument(
        "--base-precision",
        dest="base_precision",
        choices=BASE_PRECISIONS,
        default=d.base_precision,
        help="the frozen base the adapter trains and runs on: fp32, or nf4 (QLoRA: a 4-bit NormalFloat copy of W "
        "with double-quantised block scales, by torchao; W itself stays untouched)",
    )
    nf4_block_option(parser, d.nf4_block_size)
    parser.add_argument(
        "--init",
        choices=FINETUNE_INITS,
        default=d.init,
        help="how A and B start: kaiming or gaussian with B = 0 (LoRA), or pissa (W's top-r singular directions, "
        "trained on the residual W - s B0 A0 in a copy; saved as plain LoRA of rank 2r on the untouched W)",
    )
    parser.add_argument("--ft-seed", dest="ft_seed", type=int_arg, default=d.seed)
    parser.add_argument("--name", help="adapter name (default: digit-<D>); letters, digits, '-', '_' and '.'")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing adapter of the same name (else refused; a study without --name picks a fresh name)",
    )


def nf4_block_option(parser: argparse.ArgumentParser, default: int) -> None:
    """--nf4-block-size: weights per NF4 block (a layer whose size it does not divide stays float32)."""
    parser.add_argument(
        "--nf4-block-size",
        dest="nf4_block_size",
        type=int_arg,
        default=default,
        help=f"NF4's weights per block, each block with its own scale ({default} in QLoRA); a layer whose weight "
        "count it does not divide stays float32",
    )


def loraplus_option(parser: argparse.ArgumentParser, default: float | None, more: str = "") -> None:
    """--loraplus-ratio (dest `loraplus_ratio`): finetune's and experiment's LoRA+ ratio."""
    parser.add_argument(
        "--loraplus-ratio",
        dest="loraplus_ratio",
        type=float_arg,
        default=default,
        help="LoRA+: B learns at this many times A's learning rate" + (f" {more}" if more else ""),
    )


PRECISION_HELP = (
    "arithmetic of the training steps: fp32, bf16 (forward pass and loss under bfloat16 autocast; weights, "
    "gradients, Adam and saved files stay float32), or auto: bf16 where a quick matmul probe "
    "measures it faster on this device, else fp32. Evaluation always runs in fp32."
)


def precision_option(parser: argparse.ArgumentParser, default: str, study: bool = False) -> None:
    """--precision, defaulting to what the command's own settings class defaults to."""
    both = " Under study it applies to both the base model's training and the adapter's." if study else ""
    parser.add_argument("--precision", choices=PRECISIONS, default=default, help=PRECISION_HELP + both)


def adapter_choice(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--adapter", help=f"adapter to {what} (default: the newest saved one that fits the base)")
    group.add_argument("--base-only", action="store_true", help="the base model alone, without any adapter")


def methods_arg(text: str, allowed: Sequence[str] = METHODS) -> tuple[str, ...]:
    """--methods: a comma-separated list of `allowed` methods, each once."""
    methods = tuple(m.strip().lower() for m in text.split(","))
    unknown = [m for m in methods if m not in allowed]
    if unknown or not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(allowed)}, got {text!r}"
            + (f" (unknown: {', '.join(repr(m) for m in unknown)})" if unknown and text.strip() else "")
        )
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"lists a method twice: {text!r}")
    return methods


def adapter_methods_arg(text: str) -> tuple[str, ...]:
    """--methods of a sweep: adapter methods only (a sweep trains an adapter at each point)."""
    return methods_arg(text, ADAPTER_METHODS)


def adapter_method_options(parser: argparse.ArgumentParser, d: Any) -> None:
    """The learning rates (and VeRA's rank, LoRA+'s ratio) of LoRA's variants, for experiment and sweep; `d` holds
    the ExperimentSettings defaults."""
    parser.add_argument(
        "--loraplus-lr", dest="loraplus_lr", type=float_arg, default=d.loraplus_lr, help="LoRA+'s rate for A"
    )
    loraplus_option(parser, d.loraplus_ratio)
    parser.add_argument("--dora-lr", dest="dora_lr", type=float_arg, default=d.dora_lr, help="DoRA's learning rate")
    parser.add_argument("--pissa-lr", dest="pissa_lr", type=float_arg, default=d.pissa_lr, help="PiSSA's learning rate")
    parser.add_argument("--vera-lr", dest="vera_lr", type=float_arg, default=d.vera_lr, help="VeRA's learning rate")
    parser.add_argument(
        "--vera-rank", dest="vera_rank", type=int_arg, default=d.vera_rank, help="the rank of VeRA's shared A and B"
    )
    nf4_block_option(parser, d.nf4_block_size)


def run_options(parser: argparse.ArgumentParser, d: Any, each: str) -> None:
    """The options experiment and sweep share; each one's dest is the ExperimentSettings field it sets
    (common.experiment_settings relies on it), and `d` holds the defaults."""
    parser.add_argument(
        "--alpha", type=float_arg, default=None, help="LoRA's alpha (default: 2 x rank, so every rank has scale 2)"
    )
    parser.add_argument("--targets", nargs="+", choices=LAYER_NAMES, default=list(d.targets), help="LoRA's layers")
    parser.add_argument("--steps", type=int_arg, default=d.steps, help=f"training steps of every {each}")
    parser.add_argument("--batch-size", dest="batch_size", type=int_arg, default=d.batch_size)
    parser.add_argument("--seed", type=int_arg, default=d.seed)
    parser.add_argument("--lora-lr", dest="lora_lr", type=float_arg, default=d.lora_lr)
    parser.add_argument("--lr-schedule", dest="lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    precision_option(parser, d.precision)
