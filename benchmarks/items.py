"""The seven measurements of `python -m benchmarks`; each returns table rows and its raw figures.

Every "ours" figure goes through lora_core's own code: train_base for training, LoraModel for LoRA,
lora_core.preprocess for the canvas, `python -m lora_core study` for memory.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_core.data import MnistData
from lora_core.evaluate import evaluate
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import DEFAULT_HIDDEN, LAYER_NAMES, MLP, count_parameters
from lora_core.train import TrainConfig, adam, train_base

from .baselines import parametrized_lora, torchvision_root, tutorial_train
from .machine import matmul_peak
from .report import Row, ms, pct, rate, times
from .timing import compare, percentile

Raw = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Sizes:
    """How much work each item does. FULL is the real benchmark; QUICK only checks that it runs."""

    baseline_steps: int | None  # tutorial loop: batches of 10 (None: one full epoch)
    train_samples: int | None  # ours, and the scaling epochs (None: all 60,000)
    peak_trials: int
    peak_n: int
    step_rounds: int  # interleaved rounds for step and inference timings
    step_calls: int  # calls per round
    infer_rounds: int
    latency_runs: int
    study_args: tuple[str, ...]  # extra arguments for `python -m lora_core study`
    infer_batch: int = 2500  # lora_core.evaluate's batch
    ranks: tuple[int, ...] = (1, 4, 16, 64)
    rank_batch: int = 128
    scaled_hidden: tuple[int, int] = (2000, 4000)
    study_timeout_s: float = 900.0


FULL = Sizes(
    baseline_steps=None,
    train_samples=None,
    peak_trials=5,
    peak_n=2048,
    step_rounds=15,
    step_calls=5,
    infer_rounds=15,
    latency_runs=300,
    study_args=(),
)
QUICK = Sizes(
    baseline_steps=30,
    train_samples=1024,
    peak_trials=2,
    peak_n=512,
    step_rounds=2,
    step_calls=1,
    infer_rounds=2,
    latency_runs=10,
    study_args=("--hidden", "16", "16", "--steps", "5", "--ft-batch-size", "16", "--rank", "4"),
    infer_batch=256,
    rank_batch=32,
    scaled_hidden=(2000, 4000),
    study_timeout_s=240.0,
)

LORA_RANK = 8  # lora_core's default adapter (FinetuneConfig): rank 8, alpha 16, all three layers
LORA_ALPHA = 16.0
FT_LR = 3e-3


@dataclass
class Context:
    data: MnistData
    data_dir: Path
    sizes: Sizes
    log: Callable[[str], None]
    shared: dict[str, Any] = field(default_factory=dict)  # figures one item hands to a later one

    def train_data(self) -> MnistData:
        n = self.sizes.train_samples
        if n is None or n >= self.data.train_x.shape[0]:
            return self.data
        idx = torch.randperm(self.data.train_x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        return dataclasses.replace(self.data, train_x=self.data.train_x[idx], train_y=self.data.train_y[idx])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.train_x[:size].contiguous(), self.data.train_y[:size].contiguous()


def gflops(params: int, samples_per_s: float) -> float:
    """Training's arithmetic rate: 6 flops per parameter per sample (2 forward, 4 backward)."""
    return 6.0 * params * samples_per_s / 1e9


def _peak(ctx: Context) -> Raw:
    return matmul_peak(n=ctx.sizes.peak_n, trials=ctx.sizes.peak_trials)


# --- 1 and 2: base training ------------------------------------------------------------------------
def base_training(ctx: Context) -> tuple[list[Row], Raw]:
    """Items 1 and 2: one epoch of lora_core's train_base (default TrainConfig, on the CPU) against the
    tutorial loop, and the rate of that epoch against the matmul peak measured just before and after."""
    data = ctx.train_data()
    params = count_parameters(DEFAULT_HIDDEN)
    ctx.log("matmul peak (before training)")
    peak_before = _peak(ctx)
    ctx.log(f"ours: lora_core.train.train_base, {data.train_x.shape[0]:,} samples")
    config = TrainConfig(device="cpu")
    model, run = train_base(data, config)
    peak_after = _peak(ctx)
    ours_acc = evaluate(model, ctx.data.test_x, ctx.data.test_y).accuracy
    ctx.shared["trained_base"] = model
    ctx.shared["epoch_s"] = run.seconds
    ctx.shared["epoch_samples"] = data.train_x.shape[0]

    steps = ctx.sizes.baseline_steps
    ctx.log(f"baseline: tutorial-style loop, {'one epoch' if steps is None else f'{steps} steps'} of batch 10")
    root, cleanup = torchvision_root(ctx.data_dir)
    try:
        net, base = tutorial_train(root, steps)
    finally:
        cleanup()
    base_acc = evaluate(net, ctx.data.test_x, ctx.data.test_y).accuracy

    speedup = run.samples_per_s / float(base["samples_per_s"])
    peak = max(peak_before["gflops"], peak_after["gflops"])
    ours_gflops = gflops(params, run.samples_per_s)
    base_gflops = gflops(params, float(base["samples_per_s"]))
    ctx.shared["peak_gflops"] = peak
    ceiling = peak * 1e9 / (6.0 * params)  # samples/s at 100% of the peak
    ours_when = "one epoch" if ctx.sizes.train_samples is None else f"{data.train_x.shape[0]:,} samples"
    base_when = "one epoch" if steps is None else f"{base['samples']:,} samples"
    rows = [
        Row(
            1,
            "base training throughput (ours: batch 256, in-memory tensors; reference: tutorial loop)",
            rate(run.samples_per_s),
            rate(float(base["samples_per_s"])),
            times(speedup),
            ">= 25x",
            speedup >= 25,
        ),
        Row(
            1,
            f"test accuracy after training (ours: {ours_when}; reference: {base_when})",
            pct(ours_acc),
            pct(base_acc),
            "-",
            ">= 97% (ours)",
            ours_acc >= 0.97,
        ),
        Row(
            1,
            "upper bound: the speed-up if ours ran at 100% of the matmul peak (peak / 6 x params)",
            rate(ceiling),
            rate(float(base["samples_per_s"])),
            times(ceiling / float(base["samples_per_s"])),
        ),
        Row(
            1,
            "time for one epoch of 60,000 samples",
            f"{60_000 / run.samples_per_s:.1f} s",
            f"{60_000 / float(base['samples_per_s']):.1f} s",
            times(speedup),
        ),
        Row(
            2,
            "training's arithmetic rate (6 x 2,807,010 params x samples/s) against the fp32 matmul peak",
            f"{ours_gflops:.1f} GFLOP/s",
            f"{peak:.1f} GFLOP/s peak",
            pct(ours_gflops / peak),
            ">= 75%",
            ours_gflops / peak >= 0.75,
        ),
        Row(
            2,
            "tutorial loop's arithmetic rate against the same peak",
            f"{base_gflops:.1f} GFLOP/s",
            f"{peak:.1f} GFLOP/s peak",
            pct(base_gflops / peak),
        ),
    ]
    raw = {
        "params": params,
        "ours": {
            "config": config.to_dict(),
            "samples": data.train_x.shape[0],
            "seconds": run.seconds,
            "samples_per_s": run.samples_per_s,
            "test_accuracy": ours_acc,
            "gflops": ours_gflops,
        },
        "baseline": {**base, "test_accuracy": base_acc, "gflops": base_gflops},
        "speedup": speedup,
        "peak_before": peak_before,
        "peak_after": peak_after,
        "peak_gflops": peak,
        "fraction_of_peak": ours_gflops / peak,
        "samples_per_s_at_peak": ceiling,
        # 6 x params counts the input gradient of linear1, which training never computes (the images
        # need no gradient): the matmuls really done are 6P - 2 x 784 x 1000 flops per sample.
        "flops_per_sample_counted": 6 * params,
        "flops_per_sample_computed": 6 * params - 2 * 784 * DEFAULT_HIDDEN[0],
    }
    return rows, raw


# --- 3: LoRA step time ------------------------------------------------------------------------------
def _train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], float]:
    """The step of lora_core's fine-tuning loop: forward, cross-entropy, zero_grad, backward, Adam."""

    def step() -> float:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return step


def ours_lora(
    base: MLP, rank: int, targets: tuple[str, ...], alpha: float = LORA_ALPHA
) -> tuple[LoraModel, list[nn.Parameter]]:
    """A LoraModel on a copy of `base` with one fresh adapter, only its A and B trainable."""
    copy = MLP(*base.hidden)
    copy.load_state_dict(base.state_dict())
    model = LoraModel(copy)
    model.add_adapter("bench", LoraConfig(r=rank, alpha=alpha, target_modules=targets), seed=0)
    params = model.mark_only_lora_trainable("bench")
    model.train()
    return model, params


def lora_steps(ctx: Context) -> tuple[list[Row], Raw]:
    """Item 3: a fine-tuning step of ours, of the tutorials' parametrize LoRA, and of full fine-tuning."""
    torch.manual_seed(0)
    base = ctx.shared.get("trained_base") or MLP()
    rows: list[Row] = []
    raw: Raw = {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": list(LAYER_NAMES)}
    for batch in (64, 256):
        x, y = ctx.batch(batch)
        ours, ours_params = ours_lora(base, LORA_RANK, LAYER_NAMES)
        tut, tut_params = parametrized_lora(base, LORA_RANK, LORA_ALPHA, LAYER_NAMES)
        tut.train()
        full = MLP(*base.hidden)
        full.load_state_dict(base.state_dict())
        full.train()
        ctx.log(f"LoRA step, batch {batch}: ours, parametrize, full fine-tuning")
        result = compare(
            {
                # the same (fused) Adam for all three, so the rows compare the LoRA mechanics
                "ours": _train_step(ours, adam(ours_params, FT_LR, CPU), x, y),
                "parametrize": _train_step(tut, adam(tut_params, FT_LR, CPU), x, y),
                "full": _train_step(full, adam(full.parameters(), FT_LR, CPU), x, y),
            },
            rounds=ctx.sizes.step_rounds,
            calls_per_round=ctx.sizes.step_calls,
        )
        vs_tut, vs_full = result.ratio("ours", "parametrize"), result.ratio("ours", "full")
        raw[f"batch_{batch}"] = {**result.to_dict(), "ours_vs_parametrize": vs_tut, "ours_vs_full": vs_full}
        what = f"LoRA step, batch {batch}, r={LORA_RANK}, all 3 layers"
        rows.append(
            Row(
                3,
                f"{what}: ours vs tutorials' parametrize (W + B·A rebuilt every forward)",
                ms(result.median("ours")),
                ms(result.median("parametrize")),
                times(vs_tut),
                "<= 0.55x" if batch == 64 else "-",
                vs_tut <= 0.55 if batch == 64 else None,
            )
        )
        rows.append(
            Row(
                3,
                f"{what}: ours vs full fine-tuning of all weights",
                ms(result.median("ours")),
                ms(result.median("full")),
                times(vs_full),
                "<= 0.65x" if batch == 256 else "-",
                vs_full <= 0.65 if batch == 256 else None,
            )
        )
    return rows, raw


# --- 4: inference -----------------------------------------------------------------------------------
def _trained_adapter(base: MLP) -> LoraModel:
    """A LoraModel with a rank-8 adapter whose B is not zero (a fresh adapter's is), as after training."""
    model, params = ours_lora(base, LORA_RANK, LAYER_NAMES)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    for p in params:
        p.requires_grad_(False)
    model.eval()
    return model


def inference(ctx: Context) -> tuple[list[Row], Raw]:
    """Item 4: forward passes of the base MLP, a merged adapter and an unmerged one, same batch."""
    base = ctx.shared.get("trained_base") or MLP()
    base.eval()
    merged = _trained_adapter(base)
    merged.merge()
    unmerged = _trained_adapter(base)
    rows: list[Row] = []
    raw: Raw = {}
    big = ctx.sizes.infer_batch
    for batch, why in ((1, "one drawn digit"), (big, "lora_core.evaluate's batch" if big == 2500 else "quick")):
        x = ctx.data.test_x[:batch].contiguous()

        def run(model: nn.Module, x: torch.Tensor = x) -> Callable[[], object]:
            def forward() -> object:
                with torch.inference_mode():
                    return model(x)

            return forward

        calls = ctx.sizes.step_calls * 100 if batch == 1 else 2
        ctx.log(f"inference, batch {batch}: base, merged, unmerged")
        result = compare(
            {"base": run(base), "merged": run(merged), "unmerged": run(unmerged)},
            rounds=ctx.sizes.infer_rounds,
            calls_per_round=calls,
            warmup=10 if batch == 1 else 2,
        )
        m, u = result.ratio("merged", "base"), result.ratio("unmerged", "base")
        raw[f"batch_{batch}"] = {**result.to_dict(), "merged_vs_base": m, "unmerged_vs_base": u}
        rows.append(
            Row(
                4,
                f"merged adapter vs base model, batch {batch} ({why})",
                _us(result.median("merged")),
                _us(result.median("base")),
                times(m),
                "<= 1.02x",
                m <= 1.02,
            )
        )
        rows.append(
            Row(
                4,
                f"unmerged adapter (r={LORA_RANK}) vs base model, batch {batch}",
                _us(result.median("unmerged")),
                _us(result.median("base")),
                times(u),
                "report",
            )
        )
    return rows, raw


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 1e-3 else ms(seconds)


# --- 5: draw-to-prediction latency ------------------------------------------------------------------
def synthetic_canvas(size: int = 280, width: int = 18) -> np.ndarray:
    """A 280x280 RGBA canvas like the dashboard's: a white '7' stroked on a transparent background."""
    canvas = np.zeros((size, size, 4), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    points = [(70, 60), (70, 210), (120, 170), (230, 120)]  # (y, x): the bar and the stem of a 7
    for (y0, x0), (y1, x1) in zip(points, points[1:]):
        for t in np.linspace(0.0, 1.0, 60):
            cy, cx = y0 + (y1 - y0) * t, x0 + (x1 - x0) * t
            canvas[(yy - cy) ** 2 + (xx - cx) ** 2 <= (width / 2) ** 2] = (255, 255, 255, 255)
    return canvas


def draw_latency(ctx: Context) -> tuple[list[Row], Raw]:
    """Item 5: canvas array -> lora_core.preprocess.prepare_digit -> both models' probabilities."""
    from lora_core.preprocess import predict_probabilities, prepare_digit

    base = ctx.shared.get("trained_base") or MLP()
    adapted = _trained_adapter(base)  # unmerged: the dashboard switches adapters without merging
    canvas = synthetic_canvas()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:

        def draw_to_prediction() -> tuple[np.ndarray, np.ndarray]:
            prepared = prepare_digit(canvas)
            if prepared is None:
                raise RuntimeError("the synthetic canvas was taken for an empty one")
            return predict_probabilities(base, prepared), predict_probabilities(adapted, prepared)

        for _ in range(10):
            draw_to_prediction()
        samples = []
        for _ in range(ctx.sizes.latency_runs):
            start = time.perf_counter()
            draw_to_prediction()
            samples.append(time.perf_counter() - start)
        # where the time goes, for the record
        prep = []
        for _ in range(max(5, ctx.sizes.latency_runs // 3)):
            start = time.perf_counter()
            prepare_digit(canvas)
            prep.append(time.perf_counter() - start)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    median, p95 = percentile(samples, 50), percentile(samples, 95)
    prep_median = percentile(prep, 50)
    rows = [
        Row(
            5,
            f"280x280 RGBA canvas -> both models' probabilities, median of {len(samples)} ({used_threads} threads)",
            ms(median),
            "-",
            "-",
            "< 20 ms",
            median < 0.020,
        ),
        Row(5, "same, 95th percentile", ms(p95), "-", "-", "report"),
        Row(5, "of which prepare_digit (crop, scale to 20 px, centre)", ms(prep_median), "-", "-", "report"),
    ]
    raw = {
        "runs": len(samples),
        "threads": used_threads,
        "median_s": median,
        "p95_s": p95,
        "max_s": max(samples),
        "prepare_median_s": prep_median,
        "samples_s": samples,
    }
    return rows, raw


# --- 6: peak memory ---------------------------------------------------------------------------------
# A small Python that starts the command and reports the command's own peak RSS from wait4. The
# extra process matters: Linux carries the memory high-water mark of the process that forks across
# exec, so measured straight from this benchmark (already over 1 GB) the child would "peak" at the
# benchmark's size. Forked from this launcher (about 10 MB) it starts clean.
_LAUNCHER = """
import os, subprocess, sys
out, *cmd = sys.argv[1:]
proc = subprocess.Popen(cmd)
_, status, usage = os.wait4(proc.pid, 0)
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
with open(out, "w") as fh:
    fh.write(str(usage.ru_maxrss * scale))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_module_measured(module: str, args: list[str], timeout: float) -> tuple[int, int, float, str]:
    """Run `python -m module args`; return its exit status, its peak RSS in bytes (its whole life,
    interpreter shutdown included, as /usr/bin/time -v reports it), its wall time and its output's tail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp, tempfile.TemporaryFile("w+") as out:
        peak_file = Path(tmp) / "peak"
        cmd = [sys.executable, "-c", _LAUNCHER, str(peak_file), sys.executable, "-m", module, *args]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command it started
            proc.wait()
            raise RuntimeError(f"`python -m {module}` took more than {timeout:.0f} s") from None
        seconds = time.perf_counter() - start
        out.seek(0)
        tail = out.read()[-2000:]
        peak = int(peak_file.read_text()) if peak_file.is_file() else 0
    return code, peak, seconds, tail


def peak_memory(ctx: Context) -> tuple[list[Row], Raw]:
    """Item 6: peak RSS of a fresh `python -m lora_core study` (it trains a base model and an adapter),
    and of a Python that only imports torch and lora_core, for scale."""
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        args = ["study", "--artifacts", tmp, "--data", str(ctx.data_dir), "--device", "cpu", *ctx.sizes.study_args]
        ctx.log("peak memory: python -m lora_core " + " ".join(args))
        code, rss, seconds, tail = run_module_measured("lora_core", args, ctx.sizes.study_timeout_s)
    if code != 0:
        raise RuntimeError(f"`python -m lora_core study` failed with status {code}:\n{tail}")
    _, import_rss, _, _ = run_module_measured("lora_core.study", [], 120.0)  # importing it runs nothing
    gb = 1e9
    shown = "python -m lora_core study" + (" " + " ".join(ctx.sizes.study_args) if ctx.sizes.study_args else "")
    rows = [
        Row(
            6,
            f"peak RSS of `{shown}` (fresh artifacts: trains base + adapter, {seconds:.0f} s)",
            f"{rss / gb:.2f} GB",
            "-",
            "-",
            "< 1.2 GB",
            rss < 1.2 * gb,
        ),
        Row(
            6,
            "of which: Python importing torch and lora_core, nothing else",
            f"{import_rss / gb:.2f} GB",
            "-",
            "-",
            "report",
        ),
    ]
    raw = {
        "command": ["python", "-m", "lora_core", *args],
        "peak_rss_bytes": rss,
        "seconds": seconds,
        "import_only_peak_rss_bytes": import_rss,
        "output_tail": tail[-600:],
    }
    return rows, raw


# --- 7: scaling -------------------------------------------------------------------------------------
def _frozen_step(model: MLP, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """The frozen base's own forward + backward: all weights frozen, the gradient carried down to
    linear1's output, the least that any adapter on linear1 needs."""

    def step() -> float:
        z1 = model.linear1(x).detach().requires_grad_(True)
        out = model.linear3(model.relu(model.linear2(model.relu(z1))))
        loss = F.cross_entropy(out, y)
        loss.backward()
        return float(loss.item())

    return step


def scaling(ctx: Context) -> tuple[list[Row], Raw]:
    """Item 7: epoch time as the hidden sizes double, and LoRA step time as the rank grows."""
    data = ctx.train_data()
    samples = data.train_x.shape[0]
    h_small, h_big = DEFAULT_HIDDEN, ctx.sizes.scaled_hidden
    p_small, p_big = count_parameters(h_small), count_parameters(h_big)
    ctx.log(f"scaling: one epoch at hidden {h_big[0]}/{h_big[1]}")
    if "epoch_s" in ctx.shared and ctx.shared.get("epoch_samples") == samples:
        small_s = float(ctx.shared["epoch_s"])
    else:
        small_s = train_base(data, TrainConfig(device="cpu"))[1].seconds
    _, big_run = train_base(data, TrainConfig(device="cpu", hidden=h_big))
    big_s = big_run.seconds
    peak = float(ctx.shared.get("peak_gflops") or _peak(ctx)["gflops"])
    unit = "epoch" if ctx.sizes.train_samples is None else f"{samples:,} samples"
    small_rate, big_rate = gflops(p_small, samples / small_s), gflops(p_big, samples / big_s)
    rows = [
        Row(
            7,
            f"training time per {unit}, hidden {h_big[0]}/{h_big[1]} ({p_big:,} params) vs "
            f"{h_small[0]}/{h_small[1]} ({p_small:,})",
            f"{big_s:.1f} s",
            f"{small_s:.1f} s",
            times(big_s / small_s),
            f"≈ {p_big / p_small:.2f}x (params)",
        ),
        Row(
            7,
            f"arithmetic rate at hidden {h_big[0]}/{h_big[1]} vs {h_small[0]}/{h_small[1]} (share of peak)",
            f"{big_rate:.1f} GFLOP/s ({pct(big_rate / peak)})",
            f"{small_rate:.1f} GFLOP/s ({pct(small_rate / peak)})",
            times(big_rate / small_rate),
        ),
    ]
    raw: Raw = {
        "hidden": {"small": list(h_small), "big": list(h_big)},
        "params": {"small": p_small, "big": p_big},
        "samples": samples,
        "seconds": {"small": small_s, "big": big_s},
        "gflops": {"small": small_rate, "big": big_rate},
    }

    batch = ctx.sizes.rank_batch
    targets = ("linear1", "linear2")
    base = ctx.shared.get("trained_base") or MLP()
    x, y = ctx.batch(batch)
    frozen = MLP(*base.hidden)
    frozen.load_state_dict(base.state_dict())
    for p in frozen.parameters():
        p.requires_grad_(False)
    candidates: dict[str, Callable[[], object]] = {"frozen": _frozen_step(frozen, x, y)}
    for r in ctx.sizes.ranks:
        model, params = ours_lora(base, r, targets)
        candidates[f"r{r}"] = _train_step(model, adam(params, FT_LR, CPU), x, y)
    ctx.log(f"scaling: LoRA step at ranks {', '.join(map(str, ctx.sizes.ranks))}, batch {batch}")
    result = compare(candidates, rounds=ctx.sizes.step_rounds, calls_per_round=ctx.sizes.step_calls)
    frozen_s = result.median("frozen")
    rows.append(
        Row(
            7,
            f"frozen base forward + backward (down to linear1's output), batch {batch}",
            ms(frozen_s),
            "-",
            "-",
            "report",
        )
    )
    extras: dict[str, float] = {}
    for r in ctx.sizes.ranks:
        step_s = result.median(f"r{r}")
        extra = step_s - frozen_s
        extras[str(r)] = extra
        lora_params = sum(r * (i + o) for i, o in ((784, base.hidden[0]), (base.hidden[0], base.hidden[1])))
        rows.append(
            Row(
                7,
                f"LoRA step r={r} on linear1+linear2 ({lora_params:,} trainable), batch {batch}: "
                f"extra over frozen {ms(extra)} ({pct(extra / frozen_s)})",
                ms(step_s),
                ms(frozen_s),
                times(result.ratio(f"r{r}", "frozen")),
                "report",
            )
        )
    lo, hi = ctx.sizes.ranks[0], ctx.sizes.ranks[-1]
    slope = (extras[str(hi)] - extras[str(lo)]) / (hi - lo)
    rows.append(
        Row(
            7,
            f"growth of LoRA's extra with rank ({lo} -> {hi})",
            f"{slope * 1e6:,.0f} µs per unit of rank",
            "-",
            "-",
            "report",
        )
    )
    raw["rank_sweep"] = {
        "batch": batch,
        "targets": list(targets),
        "timings": result.to_dict(),
        "frozen_s": frozen_s,
        "extra_s": extras,
        "extra_s_per_rank": slope,
    }
    return rows, raw


ITEM_FUNCTIONS: dict[str, Callable[[Context], tuple[list[Row], Raw]]] = {
    "1-2": base_training,
    "3": lora_steps,
    "4": inference,
    "5": draw_latency,
    "6": peak_memory,
    "7": scaling,
}
