"""What the benchmark items time: lora_core's models and steps, a synthetic canvas, and a command's peak
memory. Every "ours" figure goes through lora_core's own code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_core.lora import LoraConfig, LoraModel
from lora_core.lora.nf4 import Nf4Config
from lora_core.model import LAYER_NAMES, MLP
from lora_core.precision import PrecisionChoice, autocast, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
LORA_RANK = 8  # lora_core's default adapter (FinetuneConfig): rank 8, alpha 16, all three layers
LORA_ALPHA = 16.0
FT_LR = 3e-3


def gflops(params: int, samples_per_s: float) -> float:
    """Training's arithmetic rate: 6 flops per parameter per sample (2 forward, 4 backward)."""
    return 6.0 * params * samples_per_s / 1e9


def precision_choice(precision: str) -> PrecisionChoice:
    """lora_core's own PrecisionChoice for "fp32" or "bf16" on the CPU, as the training loops resolve it."""
    return resolve_precision(precision, CPU)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
) -> Callable[[], float]:
    """The step of lora_core's fine-tuning loop (lora_core.train.finetune): forward and cross-entropy under
    lora_core.precision.autocast, zero_grad, backward, Adam. The batch is fixed, so the step times the
    model and the optimizer, not the sampling of indices; item 3 checks it against finetune itself."""
    choice = precision_choice(precision)

    def step() -> float:
        with autocast(choice, x.device):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return step


def frozen_step(model: MLP, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """The frozen base's own forward + backward: all weights frozen, the gradient carried down to
    linear1's output, the least that any adapter on linear1 needs."""

    def step() -> float:
        z1 = model.linear1(x).detach().requires_grad_(True)
        out = model.linear3(model.relu(model.linear2(model.relu(z1))))
        loss = F.cross_entropy(out, y)
        loss.backward()
        return float(loss.item())

    return step


def forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One inference call, as lora_core.evaluate makes it."""

    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return call


def copy_of(base: MLP) -> MLP:
    copy = MLP(*base.hidden)
    copy.load_state_dict(base.state_dict())
    return copy


def ours_lora(
    base: MLP, rank: int, targets: tuple[str, ...], alpha: float = LORA_ALPHA, quantization: Nf4Config | None = None
) -> tuple[LoraModel, list[nn.Parameter]]:
    """A LoraModel on a copy of `base` with one fresh adapter (on an NF4 copy of the base with `quantization`:
    QLoRA), only its A and B trainable."""
    model = LoraModel(copy_of(base))
    config = LoraConfig(r=rank, alpha=alpha, target_modules=targets)
    model.add_adapter("bench", config, seed=0, quantization=quantization)
    params = model.mark_only_lora_trainable("bench")
    model.train()
    return model, params


def trained_adapter(base: MLP) -> LoraModel:
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


def timed_runs(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds per call of `fn`, one sample per call."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


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


def run_module_measured(
    module: str, args: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, int, float, str]:
    """Run `python -m module args` with this benchmark's own Python (sys.executable: the same virtual
    environment) and `env` added to the environment; return its exit status, its peak RSS in bytes (its
    whole life, interpreter shutdown included, as /usr/bin/time -v reports it), its wall time (the
    launcher's own start, about 30 ms, included) and its output's tail."""
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
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
        except BaseException:  # Ctrl-C: the command runs in its own session, so the key never reaches it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        out.seek(0)
        tail = out.read()[-2000:]
        peak = int(peak_file.read_text()) if peak_file.is_file() else 0
    return code, peak, seconds, tail
