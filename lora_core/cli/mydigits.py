"""`python -m lora_core mydigits ...`: collect your own handwriting and train the personal adapter.

mydigits add IMAGE... --label D     add drawings (PNG, JPEG) of digit D
mydigits list [--json [PATH]]       the collection by digit (--json alone: JSON on the standard output)
mydigits delete ID                  remove one drawing
mydigits export ZIP / import ZIP    the collection as a zip (import checks every entry, changes nothing if bad)
mydigits train                      fine-tune the personal adapter, print held-out and MNIST results
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_core.cli.options import Parser, UsageError, float_arg, folder_arg, int_arg
from lora_core.cli.render import ProgressBar, say, table, warn
from lora_core.data import load_mnist
from lora_core.errors import ArtifactError, ImageError
from lora_core.lab.mydigits.collection import (
    MAX_ZIP_BYTES,
    MIN_PER_DIGIT,
    MyDigits,
    MyDigitsImportError,
    describe_missing,
    missing,
)
from lora_core.lab.mydigits.personal import (
    NotEnoughDigitsError,
    PersonalSettings,
    check_personal_name_free,
    train_personal,
)
from lora_core.numbers import pct
from lora_core.precision import PRECISIONS
from lora_core.preprocess import load_image, prepare_digit
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.fileio import atomic_write_bytes
from lora_core.train import DEVICES

STDOUT = Path("-")  # `--json` without a path: the JSON goes to the standard output instead of a file

MYDIGITS_FLAGS: dict[str, tuple[str, ...]] = {
    "rank": ("--rank",),
    "alpha": ("--alpha",),
    "steps": ("--steps",),
    "batch_size": ("--batch-size",),
    "lr": ("--lr",),
    "replay": ("--replay",),
    "seed": ("--seed",),
    "holdout_every": ("--holdout-every",),
    "label": ("--label",),
    "writer": ("--writer",),
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """The `mydigits` command and its subcommands. Its options differ from the other commands' (`common`
    is not used): --json may go without a path, and only `mydigits train` reads MNIST and picks a device."""
    common = Parser(add_help=False)
    common.add_argument(
        "--artifacts", type=folder_arg, help="artifacts folder (default: $LORA_ARTIFACTS_DIR or ./artifacts)"
    )
    common.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=STDOUT,
        metavar="PATH",
        help="also write the results to this JSON file; without PATH, print only the JSON",
    )
    p = sub.add_parser(
        "mydigits",
        help="your own handwriting: collect labelled drawings, train a personal adapter",
        description="Collect labelled drawings of your own digits in <artifacts>/mydigits and fine-tune the "
        "personal adapter on them (one in five of each digit is held out to measure it).",
    )
    my = p.add_subparsers(dest="mydigits_command", required=True, parser_class=Parser)

    q = my.add_parser("add", parents=[common], help="add drawings (PNG, JPEG) of one digit")
    q.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="picture files")
    q.add_argument("--label", type=int_arg, required=True, help="the digit drawn, 0 to 9")
    q.add_argument("--writer", help="who drew them (optional)")
    q.set_defaults(handler=_json_out(cmd_add), flags=MYDIGITS_FLAGS)

    q = my.add_parser("list", parents=[common], help="the collection, by digit")
    q.set_defaults(handler=_json_out(cmd_list), flags=MYDIGITS_FLAGS)

    q = my.add_parser("delete", parents=[common], help="remove drawings by id (mydigits list shows them)")
    q.add_argument("ids", nargs="+", metavar="ID")
    q.set_defaults(handler=_json_out(cmd_delete), flags=MYDIGITS_FLAGS)

    q = my.add_parser("export", parents=[common], help="write the collection to a zip file")
    q.add_argument("zip", type=Path, metavar="ZIP")
    q.add_argument("--overwrite", action="store_true", help="replace an existing file")
    q.set_defaults(handler=_json_out(cmd_export), flags=MYDIGITS_FLAGS)

    q = my.add_parser("import", parents=[common], help="add the drawings of an exported zip (checked first)")
    q.add_argument("zip", type=Path, metavar="ZIP")
    q.set_defaults(handler=_json_out(cmd_import), flags=MYDIGITS_FLAGS)

    d = PersonalSettings()
    q = my.add_parser(
        "train",
        parents=[common],
        help="fine-tune the personal adapter on your drawings",
        description="Fine-tune the adapter 'personal' on the training part of your drawings, mixed with MNIST "
        "replay, then compare it with the base model on the held-out drawings and on MNIST's test set.",
    )
    q.add_argument("--data", type=Path, help="MNIST folder (default: $LORA_DATA_DIR or ./data)")
    q.add_argument("--device", choices=DEVICES, default=d.device, help="auto: cuda, then mps, else cpu")
    q.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    q.add_argument("--rank", type=int_arg, default=d.rank)
    q.add_argument("--alpha", type=float_arg, default=d.alpha)
    q.add_argument("--steps", type=int_arg, default=d.steps)
    q.add_argument("--batch-size", type=int_arg, default=d.batch_size)
    q.add_argument("--lr", type=float_arg, default=d.lr)
    q.add_argument("--replay", type=float_arg, default=d.replay, help="share of each batch from MNIST")
    q.add_argument("--seed", type=int_arg, default=d.seed, help="training and the held-out split")
    q.add_argument("--holdout-every", type=int_arg, default=d.holdout_every, help="hold out one in N of each digit")
    q.set_defaults(handler=_json_out(cmd_train), flags=MYDIGITS_FLAGS)


def _json_out(
    command: Callable[[argparse.Namespace, threading.Event], dict[str, Any]],
) -> Callable[[argparse.Namespace, threading.Event], dict[str, Any]]:
    """`--json` without a path: the command prints nothing but its JSON (main then writes no file)."""

    def run(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
        to_stdout = args.json == STDOUT
        if to_stdout:
            args.json = None
            args.quiet = True
        result = command(args, stop)
        if to_stdout:
            print(json.dumps(result, indent=2), flush=True)
        return result

    return run


def _say(args: argparse.Namespace, text: str = "") -> None:
    if not getattr(args, "quiet", False):
        say(text)


def _collection(args: argparse.Namespace) -> Any:
    return MyDigits(ArtifactStore(args.artifacts))


def cmd_add(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    collection = _collection(args)
    pictures = [(path, load_image(path)) for path in args.images]  # every file read before anything is added
    for path, picture in pictures:  # and checked: a blank one among several must not leave the others half-added
        if prepare_digit(picture) is None:
            what = "; nothing was added" if len(pictures) > 1 else ""
            raise ImageError(f"{path}: nothing is drawn: the picture is empty or has almost no ink{what}")
    added = []
    for path, picture in pictures:
        try:
            digit = collection.add(picture, args.label, source="cli", writer=args.writer)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from exc
        added.append(digit.to_dict())
        _say(args, f"{path}: added as {digit.id} (a {digit.label})")
    counts = collection.counts()
    _say(args, f"The collection holds {sum(counts.values())} drawings; {args.label}s: {counts[args.label]}")
    return {"artifacts": str(collection.store.root), "added": added, "counts": counts}


def cmd_list(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    collection = _collection(args)
    digits = collection.list()
    counts = collection.counts()
    lacking = missing(counts)
    _say(args, f"My digits in {collection.folder}: {len(digits)} drawings")
    _say(args, table(["digit", *map(str, range(10))], [["drawings", *(counts[d] for d in range(10))]]))
    for label in range(10):
        ids = [d.id for d in digits if d.label == label]
        if ids:
            _say(args, f"{label}: {', '.join(ids)}")
    if lacking:
        _say(
            args, f"To train the personal adapter ({MIN_PER_DIGIT} of each digit at least): {describe_missing(lacking)}"
        )
    return {
        "artifacts": str(collection.store.root),
        "digits": [d.to_dict() for d in digits],
        "counts": {str(k): v for k, v in counts.items()},
        "missing": {str(k): v for k, v in lacking.items()},
    }


def cmd_delete(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    collection = _collection(args)
    known = {d.id for d in collection.list()}
    ids = list(dict.fromkeys(args.ids))  # an id given twice is deleted once (the second would fail half-way)
    unknown = [i for i in ids if i not in known]
    if unknown:  # refuse before deleting any
        raise ArtifactError(f"no drawing {unknown[0]!r} in {collection.folder} (mydigits list shows them)")
    for digit_id in ids:
        collection.delete(digit_id)
        _say(args, f"Deleted {digit_id}")
    return {"artifacts": str(collection.store.root), "deleted": ids}


def cmd_export(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    if args.zip.is_dir():
        raise UsageError(f"ZIP: {args.zip} is a folder; give a file name such as my-digits.zip")
    if args.zip.exists() and not args.overwrite:
        raise UsageError(f"ZIP: {args.zip} exists already; choose another name or add --overwrite")
    collection = _collection(args)
    export = collection.export_zip()
    try:
        atomic_write_bytes(args.zip, export.data)
    except OSError as exc:
        raise UsageError(f"ZIP: cannot write {args.zip} ({exc.strerror or exc})") from None
    n = len(export.exported)
    _say(args, f"Exported {n} drawings to {args.zip} ({len(export.data):,} bytes)")
    for digit, why in export.skipped:
        warn(f"left out drawing {digit.id}: {why}; `mydigits delete {digit.id}` removes it from the collection")
    return {
        "artifacts": str(collection.store.root),
        "zip": str(args.zip),
        "drawings": n,
        "bytes": len(export.data),
        "skipped": [{"id": digit.id, "reason": why} for digit, why in export.skipped],
    }


def cmd_import(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    if not args.zip.is_file():  # a wrong argument (status 2, as `add` with a missing picture), not a bad zip
        raise UsageError(f"{args.zip}: no such file")
    size = args.zip.stat().st_size
    if size > MAX_ZIP_BYTES:
        raise MyDigitsImportError(f"{args.zip} is {size / 2**20:.1f} MiB, more than {MAX_ZIP_BYTES // 2**20} MiB")
    collection = _collection(args)
    try:
        added = collection.import_zip(args.zip.read_bytes())
    except MyDigitsImportError as exc:
        raise MyDigitsImportError(f"{args.zip}: {exc}; nothing was imported") from exc
    counts = collection.counts()
    _say(args, f"Imported {len(added)} drawings from {args.zip}; the collection holds {sum(counts.values())}")
    return {"artifacts": str(collection.store.root), "imported": [d.to_dict() for d in added], "counts": counts}


def cmd_train(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    settings = PersonalSettings(
        rank=args.rank,
        alpha=args.alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        replay=args.replay,
        seed=args.seed,
        holdout_every=args.holdout_every,
        device=args.device,
        precision=args.precision,
    )
    settings.validate()  # a wrong option first, before what the collection lacks
    store = ArtifactStore(args.artifacts)
    collection = _collection(args)
    lacking = missing(collection.counts(), settings.min_per_digit)
    if lacking:  # before loading MNIST: the answer is known already
        raise NotEnoughDigitsError(lacking)
    store.base_meta()  # no base model: say so before loading MNIST
    check_personal_name_free(store)
    data = load_mnist(args.data, log=lambda text: _say(args, text))
    bar = None if getattr(args, "quiet", False) else ProgressBar()
    try:
        result = train_personal(store, data, settings, progress=bar, stop=stop)
    finally:
        if bar is not None:
            bar.close()
    _say(
        args,
        f"Personal adapter {result.adapter!r} trained on {result.trained} drawings in {result.seconds:.1f} s; "
        f"{result.heldout} held out",
    )
    rows = [
        [r["id"], r["label"], r["base"], r["personal"], "fixed" if r["base"] != r["label"] == r["personal"] else ""]
        for r in result.heldout_rows
    ]
    _say(args, table(["held-out drawing", "digit", "base", "personal", ""], rows))
    _say(
        args,
        f"Held-out drawings: base {pct(result.base_heldout_accuracy)} ({result.base_errors} wrong) -> personal "
        f"{pct(result.personal_heldout_accuracy)} ({result.personal_errors} wrong)",
    )
    _say(
        args,
        f"MNIST test set: base {pct(result.mnist_before)} -> personal {pct(result.mnist_after)} "
        f"({100 * (result.mnist_after - result.mnist_before):+.2f} points)",
    )
    return {"artifacts": str(store.root), **result.to_dict()}
