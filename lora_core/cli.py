"""Command line for the whole study.

    python -m lora_core study                 # train (or reuse) the base, fine-tune its weakest digit, prove it
    python -m lora_core train --epochs 1
    python -m lora_core evaluate --adapter digit-9
    python -m lora_core finetune --digit 9 --rank 8 --replay 0.5 --name my-adapter
    python -m lora_core inspect --adapter digit-9

Every command takes --json PATH. Bad arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ImageError,
    LoraCoreError,
    RunStopped,
    TrainingDiverged,
)
from .fileio import atomic_write_json
from .model import LAYER_NAMES
from .train import DEVICES, SCHEDULES, FinetuneConfig, Progress, TrainConfig

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    defaults_t, defaults_f = TrainConfig(), FinetuneConfig()
    parser = _Parser(prog="python -m lora_core", description="LoRA on MNIST: train, fine-tune, evaluate, inspect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--artifacts", type=Path, help="artifacts folder (default: $LORA_ARTIFACTS_DIR or ./artifacts)")
    common.add_argument("--data", type=Path, help="MNIST folder (default: $LORA_DATA_DIR or ./data)")
    common.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    common.add_argument("--device", choices=DEVICES, default="auto", help="default: auto (cuda, mps, else cpu)")

    train_opts = _Parser(add_help=False)
    train_opts.add_argument("--epochs", type=_int_arg, default=defaults_t.epochs)
    train_opts.add_argument("--batch-size", type=_int_arg, default=defaults_t.batch_size)
    train_opts.add_argument("--lr", type=_float_arg, default=defaults_t.lr)
    train_opts.add_argument("--lr-schedule", choices=SCHEDULES, default=defaults_t.lr_schedule)
    train_opts.add_argument("--seed", type=_int_arg, default=defaults_t.seed)
    train_opts.add_argument("--hidden", type=_int_arg, nargs=2, metavar=("H1", "H2"), default=list(defaults_t.hidden))

    ft_opts = _Parser(add_help=False)
    ft_opts.add_argument("--digit", type=_int_arg, nargs="+", help="target digit(s); default: the weakest")
    ft_opts.add_argument("--rank", type=_int_arg, default=defaults_f.rank)
    ft_opts.add_argument("--alpha", type=_float_arg, default=defaults_f.alpha)
    ft_opts.add_argument("--targets", nargs="+", choices=LAYER_NAMES, default=list(defaults_f.targets))
    ft_opts.add_argument("--steps", type=_int_arg, default=defaults_f.steps)
    ft_opts.add_argument("--ft-batch-size", dest="ft_batch_size", type=_int_arg, default=defaults_f.batch_size)
    ft_opts.add_argument("--ft-lr", dest="ft_lr", type=_float_arg, default=defaults_f.lr)
    ft_opts.add_argument(
        "--replay",
        type=_float_arg,
        default=defaults_f.replay,
        help="share of each batch drawn from the other digits (0: the tutorials' forgetting)",
    )
    ft_opts.add_argument("--dropout", type=_float_arg, default=defaults_f.dropout)
    ft_opts.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    ft_opts.add_argument("--init", choices=("kaiming", "gaussian"), default=defaults_f.init)
    ft_opts.add_argument("--ft-seed", dest="ft_seed", type=_int_arg, default=defaults_f.seed)
    ft_opts.add_argument("--name", help="adapter name (default: digit-<D>)")

    p = sub.add_parser("train", parents=[common, train_opts], help="train and save the base model")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", parents=[common], help="per-digit accuracy of the base model (and an adapter)")
    p.add_argument("--adapter", help="also evaluate this adapter and show the differences")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("finetune", parents=[common, ft_opts], help="fine-tune and save a LoRA adapter")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter of the same name")
    p.set_defaults(handler=cmd_finetune)
    # finetune's own batch size and learning rate are spelled like train's for this command
    p.add_argument("--batch-size", dest="ft_batch_size", type=_int_arg, default=defaults_f.batch_size)
    p.add_argument("--lr", dest="ft_lr", type=_float_arg, default=defaults_f.lr)
    p.add_argument("--seed", dest="ft_seed", type=_int_arg, default=defaults_f.seed)

    p = sub.add_parser("inspect", parents=[common], help="parameter table, adapter update, unchanged-weights proof")
    p.add_argument("--adapter", help="adapter to inspect")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("predict", parents=[common], help="read digit pictures (PNG, JPEG) with base and adapter")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--adapter", help="adapter to compare with the base (default: the newest saved adapter)")
    p.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="dark ink on light paper: auto-detected from the border by default",
    )
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("study", parents=[common, train_opts, ft_opts], help="the whole study, end to end")
    p.add_argument("--retrain", action="store_true", help="train a new base model even if one is saved")
    p.set_defaults(handler=cmd_study)
    return parser


# --- helpers ---------------------------------------------------------------------------------------
def _say(text: str = "") -> None:
    print(text, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


class _ProgressBar:
    """A tqdm bar fed by lora_core's progress callback."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase = ""

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if self.bar is None or p.phase != self.phase:
            self.close()
            self.phase = p.phase
            self.bar = tqdm(
                total=p.total_steps, desc=p.phase, unit="step", file=sys.stderr, mininterval=0.5, dynamic_ncols=True
            )
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix(loss=f"{p.loss:.4f}", samples_s=f"{p.samples_per_s:,.0f}", refresh=False)
        if p.step == p.total_steps:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _store(args: argparse.Namespace) -> Any:
    from .storage import ArtifactStore

    return ArtifactStore(args.artifacts)


def _data(args: argparse.Namespace) -> Any:
    from .data import load_mnist

    return load_mnist(args.data, log=lambda m: _say(m))


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        device=args.device,
        hidden=tuple(args.hidden),
    )


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        digits=tuple(args.digit) if args.digit else None,
        rank=args.rank,
        alpha=args.alpha,
        targets=tuple(args.targets),
        steps=args.steps,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        replay=args.replay,
        dropout=args.dropout,
        use_rslora=args.rslora,
        init=args.init,
        seed=args.ft_seed,
        device=args.device,
    )


def _check_name(args: argparse.Namespace) -> None:
    if args.name is not None:
        from .lora import validate_adapter_name

        validate_adapter_name(args.name)


def _digit_table(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    rows = []
    for d in range(10):
        row: list[Any] = [d, _pct(before["per_digit_accuracy"][d]), before["wrong_counts"][d]]
        if after is not None:
            row += [
                _pct(after["per_digit_accuracy"][d]),
                after["wrong_counts"][d],
                after["wrong_counts"][d] - before["wrong_counts"][d],
            ]
        rows.append(row)
    headers = ["digit", "accuracy", "wrong"]
    if after is not None:
        headers = ["digit", "base acc", "base wrong", "adapted acc", "adapted wrong", "change"]
    return table(headers, rows)


def _param_table(params: dict[str, Any]) -> str:
    rows = [
        [
            r["layer"],
            "x".join(map(str, r["W_shape"])),
            r["W_params"],
            "x".join(map(str, r["b_shape"])),
            r["b_params"],
            "x".join(map(str, r["A_shape"])) if r["A_shape"] else "-",
            r["A_params"],
            "x".join(map(str, r["B_shape"])) if r["B_shape"] else "-",
            r["B_params"],
        ]
        for r in params["layers"]
    ]
    rows.append(
        [
            "total",
            "",
            sum(r["W_params"] for r in params["layers"]),
            "",
            sum(r["b_params"] for r in params["layers"]),
            "",
            sum(r["A_params"] for r in params["layers"]),
            "",
            sum(r["B_params"] for r in params["layers"]),
        ]
    )
    text = table(["layer", "W", "W params", "b", "b params", "A", "A params", "B", "B params"], rows)
    return (
        f"{text}\nbase parameters {params['base_params']:,}; LoRA adds {params['lora_params']:,} "
        f"({params['lora_percent']:.3f}% of the base)"
    )


def _proof_table(proof: list[dict[str, Any]]) -> str:
    rows = [
        [p["tensor"], f"{p['max_abs_diff']:.1e}" if p["max_abs_diff"] else "0", "yes" if p["identical"] else "NO"]
        for p in proof
    ]
    return table(["base tensor", "max |now - saved|", "bit-identical"], rows)


# --- commands --------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from .study import train_and_save_base

    config = _train_config(args)
    config.validate()
    store = _store(args)
    data = _data(args)
    bar = _ProgressBar()
    try:
        meta = train_and_save_base(store, data, config, bar, stop)
    finally:
        bar.close()
    m = meta["metrics"]
    _say(
        f"Base model saved to {store.base_dir}: test accuracy {_pct(m['accuracy'])} "
        f"in {meta['training']['seconds']:.1f} s ({meta['training']['samples_per_s']:,.0f} samples/s)"
    )
    _say(_digit_table(m))
    stale = [r.name for r in store.list_adapters() if r.base_sha256 and r.base_sha256 != meta["sha256"]]
    if stale:
        _say(f"Note: adapters trained on the previous base model can no longer be used: {', '.join(stale)}")
    return {"artifacts": str(store.root), "base": meta}


def cmd_evaluate(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from .evaluate import compare, evaluate
    from .study import load_base_for_lora

    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    if args.adapter:
        store.load_adapter(lora_model, args.adapter, base.fingerprint)
    data = _data(args)
    before = evaluate(base.model, data.test_x, data.test_y)
    result: dict[str, Any] = {"artifacts": str(store.root), "base": before.summary()}
    if not args.adapter:
        _say(f"Base model: test accuracy {_pct(before.accuracy)}; weakest digit {before.weakest_digit}")
        _say(_digit_table(result["base"]))
        return result
    lora_model.set_adapter(args.adapter)
    after = evaluate(lora_model, data.test_x, data.test_y)
    result["adapter"] = args.adapter
    result["adapted"] = after.summary()
    result["difference"] = compare(before, after)
    _say(
        f"Base {_pct(before.accuracy)} -> adapter {args.adapter!r} {_pct(after.accuracy)} "
        f"({100 * (after.accuracy - before.accuracy):+.2f} points)"
    )
    _say(_digit_table(result["base"], result["adapted"]))
    return result


def cmd_finetune(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from .study import finetune_and_save_adapter, load_base_for_lora

    _check_name(args)
    config = _finetune_config(args)
    config.validate()
    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    config.validate(lora_model.model)
    data = _data(args)
    bar = _ProgressBar()
    try:
        outcome = finetune_and_save_adapter(store, base, lora_model, data, config, args.name, args.overwrite, bar, stop)
    finally:
        bar.close()
    before, after = outcome.before.summary(), outcome.after.summary()
    digits = ", ".join(map(str, outcome.digits))
    _say(
        f"Adapter {outcome.name!r} saved to {outcome.path} ({outcome.trainable_params:,} trainable parameters, "
        f"{outcome.seconds:.1f} s)"
    )
    for d in outcome.digits:
        _say(f"Digit {d}: {_pct(before['per_digit_accuracy'][d])} -> {_pct(after['per_digit_accuracy'][d])}")
    _say(f"Overall: {_pct(before['accuracy'])} -> {_pct(after['accuracy'])} (target digits: {digits})")
    _say(_digit_table(before, after))
    return {"artifacts": str(store.root), "adapter": outcome.to_dict(), "base": before, "adapted": after}


def cmd_inspect(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    import torch

    from .params import parameter_table
    from .study import base_weights_proof, load_base_for_lora

    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    config = None
    if args.adapter:
        record = store.load_adapter(lora_model, args.adapter, base.fingerprint)
        config = record.config
        lora_model.set_adapter(args.adapter)
    params = parameter_table(lora_model, config).to_dict()
    meta = base.meta
    _say(
        f"Base model {store.base_dir}: {meta['parameters']:,} parameters, test accuracy "
        f"{_pct(meta['metrics']['accuracy'])}, trained {meta['created']}"
    )
    _say(_param_table(params))
    result: dict[str, Any] = {"artifacts": str(store.root), "parameters": params, "base": meta}
    if args.adapter and config is not None:
        proof = base_weights_proof(store, lora_model)
        updates = {}
        for layer_name, layer in lora_model.lora_layers().items():
            if args.adapter in layer.lora_A:
                delta = layer.delta_weight(args.adapter).detach()
                updates[layer_name] = {
                    "frobenius_norm": float(delta.norm()),
                    "rank": int(torch.linalg.matrix_rank(delta)),
                }
        _say(
            f"\nAdapter {args.adapter!r}: r={config.r}, alpha={config.alpha:g}, scale={config.scale:g}, "
            f"targets {', '.join(config.target_modules)}"
        )
        _say(
            table(
                ["layer", "|scale * B A|_F", "rank of update"],
                [[k, v["frobenius_norm"], v["rank"]] for k, v in updates.items()],
            )
        )
        _say("\nBase weights against the checkpoint saved before fine-tuning:")
        _say(_proof_table(proof))
        result.update(
            {
                "adapter": args.adapter,
                "adapter_config": config.to_dict(),
                "updates": updates,
                "weights_proof": proof,
                "base_weights_unchanged": all(p["identical"] for p in proof),
            }
        )
    return result


def cmd_predict(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from .preprocess import load_image, predict_probabilities, prepare_digit
    from .study import load_base_for_lora

    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    name = args.adapter
    if name is None:
        usable = [r for r in store.list_adapters() if r.metrics and r.base_sha256 == base.fingerprint]
        name = max(usable, key=lambda r: str(r.metrics.get("created", "")), default=None)
        name = name.name if name else None
    if name is not None:
        store.load_adapter(lora_model, name, base.fingerprint)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    results = []
    for path in args.images:
        prepared = prepare_digit(load_image(path), invert)
        if prepared is None:
            _say(f"{path}: no digit found (the picture is empty or has almost no ink)")
            results.append({"image": str(path), "digit_found": False})
            continue
        lora_model.set_adapter(None)
        base_p = predict_probabilities(lora_model, prepared)
        entry: dict[str, Any] = {
            "image": str(path),
            "digit_found": True,
            "inverted": prepared.inverted,
            "base": {"prediction": int(base_p.argmax()), "probabilities": base_p.tolist()},
        }
        line = f"{path}: base {int(base_p.argmax())} ({base_p.max():.1%})"
        if name is not None:
            lora_model.set_adapter(name)
            ad_p = predict_probabilities(lora_model, prepared)
            entry["adapted"] = {"prediction": int(ad_p.argmax()), "probabilities": ad_p.tolist()}
            line += f", adapter {name!r} {int(ad_p.argmax())} ({ad_p.max():.1%})"
            if ad_p.argmax() != base_p.argmax():
                line += "  <- they disagree"
        _say(line)
        results.append(entry)
    return {"artifacts": str(store.root), "adapter": name, "predictions": results}


def cmd_study(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from .study import run_study

    _check_name(args)
    train_config, ft_config = _train_config(args), _finetune_config(args)
    train_config.validate()
    ft_config.validate()
    store = _store(args)
    data = _data(args)
    bar = _ProgressBar()
    started = time.perf_counter()
    try:
        result = run_study(
            store,
            data,
            train_config,
            ft_config,
            args.name,
            args.retrain,
            bar,
            stop,
            log=lambda m: (bar.close(), _say(m)),
        )
    finally:
        bar.close()
    result["seconds"]["total"] = time.perf_counter() - started
    tm = result["train_metrics"]
    d = result["target_digit"]
    base, adapted, adapter = result["base"], result["adapted"], result["adapter"]
    _say(
        f"\n1. Base model: {tm['epochs']} epoch(s), batch {tm['batch_size']}, lr {tm['lr']:g}, "
        f"{tm['seconds']:.1f} s at {tm['samples_per_s']:,.0f} samples/s, final loss {tm['final_loss']:.4f}"
    )
    _say(f"   Test accuracy {_pct(base['accuracy'])}; weakest digit {d} at {_pct(base['per_digit_accuracy'][d])}")
    _say(
        f"\n2. LoRA adapter {adapter['name']!r} on digit {d}: rank {adapter['rank']}, alpha {adapter['alpha']:g}, "
        f"replay {adapter['finetune']['replay']:g}, {adapter['finetune']['steps']} steps, {adapter['seconds']:.1f} s"
    )
    _say(
        f"   Digit {d}: {_pct(base['per_digit_accuracy'][d])} -> {_pct(adapted['per_digit_accuracy'][d])}; "
        f"overall {_pct(base['accuracy'])} -> {_pct(adapted['accuracy'])}"
    )
    _say("\n3. Wrong test images per digit, before and after:")
    _say(_digit_table(base, adapted))
    _say("\n4. Parameters:")
    _say(_param_table(result["parameters"]))
    _say("\n5. Base weights after fine-tuning against the checkpoint saved before it:")
    _say(_proof_table(result["weights_proof"]))
    verdict = "UNCHANGED" if result["base_weights_unchanged"] else "CHANGED"
    _say(
        f"   Base weights {verdict}; adapter disabled gives the base logits exactly: "
        f"{'yes' if result['disabled_adapter_equals_base'] else 'NO'}"
    )
    _say(f"\nArtifacts in {store.root}; {result['seconds']['total']:.1f} s in all")
    return result


# --- entry point -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        if args.json is not None and args.json.is_dir():
            raise ConfigError("--json", f"{args.json} is a folder; give a file path")
        result = handler(args, stop)
        if args.json is not None:
            atomic_write_json(args.json, result)
    except (ConfigError, ArtifactError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except (TrainingDiverged, DataError, LoraCoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0
