"""The personal adapter against synthetic writers: `python -m benchmarks.personal [--artifacts DIR]`.

For each writer of benchmarks/writers.py: draw N of each digit offline, add them to "my digits" in a
temporary copy of the artifacts folder (the real trained base model), train the personal adapter exactly
as the dashboard and the CLI do (lora_core.lab.mydigits.personal.train_personal), and print per writer the base model's
and the personal adapter's mistakes on the held-out drawings of the split and on fresh drawings of the same
writer (never collected), MNIST test accuracy before and after, and the training time. Without --artifacts
a base model is trained first with the default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.writers import WRITERS, Writer, draw
from lora_core.data import MnistData, load_mnist
from lora_core.evaluate import predict
from lora_core.lab.mydigits.collection import MyDigits
from lora_core.lab.mydigits.personal import PERSONAL_ADAPTER, PersonalResult, PersonalSettings, train_personal
from lora_core.lora import LoraModel
from lora_core.preprocess import prepare_digit
from lora_core.store.artifacts import ArtifactStore

FRESH_SAMPLES = 10  # fresh drawings per digit, never collected: a larger test than the split's held-out part
FRESH_OFFSET = 1000  # sample numbers of the fresh drawings (the collected ones count from 0)


def _fresh_errors(store: ArtifactStore, w: Writer) -> tuple[int, int, int]:
    """(drawings, base mistakes, personal mistakes) on fresh drawings of writer `w`."""
    base = store.load_base("cpu")
    lora_model = LoraModel(base.model)
    store.load_adapter(lora_model, PERSONAL_ADAPTER, base.fingerprint)
    tensors, labels = [], []
    for digit in range(10):
        for sample in range(FRESH_OFFSET, FRESH_OFFSET + FRESH_SAMPLES):
            prepared = prepare_digit(draw(w, digit, sample))
            assert prepared is not None
            tensors.append(prepared.tensor)
            labels.append(digit)
    x, y = torch.cat(tensors), torch.tensor(labels)
    with lora_model.adapters_disabled():
        base_wrong = int((predict(lora_model, x).argmax(1) != y).sum())
    lora_model.set_adapter(PERSONAL_ADAPTER)
    personal_wrong = int((predict(lora_model, x).argmax(1) != y).sum())
    return len(labels), base_wrong, personal_wrong


def run_writer(base_dir: Path, data: MnistData, w: Writer, per_digit: int, settings: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"personal-{w.name}-") as tmp:
        store = ArtifactStore(Path(tmp) / "artifacts")
        shutil.copytree(base_dir, store.base_dir)
        collection = MyDigits(store)
        for digit in range(10):
            for sample in range(per_digit):
                collection.add(draw(w, digit, sample), digit, source="guided", writer=w.name)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        result: PersonalResult = train_personal(store, data, PersonalSettings(**settings))
        wall = time.perf_counter() - started  # with loading the base, the evaluations and saving
        load_after = os.getloadavg()[0]
        fresh, fresh_base, fresh_personal = _fresh_errors(store, w)
    return {
        "writer": w.name,
        "trained": result.trained,
        "heldout": result.heldout,
        "base_errors": result.base_errors,
        "personal_errors": result.personal_errors,
        "fresh": fresh,
        "fresh_base_errors": fresh_base,
        "fresh_personal_errors": fresh_personal,
        "mnist_before": result.mnist_before,
        "mnist_after": result.mnist_after,
        "seconds": result.seconds,
        "wall_seconds": wall,
        "load": [round(load_before, 2), round(load_after, 2)],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'writer':<14}{'train':>6}{'held':>5}  {'held-out errors':>16}  {'fresh errors':>14}  "
        f"{'MNIST before':>13}{'after':>8}{'delta':>8}{'train s':>9}{'wall s':>7}{'load':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['writer']:<14}{r['trained']:>6}{r['heldout']:>5}  "
            f"{r['base_errors']:>7} -> {r['personal_errors']:<5}  "
            f"{r['fresh_base_errors']:>5}/{r['fresh']:<3}-> {r['fresh_personal_errors']:<3}  "
            f"{100 * r['mnist_before']:>12.2f}%{100 * r['mnist_after']:>7.2f}%"
            f"{100 * (r['mnist_after'] - r['mnist_before']):>+8.2f}{r['seconds']:>9.1f}{r['wall_seconds']:>7.1f}"
            f"{r['load'][1]:>6.1f}"
        )
    totals = {k: sum(r[k] for r in rows) for k in ("base_errors", "personal_errors", "heldout")}
    fresh = {k: sum(r[k] for r in rows) for k in ("fresh", "fresh_base_errors", "fresh_personal_errors")}
    lines.append(
        f"{'all':<14}{'':>6}{totals['heldout']:>5}  {totals['base_errors']:>7} -> {totals['personal_errors']:<5}  "
        f"{fresh['fresh_base_errors']:>5}/{fresh['fresh']:<3}-> {fresh['fresh_personal_errors']:<3}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = PersonalSettings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.personal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, help="artifacts folder with a trained base (default: train one)")
    parser.add_argument("--per-digit", type=int, default=10, help="drawings of each digit collected per writer")
    parser.add_argument("--writers", help="comma-separated writer names (default: all)")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--replay", type=float, default=d.replay)
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    chosen = [w for w in WRITERS if not args.writers or w.name in args.writers.split(",")]
    if not chosen:
        parser.error(f"no writer matches {args.writers!r}; known: {', '.join(w.name for w in WRITERS)}")
    data = load_mnist()
    with tempfile.TemporaryDirectory(prefix="personal-base-") as tmp:
        if args.artifacts is None:
            from lora_core.lab.study import train_and_save_base

            print("Training a base model with the default settings...", flush=True)
            train_and_save_base(ArtifactStore(tmp), data)
            base_dir = ArtifactStore(tmp).base_dir
        else:
            base_dir = ArtifactStore(args.artifacts).base_dir
        settings = {
            "steps": args.steps,
            "lr": args.lr,
            "replay": args.replay,
            "rank": args.rank,
            "batch_size": args.batch_size,
            "augment": not args.no_augment,
            "seed": args.seed,
        }
        print(f"Settings: {settings}, {args.per_digit} drawings per digit, threads {torch.get_num_threads()}")
        rows = []
        started = time.perf_counter()
        for w in chosen:
            rows.append(run_writer(base_dir, data, w, args.per_digit, settings))
            print(
                f"  {w.name}: held-out {rows[-1]['base_errors']} -> {rows[-1]['personal_errors']} of "
                f"{rows[-1]['heldout']}, fresh {rows[-1]['fresh_base_errors']} -> "
                f"{rows[-1]['fresh_personal_errors']}, {rows[-1]['seconds']:.1f} s",
                flush=True,
            )
    print()
    print(table(rows))
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average {' '.join(map(str, os.getloadavg()))}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
