"""`python -m lora_core study`: the whole study, end to end."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from lora_core.cli.common import CheckFailed, data_of, finetune_config, say_precision, store_of, train_config
from lora_core.cli.options import (
    FINETUNE_FLAGS,
    TRAIN_FLAGS,
    check_name,
    finetune_options,
    precision_option,
    train_options,
    validated,
)
from lora_core.cli.render import ProgressBar, say, study_report, warn
from lora_core.lab.study import run_study
from lora_core.store.fileio import atomic_write_json
from lora_core.train import TrainConfig

# the base model's options carry a --train- prefix, beside the adapter's --ft- ones
STUDY_TRAIN_FLAGS: dict[str, tuple[str, ...]] = {
    field: ("--train-" + flags[0].removeprefix("--"),) for field, flags in TRAIN_FLAGS.items()
}
STUDY_FINETUNE_FLAGS = {
    **FINETUNE_FLAGS,
    "batch_size": ("--ft-batch-size",),
    "lr": ("--ft-lr",),
    "lr_schedule": ("--ft-lr-schedule",),
    "seed": ("--ft-seed",),
}
# options that other commands spell differently, with what to use under study instead
STUDY_RENAMED = {
    flags[0]: f"study takes {STUDY_TRAIN_FLAGS[field][0]} for the base model"
    + (f" or {STUDY_FINETUNE_FLAGS[field][0]} for the adapter" if field in STUDY_FINETUNE_FLAGS else "")
    for field, flags in TRAIN_FLAGS.items()
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "study",
        parents=[common],
        help="the whole study, end to end",
        description="Train (or reuse) the base model, fine-tune its weakest digit, and compare the base tensors of "
        "the model really fine-tuned with the checkpoint. "
        "--train-* options set the base model's training (used only when one is trained: no saved base, "
        "or --retrain); --ft-* and the other options set the adapter's.",
    )
    train_options(p, STUDY_TRAIN_FLAGS, study=True)
    finetune_options(p)
    p.add_argument("--retrain", action="store_true", help="train a new base model even if one is saved")
    precision_option(p, TrainConfig().precision, study=True)  # FinetuneConfig's default is the same
    p.set_defaults(handler=cmd_study, flags=STUDY_FINETUNE_FLAGS, renamed_options=STUDY_RENAMED)


def cmd_study(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    check_name(args)
    train = validated(train_config(args), STUDY_TRAIN_FLAGS, args)
    finetune = validated(finetune_config(args), args.flags, args)
    store = store_of(args)
    given = [STUDY_TRAIN_FLAGS[f][0] for f in TRAIN_FLAGS if getattr(args, f) is not None]
    if given and not args.retrain and store.has_base():
        warn(
            f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect: the saved base model in "
            f"{store.base_dir} is reused. Add --retrain to train a new one with {'it' if len(given) == 1 else 'them'}."
        )
    data = data_of(args)
    say_precision(finetune.precision, finetune.device, args.flags, args)
    bar = ProgressBar()
    started = time.perf_counter()
    try:
        result = run_study(
            store,
            data,
            train,
            finetune,
            args.name,
            args.retrain,
            bar,
            stop,
            log=lambda m: (bar.close(), say(m)),
            overwrite=args.overwrite,
            fresh_name=not args.overwrite,  # as the dashboard's study: without --name, a saved adapter stays
        )
    finally:
        bar.close()
    result["seconds"]["total"] = time.perf_counter() - started
    study_report(result, str(store.root))
    if not (result["base_weights_unchanged"] and result["disabled_adapter_equals_base"]):
        if args.json is not None:  # main writes the JSON of successful commands only
            atomic_write_json(args.json, result)
        raise CheckFailed("the study's own checks failed (see step 5 above); the adapter was saved as trained")
    return result
