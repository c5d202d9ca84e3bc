"""Item 8: `python -m lora_core train` as a whole process against the tutorial loop's throughput."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lora_core.numbers import pct
from lora_core.store.paths import ARTIFACTS_ENV, DATA_ENV

from ..context import Context
from ..report import Row, judged, rate, times
from ..workloads import run_module_measured
from .common import Raw, tutorial_figures


def measure_cli_train(ctx: Context) -> Raw:
    """`python -m lora_core train` in a subprocess, timed whole (interpreter start, imports, reading the
    data folder, the precision probe, one epoch, evaluation, saving) into an empty artifacts folder; its
    own --json output gives the epoch's time. Against the tutorial loop's throughput (item 1's, or
    measured here when item 1 was not run)."""
    base = tutorial_figures(ctx)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        json_path = Path(tmp) / "train.json"
        env = {DATA_ENV: str(ctx.data_dir), ARTIFACTS_ENV: str(Path(tmp) / "artifacts")}
        args = ["train", "--device", "cpu", *ctx.sizes.train_cli_args]
        ctx.log("train as a whole process: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured(
            "lora_core", [*args, "--json", str(json_path)], ctx.sizes.train_cli_timeout_s, env
        )
        if code != 0:
            raise RuntimeError(f"`python -m lora_core train` failed with status {code}:\n{tail}")
        training = json.loads(json_path.read_text(encoding="utf-8"))["base"]["training"]
    samples = int(ctx.data.train_x.shape[0])  # one epoch of the data folder the command read
    base_rate = float(base["samples_per_s"])
    return {
        "command": ["python", "-m", "lora_core", *args],
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "epoch_seconds": training["seconds"],
        "precision_requested": training.get("precision"),
        "precision_used": training.get("precision_used"),
        "precision_reason": training.get("precision_reason"),
        "peak_rss_bytes": rss,
        "baseline_samples_per_s": base_rate,
        "speedup": samples / seconds / base_rate,
        "output_tail": tail[-600:],
    }


def rows_8(ctx: Context, raw: Raw) -> list[Row]:
    """Item 8: `python -m lora_core train` as a whole process against the tutorial loop's throughput."""
    extra = " " + " ".join(ctx.sizes.train_cli_args) if ctx.sizes.train_cli_args else ""
    shown = f"python -m lora_core train{extra}"
    seconds, epoch_s = raw["seconds"], raw["epoch_seconds"]
    return [
        judged(
            8,
            f"`{shown}` as a whole process (start, data, precision {raw['precision_requested']} → "
            f"{raw['precision_reason']}, one epoch, evaluation, save): {raw['samples']:,} / wall seconds; "
            "reference: the tutorial loop's throughput",
            rate(raw["samples_per_s"]),
            rate(raw["baseline_samples_per_s"]),
            times(raw["speedup"]),
            "train command's speed-up over the tutorial loop",
            raw["speedup"],
        ),
        Row(
            8,
            "its wall time, of which the epoch itself (the command's own timing); the rest is start, data, "
            "evaluation and saving",
            f"{seconds:.1f} s",
            f"{epoch_s:.1f} s",
            pct(epoch_s / seconds),
            "report",
        ),
        Row(8, "its peak RSS", f"{raw['peak_rss_bytes'] / 1e9:.2f} GB", "-", "-", "report"),
    ]
