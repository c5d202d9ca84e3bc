"""`python -m lora_core evaluate`: per-digit accuracy of the base model and an adapter."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import choose_adapter, data_of, store_of
from lora_core.cli.options import ADAPTER_FLAGS, adapter_choice
from lora_core.cli.render import digit_table, say
from lora_core.evaluate import compare, evaluate
from lora_core.lab.study import load_base_for_lora
from lora_core.numbers import pct


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="per-digit accuracy of the base model and an adapter")
    adapter_choice(p, "evaluate beside the base model")
    p.set_defaults(handler=cmd_evaluate, flags=ADAPTER_FLAGS)


def cmd_evaluate(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    store = store_of(args)
    base, lora_model = load_base_for_lora(store, args.device)
    name = choose_adapter(args, store, base)
    if name:
        store.load_adapter(lora_model, name, base.fingerprint)
    data = data_of(args)
    before = evaluate(base.model, data.test_x, data.test_y)
    result: dict[str, Any] = {"artifacts": str(store.root), "base": before.summary()}
    if not name:
        say(f"Base model: test accuracy {pct(before.accuracy)}; weakest digit {before.weakest_digit}")
        say(digit_table(result["base"]))
        return result
    lora_model.set_adapter(name)
    after = evaluate(lora_model, data.test_x, data.test_y)
    result["adapter"] = name
    result["adapted"] = after.summary()
    result["difference"] = compare(before, after)
    say(
        f"Base {pct(before.accuracy)} -> adapter {name!r} {pct(after.accuracy)} "
        f"({100 * (after.accuracy - before.accuracy):+.2f} points)"
    )
    say(digit_table(result["base"], result["adapted"]))
    return result
