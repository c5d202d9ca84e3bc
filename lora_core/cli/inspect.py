"""`python -m lora_core inspect`: the parameter table, an adapter's update, its recorded base-tensor hashes."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from lora_core.cli.common import choose_adapter, store_of
from lora_core.cli.options import ADAPTER_FLAGS, adapter_choice
from lora_core.cli.render import param_table, recorded_table, say, table
from lora_core.lab.proof import pissa_rows, pissa_sentence, quantized_rows, quantized_sentence, recorded_check
from lora_core.lab.study import load_base_for_lora
from lora_core.numbers import pct
from lora_core.params import adapter_update_statistics, parameter_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", parents=[common], help="parameter table, adapter update, recorded base-tensor hashes")
    adapter_choice(p, "inspect")
    p.set_defaults(handler=cmd_inspect, flags=ADAPTER_FLAGS)


def cmd_inspect(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    store = store_of(args)
    base, lora_model = load_base_for_lora(store, args.device)
    args.adapter = choose_adapter(args, store, base)
    config = None
    if args.adapter:
        record = store.load_adapter(lora_model, args.adapter, base.fingerprint)
        config = record.config
        lora_model.set_adapter(args.adapter)
    params = parameter_table(lora_model, config).to_dict()
    meta = base.meta
    say(
        f"Base model {store.base_dir}: {meta['parameters']:,} parameters, test accuracy "
        f"{pct(meta['metrics']['accuracy'])}, trained {meta['created']}"
    )
    say(param_table(params))
    result: dict[str, Any] = {"artifacts": str(store.root), "parameters": params, "base": meta}
    if args.adapter and config is not None:
        stats = adapter_update_statistics(lora_model, args.adapter)
        updates = {name: s.to_dict(top=config.r) for name, s in stats.items()}
        say(
            f"\nAdapter {args.adapter!r}: r={config.r}, alpha={config.alpha:g}, scale={config.scale:g}, "
            f"targets {', '.join(config.target_modules)}"
        )
        say(
            table(
                [
                    "layer",
                    "|m (W + sBA) / |W + sBA| - W|_F" if config.use_dora else "|scale * B A|_F",
                    "rank of update",
                    "largest singular value",
                ],
                [
                    [k, v["frobenius_norm"], v["rank"], max(v["singular_values"], default=0.0)]
                    for k, v in updates.items()
                ],
            )
        )
        check = recorded_check(record.metrics, lora_model)
        say("")
        say(recorded_table(check))
        pissa = (record.metrics or {}).get("pissa")
        if pissa:
            say("")
            say(pissa_sentence(pissa))
            rows = pissa_rows(pissa)
            say(table(list(rows[0]), [list(r.values()) for r in rows]))
        quantized = (record.metrics or {}).get("quantized_base")
        if quantized:
            say("")
            say(quantized_sentence(quantized))
            rows = quantized_rows(quantized)
            say(table(list(rows[0]), [list(r.values()) for r in rows]))
        result.update(
            {
                "adapter": args.adapter,
                "adapter_config": config.to_dict(),
                "updates": updates,
                "recorded_check": check.to_dict(),
            }
        )
    return result
