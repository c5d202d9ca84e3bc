"""What each command does: read the arguments, call lora_core, print the outcome, return it for --json."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lora_core.cli.parser import STUDY_TRAIN_FLAGS, TRAIN_FLAGS, UsageError, usage_error
from lora_core.cli.render import (
    ProgressBar,
    _live_check_tables,
    _param_table,
    _recorded_table,
    digit_table,
    say,
    study_report,
    table,
    warn,
)
from lora_core.errors import ConfigError, ImageError, LoraCoreError
from lora_core.numbers import pct
from lora_core.store.fileio import atomic_write_json
from lora_core.train import FinetuneConfig, TrainConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PROVE_STEPS = 10_000  # the check is meant to take seconds
_R = TypeVar("_R")


# --- helpers ---------------------------------------------------------------------------------------
def _store(args: argparse.Namespace) -> Any:
    from lora_core.store.artifacts import ArtifactStore

    return ArtifactStore(args.artifacts)


def _data(args: argparse.Namespace) -> Any:
    from lora_core.data import load_mnist

    return load_mnist(args.data, log=say)


def _validated(config: Any, flags: dict[str, tuple[str, ...]], args: argparse.Namespace, model: Any = None) -> Any:
    """Validate `config`, naming the option the user typed when a value is wrong."""
    try:
        if model is None:
            config.validate()
        else:
            config.validate(model)
    except ConfigError as exc:
        raise usage_error(exc, flags, args.argv) from exc
    return config


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The base-training settings; options left out (None under study) take TrainConfig's defaults."""
    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_schedule": args.lr_schedule,
        "seed": args.seed,
        "hidden": tuple(args.hidden) if args.hidden is not None else None,
    }
    return TrainConfig(
        device=args.device, precision=args.precision, **{k: v for k, v in given.items() if v is not None}
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
        lr_schedule=args.ft_lr_schedule,
        replay=args.replay,
        dropout=args.dropout,
        use_rslora=args.rslora,
        init=args.init,
        seed=args.ft_seed,
        device=args.device,
        precision=args.precision,
    )


def _say_precision(requested: str, device: str, flags: dict[str, tuple[str, ...]], args: argparse.Namespace) -> None:
    """Print the precision training will use and why (auto's probe runs here, once per process)."""
    from lora_core.precision import resolve_precision
    from lora_core.train import resolve_device

    try:
        choice = resolve_precision(requested, resolve_device(device))
    except ConfigError as exc:
        raise usage_error(exc, flags, args.argv) from exc
    say(f"Precision: {choice.reason} (--precision {requested})")


def _check_name(args: argparse.Namespace) -> None:
    """Refuse a bad --name before any work is done."""
    if args.name is not None:
        from lora_core.lora import validate_adapter_name

        try:
            validate_adapter_name(args.name)
        except ConfigError as exc:
            raise usage_error(exc, {}, args.argv) from exc


def choose_adapter(args: argparse.Namespace, store: Any, base: Any) -> str | None:
    """--adapter NAME, --base-only, or by default the newest saved adapter that fits this base model.

    Says which one is used and how to choose another, so that a plain `evaluate` or `inspect` is never
    silently about the base model alone while adapters are saved.
    """
    if args.adapter:
        check_adapter_here(store, str(args.adapter))
        return str(args.adapter)
    if args.base_only:
        say("The base model alone (--base-only).")
        return None
    records = store.list_adapters()
    usable = [r for r in records if not r.error and r.base_sha256 == base.fingerprint]
    if not usable:
        if records:
            names = ", ".join(r.name for r in records)
            say(f"No saved adapter fits this base model (saved: {names}); showing the base model alone.")
        else:
            say("No adapter is saved yet; showing the base model alone (python -m lora_core finetune makes one).")
        return None
    newest = max(usable, key=lambda r: str((r.metrics or {}).get("created", "")))
    which = "the only" if len(usable) == 1 else "the newest"
    saved = ", ".join(r.name for r in records)
    say(
        f"Adapter {newest.name!r}: {which} saved adapter that fits this base model (saved: {saved}). "
        "Choose another with --adapter NAME, or --base-only for the base model alone."
    )
    return newest.name


def check_adapter_here(store: Any, name: str) -> None:
    """Name the separate base model (<artifacts>/bases/<base>, e.g. unseen-8-9 from `experiment unseen:8,9`)
    that holds adapter `name` when this folder has none of that name: "no adapter called ..." alone would
    puzzle someone who has just seen it saved."""
    from lora_core.errors import ArtifactError
    from lora_core.store.bases import separate_bases

    if store.adapter_exists(name):
        return
    for base_name, other in separate_bases(store).items():
        if other.adapter_exists(name):
            raise ArtifactError(
                f"adapter {name!r} belongs to the separate base model {base_name!r}, not to the base model in "
                f"{store.root} (adapters of different base models cannot be used together); for that base "
                f"model's adapters give --artifacts {other.root}"
            )


def image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its PNG and JPEG pictures, in name order."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ImageError(f"{path} is a folder without PNG or JPEG pictures (.png, .jpg, .jpeg)")
        say(f"{path}: {len(found)} picture{'s' if len(found) > 1 else ''}")
        out += found
    return out


# --- commands --------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.study import train_and_save_base

    config = _validated(_train_config(args), TRAIN_FLAGS, args)
    store = _store(args)
    data = _data(args)
    _say_precision(config.precision, config.device, TRAIN_FLAGS, args)
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


def cmd_evaluate(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.evaluate import compare, evaluate
    from lora_core.lab.study import load_base_for_lora

    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    name = choose_adapter(args, store, base)
    if name:
        store.load_adapter(lora_model, name, base.fingerprint)
    data = _data(args)
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


def cmd_finetune(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora

    _check_name(args)
    config = _validated(_finetune_config(args), args.flags, args)
    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    _validated(config, args.flags, args, lora_model.model)
    data = _data(args)
    _say_precision(config.precision, config.device, args.flags, args)
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
    for d in outcome.digits:
        say(f"Digit {d}: {pct(before['per_digit_accuracy'][d])} -> {pct(after['per_digit_accuracy'][d])}")
    say(f"Overall: {pct(before['accuracy'])} -> {pct(after['accuracy'])} (target digits: {digits})")
    say(digit_table(before, after))
    return {"artifacts": str(store.root), "adapter": outcome.to_dict(), "base": before, "adapted": after}


def cmd_inspect(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.proof import recorded_check
    from lora_core.lab.study import load_base_for_lora
    from lora_core.params import adapter_update_statistics, parameter_table

    store = _store(args)
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
    say(_param_table(params))
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
                ["layer", "|scale * B A|_F", "rank of update", "largest singular value"],
                [
                    [k, v["frobenius_norm"], v["rank"], max(v["singular_values"], default=0.0)]
                    for k, v in updates.items()
                ],
            )
        )
        check = recorded_check(record.metrics, lora_model)
        say("")
        say(_recorded_table(check))
        result.update(
            {
                "adapter": args.adapter,
                "adapter_config": config.to_dict(),
                "updates": updates,
                "recorded_check": check.to_dict(),
            }
        )
    return result


class CheckFailed(LoraCoreError):
    """A check ran and failed (`prove` not PASS, or the study's weights comparison): exit status 1."""


def cmd_prove(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.proof import live_check
    from lora_core.lab.study import load_base_for_lora

    if isinstance(args.steps, bool) or not 1 <= args.steps <= MAX_PROVE_STEPS:  # before any loading
        raise UsageError(f"--steps: must be a whole number from 1 to {MAX_PROVE_STEPS}, got {args.steps}")
    store = _store(args)
    base, _ = load_base_for_lora(store, args.device)
    data = _data(args)
    say(f"Live check on the base model in {store.base_dir} (sha256 {base.fingerprint[:12]})")
    started = time.perf_counter()
    check = live_check(base.model, data, steps=args.steps)
    result = {"artifacts": str(store.root), "base_sha256": base.fingerprint, **check.to_dict()}
    result["seconds"]["wall"] = time.perf_counter() - started
    say(_live_check_tables(result))
    if not check.passed:
        if args.json is not None:  # main writes the JSON of successful commands only
            atomic_write_json(args.json, result)
        raise CheckFailed(f"the live check's verdict is {check.verdict}, not PASS (see above)")
    return result


def cmd_predict(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.study import load_base_for_lora
    from lora_core.preprocess import load_image, predict_probabilities, prepare_digit

    paths = image_paths(args.images)
    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    name = choose_adapter(args, store, base)
    if name is not None:
        store.load_adapter(lora_model, name, base.fingerprint)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    results = []
    for path in paths:
        prepared = prepare_digit(load_image(path), invert)
        if prepared is None:
            say(f"{path}: no digit found (the picture is empty or has almost no ink)")
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
        say(line)
        results.append(entry)
    return {"artifacts": str(store.root), "adapter": name, "predictions": results}


def cmd_study(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.lab.study import run_study

    _check_name(args)
    train_config = _validated(_train_config(args), STUDY_TRAIN_FLAGS, args)
    ft_config = _validated(_finetune_config(args), args.flags, args)
    store = _store(args)
    given = [STUDY_TRAIN_FLAGS[f][0] for f in TRAIN_FLAGS if getattr(args, f) is not None]
    if given and not args.retrain and store.has_base():
        warn(
            f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect: the saved base model in "
            f"{store.base_dir} is reused. Add --retrain to train a new one with {'it' if len(given) == 1 else 'them'}."
        )
    data = _data(args)
    _say_precision(ft_config.precision, ft_config.device, args.flags, args)
    bar = ProgressBar()
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
            log=lambda m: (bar.close(), say(m)),
            overwrite=args.overwrite,
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


def _experiment_settings(args: argparse.Namespace, **fixed: Any) -> Any:
    """ExperimentSettings from the options experiment and sweep share (each option's dest is the field's
    name), with `fixed` for what the command sets itself; validated, naming the option typed."""
    import dataclasses

    from lora_core.lab.experiments import ExperimentSettings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentSettings) if hasattr(args, f.name)}
    settings = ExperimentSettings(**{**given, "targets": tuple(args.targets), **fixed})
    return _validated(settings, args.flags, args)


def _run_on_task(args: argparse.Namespace, task: Any, settings: Any, run: Callable[..., _R]) -> _R:
    """Load what a task's run needs and call `run(store, data, progress=..., log=...)` under a progress
    bar. An unseen task trains its own base, so only the others need a saved one."""
    store = _store(args)
    if task.base_name is None and not store.has_base():
        raise UsageError(f"no base model in {store.base_dir}; train one first (python -m lora_core train)")
    data = _data(args)
    _say_precision(settings.precision, settings.device, args.flags, args)
    bar = ProgressBar()
    try:
        return run(store, data, progress=bar, log=lambda m: (bar.close(), say(m)))
    finally:
        bar.close()


def cmd_experiment(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.cli.render import experiment_report
    from lora_core.lab.experiments import run_experiment

    _check_name(args)
    _check_replay(args, args.task)
    settings = _experiment_settings(args)
    result = _run_on_task(
        args,
        args.task,
        settings,
        lambda store, data, **live: run_experiment(
            store,
            data,
            args.task,
            settings,
            adapter_name=args.name,
            overwrite=args.overwrite,
            base_config=TrainConfig(device=args.device, precision=args.precision),
            retrain_base=args.retrain_base,
            stop=stop,
            **live,
        ),
    )
    experiment_report(result)
    return result.to_dict()


def _check_replay(args: argparse.Namespace, task: Any) -> None:
    """--replay on a domain task would be ignored without a word (it trains on every digit: there are no
    other digits to replay), so it is refused."""
    if getattr(args, "replay", None) is not None and task.is_domain:
        raise UsageError(
            f"--replay: applies to digit tasks (weakest, digits:D,..., unseen:D,...); {task.spec} trains on "
            "every digit, so there is nothing to replay; leave --replay out"
        )


def _sweep_values(kind: str, given: list[list[str]] | None) -> tuple[Any, ...]:
    """--values as numbers of the sweep's kind (checked again, with the ranges, by lora_core.lab.sweeps)."""
    from lora_core.lab.sweeps import DEFAULT_RANKS, DEFAULT_REPLAYS

    if given is None:
        return DEFAULT_RANKS if kind == "rank" else DEFAULT_REPLAYS
    values: list[Any] = []
    for text in (piece for group in given for piece in group):
        try:
            values.append(int(text) if kind == "rank" else float(text))
        except ValueError:
            what = "whole numbers (ranks)" if kind == "rank" else "numbers from 0 to below 1 (replay shares)"
            raise UsageError(f"--values: expected {what}, got {text!r}") from None
    return tuple(values)


def cmd_sweep(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    from lora_core.cli.render import sweep_report
    from lora_core.lab.sweeps import check_values, run_sweep
    from lora_core.lab.tasks import parse_task

    task = args.task or parse_task("weakest")
    values = _sweep_values(args.kind, args.values)
    _check_replay(args, task)
    settings = _experiment_settings(args, methods=("lora",))
    try:
        check_values(args.kind, values)
        if args.kind == "replay" and task.is_domain:
            raise ConfigError(
                "task", f"replay applies to digit tasks (weakest, digits:D,..., unseen:D,...), not {task.spec}"
            )
    except ConfigError as exc:
        raise usage_error(exc, args.flags, args.argv) from exc
    result = _run_on_task(
        args,
        task,
        settings,
        lambda store, data, **live: run_sweep(
            store,
            data,
            task,
            args.kind,
            values,
            settings,
            base_config=TrainConfig(device=args.device, precision=args.precision),
            stop=stop,
            **live,
        ),
    )
    sweep_report(result)
    return result.to_dict()


# --- combine ---------------------------------------------------------------------------------------
def cmd_combine(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    """Several adapters at once: the base, each alone and the weighted combination, per task."""
    from lora_core.lab.combine import combination_report
    from lora_core.lab.study import load_base_for_lora

    weighted: list[tuple[str, float]] = args.adapters
    if len(weighted) < 2:
        raise UsageError("--adapters: give two or more adapters to combine, e.g. digit-9:1,rotate-45:1")
    store = _store(args)
    base, lora_model = load_base_for_lora(store, args.device)
    for name, _ in weighted:  # refuses an adapter of another base model (StaleAdapterError) by name
        check_adapter_here(store, name)
        store.load_adapter(lora_model, name, base.fingerprint)
    data = _data(args)
    report = combination_report(lora_model, weighted, data, tasks=args.task)
    say(combine_table(report))
    for sentence in report.readings():
        say(sentence)
    return {"artifacts": str(store.root), **report.to_dict()}


def combine_table(report: Any) -> str:
    """One row per model (base, each adapter alone, the combination), one column per task, in percent."""
    headers = ["model", *[column.key for column in report.columns]]
    rows = [[row["model"], *[pct(row["accuracy"][c.key]) for c in report.columns]] for row in report.rows]
    legend = "; ".join(f"{c.key} = {c.label}" for c in report.columns)
    return table(headers, rows) + f"\n({legend})"
