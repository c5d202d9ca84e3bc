"""Command line for the whole study.

    python -m lora_core study                 # train (or reuse) the base, fine-tune its weakest digit, prove it
    python -m lora_core train --epochs 1
    python -m lora_core evaluate              # the newest saved adapter beside the base (--adapter, --base-only)
    python -m lora_core finetune --digit 9 --rank 8 --replay 0.5 --name my-adapter
    python -m lora_core inspect --adapter digit-9
    python -m lora_core prove --steps 20        # live check: LoRA steps leave W bit-identical, a control moves it
    python -m lora_core predict my-digits/    # every PNG/JPEG in the folder
    python -m lora_core experiment rotate:45  # LoRA, full fine-tuning and the last layer side by side on a task
    python -m lora_core analyze               # the LoRA paper's analysis of three adapters, and training's memory
    python -m lora_core combine --adapters digit-9:1,rotate-45:0.5  # two adapters at once, each with a weight

Every command takes --json PATH. A mistake prints one line, `error: <option>: <what is wrong>`, and exits
with status 2. Each command is a module of this package that adds its own subparser (`register`) and handles
it; options.py holds the options and checks they share, common.py the work they share, render.py the text.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lora_core.cli import (
    analyze,
    combine,
    evaluate,
    experiment,
    finetune,
    inspect,
    mydigits,
    predict,
    prove,
    study,
    sweep,
    train,
)
from lora_core.cli.options import EXIT_USAGE, Parser, UsageError, common_options, unrecognized, usage_error
from lora_core.errors import (
    AdapterExistsError,
    ArtifactError,
    ConfigError,
    DataError,
    ImageError,
    LoraCoreError,
    RunStopped,
    TrainingDiverged,
)
from lora_core.store.fileio import atomic_write_json

__all__ = ["EXIT_USAGE", "build_parser", "main"]

# In the order `--help` lists them; each module's register(subparsers, common) adds its subparser, with the
# handler and the option names its errors use.
COMMANDS = (train, evaluate, finetune, inspect, prove, predict, study, experiment, sweep, analyze, combine, mydigits)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m lora_core", description="LoRA on MNIST: train, fine-tune, evaluate, inspect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = common_options()
    for command in COMMANDS:
        command.register(sub, common)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    args, extras = build_parser().parse_known_args(argv)
    if extras:
        raise unrecognized(extras, getattr(args, "renamed_options", {}))
    args.argv = argv
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    handler: Callable[[argparse.Namespace, threading.Event], dict[str, Any]] = args.handler
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this step (Ctrl-C again to abort)...", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, request_stop)
    try:
        if args.json is not None and str(args.json) != "-":  # "-": mydigits prints its JSON instead
            _check_writable(args.json)  # before the run: a long run must not end in a file it cannot write
        result = handler(args, stop)
        if args.json is not None:
            try:
                atomic_write_json(args.json, result)
            except OSError as exc:
                return _fail(f"--json: cannot write {args.json} ({exc.strerror or exc})", 1)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AdapterExistsError as exc:
        return _fail(
            f"--name: an adapter called {exc.name!r} is saved already; give another name with --name, "
            "or replace it with --overwrite",
            EXIT_USAGE,
        )
    except ConfigError as exc:
        return _fail(str(usage_error(exc, args.flags, argv)), EXIT_USAGE)
    except (ArtifactError, ImageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except (TrainingDiverged, DataError, LoraCoreError) as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _output_closed()
    except OSError as exc:  # the disk is full, a folder is read-only, ...: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _check_writable(path: Path) -> None:
    """Refuse a --json path that cannot be written, by creating (and removing) a file beside it."""
    if path.is_dir():
        raise ConfigError("--json", f"{path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError("--json", f"cannot write {path} ({exc.strerror or exc})") from None


def _output_closed() -> int:
    """The reader of our output went away (`... | head`): stop quietly, as Python's documentation advises
    (signal module, "Note on SIGPIPE"): point stdout at devnull so that the flush at exit cannot fail again,
    and exit with status 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status
