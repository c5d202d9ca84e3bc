"""What machine the benchmark ran on, and its fp32 and bf16 matmul peaks measured in the same process."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    import numpy
    import torchvision

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "load_average_at_start": load_average(),
    }


# the dtype each training precision multiplies in
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(n: int = 2048, reps: int = 10, trials: int = 5, precision: str = "fp32") -> dict[str, Any]:
    """Best GFLOP/s of an n x n @ n x n matmul over `trials` trials of `reps` products, on the threads
    torch uses now (the same threads as training). The best trial is the machine's limit; the others
    are the noise of a shared machine.

    precision "bf16" multiplies bfloat16 tensors directly: the arithmetic units' own limit. (Under
    autocast each product would also convert its two fp32 inputs, a few percent of a 2048 matmul;
    training pays those conversions, so judging it against this peak is the stricter comparison.)"""
    dtype = MATMUL_DTYPES[precision]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - start
        rates.append(2.0 * n**3 * reps / elapsed / 1e9)
    return {
        "n": n,
        "reps": reps,
        "precision": precision,
        "gflops_trials": rates,
        "gflops": max(rates),
        "threads": torch.get_num_threads(),
    }
