"""`python -m lora_core finetune`: fine-tune and save a LoRA adapter."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import data_of, finetune_config, say_precision, store_of
from lora_core.cli.options import (
    FINETUNE_FLAGS,
    check_name,
    finetune_options,
    float_arg,
    int_arg,
    precision_option,
    validated,
)
from lora_core.cli.render import ProgressBar, digit_table, say
from lora_core.lab.proof import pissa_sentence, quantized_sentence
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.numbers import pct
from lora_core.train import SCHEDULES, FinetuneConfig


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("finetune", parents=[common], help="fine-tune and save a LoRA adapter")
    finetune_options(p)
    # finetune's own batch size, learning rate and seed may also be spelled like train's
    d = FinetuneConfig()
    p.add_argument("--batch-size", dest="ft_batch_size", type=int_arg, default=d.batch_size)
    p.add_argument("--lr", dest="ft_lr", type=float_arg, default=d.lr)
    p.add_argument("--lr-schedule", dest="ft_lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    p.add_argument("--seed", dest="ft_seed", type=int_arg, default=d.seed)
    precision_option(p, d.precision)
    p.set_defaults(handler=cmd_finetune, flags=FINETUNE_FLAGS)


def cmd_finetune(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    check_name(args)
    config = validated(finetune_config(args), args.flags, args)
    store = store_of(args)
    base, lora_model = load_base_for_lora(store, args.device)
    validated(config, args.flags, args, lora_model.model)
    data = data_of(args)
    say_precision(config.precision, config.device, args.flags, args)
    bar = ProgressBar()
    try:
        outcome = finetune_and_save_adapter(store, base, lora_model, data, config, args.name, args.overwrite, bar, stop)
    finally:
        bar.close()
    before, after = outcome.before.summary(), outcome.after.summary()
    digits = ", ".join(map(str, outcome.digits))
    say(
        f"Adapter {outcome.name!r} saved to {outcome.path} ({outcome.trainable_params:,} trainable parameters, "
        f"{outcome.seconds:.1f} s)"
    )
    pissa = outcome.metrics.get("pissa")
    if pissa:
        say(pissa_sentence(pissa))
    quantized = outcome.metrics.get("quantized_base")
    if quantized:
        say(quantized_sentence(quantized))
    for d in outcome.digits:
        say(f"Digit {d}: {pct(before['per_digit_accuracy'][d])} -> {pct(after['per_digit_accuracy'][d])}")
    say(f"Overall: {pct(before['accuracy'])} -> {pct(after['accuracy'])} (target digits: {digits})")
    say(digit_table(before, after))
    return {"artifacts": str(store.root), "adapter": outcome.to_dict(), "base": before, "adapted": after}
