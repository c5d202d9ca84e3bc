"""What several commands do besides their own work: open the artifacts and MNIST, turn options into
settings, say which precision and adapter are used. Imports no command."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from lora_core.cli.options import UsageError, usage_error, validated
from lora_core.cli.render import ProgressBar, say
from lora_core.data import MnistData, load_mnist
from lora_core.errors import ArtifactError, ConfigError, LoraCoreError
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.precision import resolve_precision
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.bases import separate_bases
from lora_core.train import FinetuneConfig, TrainConfig, resolve_device

_R = TypeVar("_R")


class CheckFailed(LoraCoreError):
    """A check ran and failed (`prove` not PASS, or the study's weights comparison): exit status 1."""


def store_of(args: argparse.Namespace) -> ArtifactStore:
    return ArtifactStore(args.artifacts)


def data_of(args: argparse.Namespace) -> MnistData:
    return load_mnist(args.data, log=say)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The base-training settings; options left out (None under study) take TrainConfig's defaults."""
    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_schedule": args.lr_schedule,
        "seed": args.seed,
        "hidden": tuple(args.hidden) if args.hidden is not None else None,
    }
    return TrainConfig(
        device=args.device, precision=args.precision, **{k: v for k, v in given.items() if v is not None}
    )


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        digits=tuple(args.digit) if args.digit else None,
        rank=args.rank,
        alpha=args.alpha,
        targets=tuple(args.targets),
        steps=args.steps,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        lr_schedule=args.ft_lr_schedule,
        replay=args.replay,
        dropout=args.dropout,
        use_rslora=args.rslora,
        loraplus_lr_ratio=args.loraplus_ratio,
        use_dora=args.dora,
        use_vera=args.vera,
        base_precision=args.base_precision,
        nf4_block_size=args.nf4_block_size,
        init=args.init,
        seed=args.ft_seed,
        device=args.device,
        precision=args.precision,
    )


def say_precision(requested: str, device: str, flags: dict[str, tuple[str, ...]], args: argparse.Namespace) -> None:
    """Print the precision training will use and why (auto's probe runs here, once per process)."""
    try:
        choice = resolve_precision(requested, resolve_device(device))
    except ConfigError as exc:
        raise usage_error(exc, flags, args.argv) from exc
    say(f"Precision: {choice.reason} (--precision {requested})")


def choose_adapter(args: argparse.Namespace, store: Any, base: Any) -> str | None:
    """--adapter NAME, --base-only, or by default the newest saved adapter that fits this base model.

    Says which one is used and how to choose another, so that a plain `evaluate` or `inspect` is never
    silently about the base model alone while adapters are saved.
    """
    if args.adapter:
        check_adapter_here(store, str(args.adapter))
        return str(args.adapter)
    if args.base_only:
        say("The base model alone (--base-only).")
        return None
    records = store.list_adapters()
    usable = [r for r in records if not r.error and r.base_sha256 == base.fingerprint]
    if not usable:
        if records:
            why = "; ".join(f"{r.name}: {r.error or 'trained on another base model'}" for r in records)
            say(f"No saved adapter can be used with this base model ({why}); showing the base model alone.")
        else:
            say("No adapter is saved yet; showing the base model alone (python -m lora_core finetune makes one).")
        return None
    newest = max(usable, key=lambda r: str((r.metrics or {}).get("created", "")))
    which = "the only" if len(usable) == 1 else "the newest"
    saved = ", ".join(r.name for r in records)
    say(
        f"Adapter {newest.name!r}: {which} saved adapter that fits this base model (saved: {saved}). "
        "Choose another with --adapter NAME, or --base-only for the base model alone."
    )
    return newest.name


def check_adapter_here(store: Any, name: str) -> None:
    """Name the separate base model (<artifacts>/bases/<base>, e.g. unseen-8-9 from `experiment unseen:8,9`)
    that holds adapter `name` when this folder has none of that name: "no adapter called ..." alone would
    puzzle someone who has just seen it saved."""
    if store.adapter_exists(name):
        return
    for base_name, other in separate_bases(store).items():
        if other.adapter_exists(name):
            raise ArtifactError(
                f"adapter {name!r} belongs to the separate base model {base_name!r}, not to the base model in "
                f"{store.root} (adapters of different base models cannot be used together); for that base "
                f"model's adapters give --artifacts {other.root}"
            )


# --- experiment and sweep ---------------------------------------------------------------------------
def experiment_settings(args: argparse.Namespace, **fixed: Any) -> ExperimentSettings:
    """ExperimentSettings from the options experiment and sweep share (each option's dest is the field's
    name), with `fixed` for what the command sets itself; validated, naming the option typed."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentSettings) if hasattr(args, f.name)}
    settings = ExperimentSettings(**{**given, "targets": tuple(args.targets), **fixed})
    return validated(settings, args.flags, args)


def run_on_task(args: argparse.Namespace, task: Any, settings: Any, run: Callable[..., _R]) -> _R:
    """Load what a task's run needs and call `run(store, data, progress=..., log=...)` under a progress
    bar. An unseen task trains its own base, so only the others need a saved one."""
    store = store_of(args)
    if task.base_name is None and not store.has_base():
        raise UsageError(f"no base model in {store.base_dir}; train one first (python -m lora_core train)")
    data = data_of(args)
    say_precision(settings.precision, settings.device, args.flags, args)
    bar = ProgressBar()
    try:
        return run(store, data, progress=bar, log=lambda m: (bar.close(), say(m)))
    finally:
        bar.close()


def check_replay(args: argparse.Namespace, task: Any) -> None:
    """--replay on a domain task would be ignored without a word (it trains on every digit: there are no
    other digits to replay), so it is refused."""
    if getattr(args, "replay", None) is None:
        return
    try:
        task.check_replay()
    except ConfigError as exc:
        raise UsageError(f"--replay: {exc.reason}; leave --replay out") from exc
