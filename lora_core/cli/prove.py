"""`python -m lora_core prove`: the live check that LoRA steps leave every base tensor bit-identical."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from lora_core.cli.common import CheckFailed, data_of, store_of
from lora_core.cli.options import UsageError, int_arg
from lora_core.cli.render import live_check_tables, say
from lora_core.lab.proof import live_check
from lora_core.lab.study import load_base_for_lora
from lora_core.store.fileio import atomic_write_json

MAX_PROVE_STEPS = 10_000  # the check is meant to take seconds


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "prove",
        parents=[common],
        help="live check: N LoRA steps leave every base tensor bit-identical; the same steps of full "
        "fine-tuning (the control) change them",
    )
    p.add_argument("--steps", type=int_arg, default=20, help="training steps of each run (default: 20)")
    p.set_defaults(handler=cmd_prove, flags={"steps": ("--steps",)})


def cmd_prove(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    if isinstance(args.steps, bool) or not 1 <= args.steps <= MAX_PROVE_STEPS:  # before any loading
        raise UsageError(f"--steps: must be a whole number from 1 to {MAX_PROVE_STEPS}, got {args.steps}")
    store = store_of(args)
    base, _ = load_base_for_lora(store, args.device)
    data = data_of(args)
    say(f"Live check on the base model in {store.base_dir} (sha256 {base.fingerprint[:12]})")
    started = time.perf_counter()
    check = live_check(base.model, data, steps=args.steps)
    result = {"artifacts": str(store.root), "base_sha256": base.fingerprint, **check.to_dict()}
    result["seconds"]["wall"] = time.perf_counter() - started
    say(live_check_tables(result))
    if not check.passed:
        if args.json is not None:  # main writes the JSON of successful commands only
            atomic_write_json(args.json, result)
        raise CheckFailed(f"the live check's verdict is {check.verdict}, not PASS (see above)")
    return result
