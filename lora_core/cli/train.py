"""`python -m lora_core train`: train and save the base model."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import data_of, say_precision, store_of, train_config
from lora_core.cli.options import TRAIN_FLAGS, precision_option, train_options, validated
from lora_core.cli.render import ProgressBar, digit_table, say
from lora_core.lab.study import train_and_save_base
from lora_core.numbers import pct
from lora_core.train import TrainConfig


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common], help="train and save the base model")
    train_options(p, TRAIN_FLAGS, study=False)
    precision_option(p, TrainConfig().precision)
    p.set_defaults(handler=cmd_train, flags=TRAIN_FLAGS)


def cmd_train(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    config = validated(train_config(args), TRAIN_FLAGS, args)
    store = store_of(args)
    data = data_of(args)
    say_precision(config.precision, config.device, TRAIN_FLAGS, args)
    bar = ProgressBar()
    try:
        meta = train_and_save_base(store, data, config, bar, stop)
    finally:
        bar.close()
    m = meta["metrics"]
    say(
        f"Base model saved to {store.base_dir}: test accuracy {pct(m['accuracy'])} "
        f"in {meta['training']['seconds']:.1f} s ({meta['training']['samples_per_s']:,.0f} samples/s)"
    )
    say(digit_table(m))
    stale = [r.name for r in store.list_adapters() if r.base_sha256 and r.base_sha256 != meta["sha256"]]
    if stale:
        say(f"Note: adapters trained on the previous base model can no longer be used: {', '.join(stale)}")
    return {"artifacts": str(store.root), "base": meta}
