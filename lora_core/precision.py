"""The arithmetic precision of training: float32, or bfloat16 autocast where it is measured to be faster.

Under "bf16" the forward pass and the loss run inside torch.autocast(dtype=torch.bfloat16): the matmuls
read bfloat16 copies of their inputs, while the master weights, their gradients and Adam's states stay
float32, and so does every saved tensor. Evaluation and prediction always run in float32.

"auto" decides by measurement, once per process and device: a few training-shaped matmuls in float32
and under bfloat16 autocast, best of a few repeats. CPUs with avx512_bf16 or AMX, current GPUs and Apple
silicon multiply bfloat16 2-3x faster; CPUs without such units run autocast slower than float32, and
there "auto" keeps float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from lora_core.errors import ConfigError
from lora_core.threads import torch_threads

PRECISIONS = ("auto", "fp32", "bf16")
# (batch, in, out): the base MLP's two large layers. At half the default batch each matmul is short, so
# the best of several repeats is likely to include one that no other process interrupted.
PROBE_SHAPES = ((128, 784, 1000), (128, 1000, 2000))
# bf16 must beat fp32 by this factor before "auto" takes it: a few percent is within the probe's noise,
# and bf16 costs some accuracy headroom
MIN_SPEEDUP = 1.2
PROBE_REPEATS = 8
PROBE_BUDGET_S = 0.05  # stop repeating once the probe has run this long (after three rounds)


def check_precision(value: Any) -> None:
    if value not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {value!r}")


@dataclass(frozen=True)
class MatmulProbe:
    """Best-of-repeats time of the probe's matmuls in float32 and under bfloat16 autocast."""

    fp32_s: float
    bf16_s: float
    wall_s: float  # the whole probe, warm-up included

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0


@dataclass(frozen=True)
class PrecisionChoice:
    """What was asked for, what is used, and why."""

    requested: str
    used: str  # "fp32" or "bf16"
    reason: str
    speedup: float | None = None  # the probe's bf16/fp32 matmul speed ratio, where it ran

    @property
    def bf16(self) -> bool:
        return self.used == "bf16"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, "reason": self.reason, "speedup": self.speedup}


def bf16_unsupported_reason(device: torch.device) -> str | None:
    """Why bfloat16 autocast cannot run on `device`, or None where it can."""
    if device.type == "cpu":
        return None  # always runs on a CPU; whether it is fast is the probe's question
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic"
        return None
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError, ValueError) as exc:
        return f"bfloat16 autocast does not run on {device.type} here ({exc})"
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_matmul(a: torch.Tensor, b: torch.Tensor, device: torch.device, bf16: bool) -> float:
    context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    _synchronize(device)
    start = time.perf_counter()
    with context:
        torch.mm(a, b)
    _synchronize(device)
    return time.perf_counter() - start


@functools.cache
def _probe(device_name: str) -> MatmulProbe:
    device = torch.device(device_name)
    if device.type != "cpu":
        return _run_probe(device)
    # On a CPU the probe runs on one thread: the ratio it measures is the cores' own (bf16 units or not),
    # which holds for any thread count, while two threads on a busy machine mostly measure the other
    # processes (measured here under load 6 on 2 cores: 0.6x on two threads, 2.0-2.7x on one).
    with torch_threads(1):
        return _run_probe(device)


def _run_probe(device: torch.device) -> MatmulProbe:
    started = time.perf_counter()
    # the values do not change a dense matmul's speed; constants are quick to make and use no random state
    pairs = [
        (torch.full((n, k), 0.5, device=device), torch.full((k, m), 0.25, device=device)) for n, k, m in PROBE_SHAPES
    ]
    best = {(i, bf16): math.inf for i in range(len(pairs)) for bf16 in (False, True)}
    for repeat in range(PROBE_REPEATS + 1):  # the first round is a warm-up: kernels chosen, caches filled
        for i, (a, b) in enumerate(pairs):
            for bf16 in (False, True):
                seconds = _time_matmul(a, b, device, bf16)
                if repeat:
                    best[i, bf16] = min(best[i, bf16], seconds)
        if repeat >= 3 and time.perf_counter() - started > PROBE_BUDGET_S:
            break
    fp32 = sum(best[i, False] for i in range(len(pairs)))
    bf16 = sum(best[i, True] for i in range(len(pairs)))
    return MatmulProbe(fp32, bf16, time.perf_counter() - started)


def probe_bf16(device: torch.device) -> MatmulProbe:
    """Measure bfloat16 autocast against float32 matmuls on `device`; cached per process and device."""
    return _probe(str(device))


def resolve_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision to train in on `device`: as requested, or for "auto" the probe's verdict."""
    check_precision(requested)
    if requested == "fp32":
        return PrecisionChoice(requested, "fp32", "fp32: as requested")
    unsupported = bf16_unsupported_reason(device)
    if requested == "bf16":
        if unsupported:
            raise ConfigError("precision", f"bf16 is not available: {unsupported}; use fp32 or auto")
        return PrecisionChoice(requested, "bf16", "bf16: as requested")
    if unsupported:
        return PrecisionChoice(requested, "fp32", f"fp32: {unsupported}")
    probe = probe_bf16(device)
    speedup = probe.speedup
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice(requested, "bf16", f"bf16: {speedup:.1f}x faster matmuls here", speedup)
    return PrecisionChoice(
        requested,
        "fp32",
        f"fp32: bf16 matmuls are not faster here ({speedup:.2f}x of fp32's speed, {MIN_SPEEDUP:g}x needed)",
        speedup,
    )


def autocast(choice: PrecisionChoice, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context for the forward pass and the loss: bfloat16 autocast, or nothing for fp32."""
    if choice.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
