"""The run context every workflow shares: progress named by phase, the stop flag, peak memory, the environment.

    run = RunContext(progress, stop)
    finetune(..., progress=run.phase("rank 8, seed 0"), stop=run.stop)    # the phase shown beside the progress
    with PeakMemory(device) as memory:                                     # peak memory of a block
        train(..., progress=memory.progress(run.phase("lora")))           # taken at the last step
    record = {**environment(device), ...}                                  # what the run ran on

Peak memory of a block (a method's training, from its set-up to its last step; evaluation and saving left
out): on CUDA the allocator's peak; on the CPU (where PyTorch keeps no allocator statistics) the process's
peak resident set size above its size at the start of the block, the kernel's high-water mark VmHWM reset
through /proc/self/clear_refs; without that, getrusage's ru_maxrss delta, which stays 0 while a run remains
under the process's earlier peak. `measure` says which. Before each block the C allocator is asked to return
freed memory (glibc malloc_trim), else a block would reuse memory an earlier one freed without raising the RSS.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import resource
import threading
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save as save_safetensors_bytes

from lora_core.errors import RunStopped
from lora_core.train import FinetuneConfig, Progress, ProgressCallback

# alpha = 2 x rank unless a workflow's settings say otherwise: the study's ratio (rank 8, alpha 16), which keeps
# the scale alpha / r at 2 whatever the rank, so that comparing ranks compares ranks and not learning rates
ALPHA_PER_RANK = 2.0
_FINETUNE_FIELDS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def alpha_for(rank: int, alpha: float | None = None) -> float:
    """LoRA's alpha: `alpha` where one is set, else ALPHA_PER_RANK x rank."""
    return float(alpha) if alpha is not None else ALPHA_PER_RANK * rank


def finetune_config(settings: object | None = None, **fields: Any) -> FinetuneConfig:
    """The FinetuneConfig a workflow trains with: each FinetuneConfig field its `settings` object holds (by
    name, methods aside), then `fields`, which win; FinetuneConfig's defaults for the rest, except alpha,
    which follows the rank (alpha_for) wherever neither sets it."""
    values: dict[str, Any] = {}
    for name in _FINETUNE_FIELDS:
        value = getattr(settings, name, None) if settings is not None else None
        if value is not None and not callable(value):
            values[name] = value
    values.update(fields)
    values["alpha"] = alpha_for(values.get("rank", FinetuneConfig.rank), values.get("alpha"))
    return FinetuneConfig(**values)


def named_progress(progress: ProgressCallback | None, phase: str) -> ProgressCallback | None:
    """`progress` with every report relabelled as `phase` ("lora", "rank 8 (2/7)", ...)."""
    if progress is None:
        return None
    return lambda p: progress(dataclasses.replace(p, phase=phase))


@dataclass
class RunContext:
    """What a workflow's caller hands every phase of it: where progress goes and the flag that stops it."""

    progress: ProgressCallback | None = None
    stop: threading.Event | None = None

    def phase(self, name: str) -> ProgressCallback | None:
        """Progress reports of one phase, labelled `name`."""
        return named_progress(self.progress, name)

    def part(self, name: str, index: int, count: int) -> ProgressCallback | None:
        """Progress reports of part `index` (from 1) of `count` equal parts (a sweep's points), labelled `name`
        and counted over the whole: step 50 of part 2 of 4 parts of 100 steps is step 150 of 400, and the ETA
        adds the parts still to come at this part's pace."""
        if self.progress is None:
            return None
        progress = self.progress

        def report(p: Progress) -> None:
            per_part = p.elapsed_s + p.eta_s  # this part's expected length
            progress(
                dataclasses.replace(
                    p,
                    phase=name,
                    step=(index - 1) * p.total_steps + p.step,
                    total_steps=count * p.total_steps,
                    eta_s=p.eta_s + (count - index) * per_part,
                )
            )

        return report

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def check_stop(self, message: str) -> None:
        """Raise RunStopped(message) once a stop was asked for."""
        if self.stopped:
            raise RunStopped(message)


# --- peak memory ---------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block above what was in use when it began (see the module's docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self.measure = ""
        self._marked: int | None = None
        self._file_start = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _return_free_memory()  # else the next method reuses memory the C allocator kept, unseen by RSS
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.measure = "CUDA allocator: peak allocated above the start"
        elif _reset_high_water_mark():
            self._start = _proc_status_bytes("VmRSS")
            self._file_start = _proc_status_bytes("RssFile")
            self.measure = (
                "peak resident set size above the start (Linux VmHWM, reset via /proc/self/clear_refs), "
                "less library pages first loaded during the run (RssFile growth)"
            )
        else:
            self._start = _ru_maxrss_bytes()
            self.measure = "getrusage ru_maxrss delta (0 while the run stays under the process's earlier peak)"
        return self

    def _peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.measure.startswith("peak resident"):  # code pages mapped in on first use are not the run's data
            return _proc_status_bytes("VmHWM") - max(0, _proc_status_bytes("RssFile") - self._file_start)
        return _ru_maxrss_bytes()

    def mark(self) -> None:
        """Take the peak now (at the last training step), so that what follows is left out."""
        self._marked = self._peak()

    def __exit__(self, *exc: object) -> None:
        peak = self._marked if self._marked is not None else self._peak()
        self.peak_bytes = max(0, peak - self._start)

    def progress(self, callback: ProgressCallback | None) -> ProgressCallback:
        """`callback`, which also marks the peak at the last step of the run."""

        def report(p: Progress) -> None:
            if p.step == p.total_steps:
                self.mark()
            if callback is not None:
                callback(p)

        return report


def _return_free_memory() -> None:
    """glibc's malloc_trim(0): hand freed heap memory back to the system (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_bytes("VmHWM") > 0
    except OSError:
        return False


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def safetensors_size(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the safetensors file these tensors would make (float32, as the store saves them)."""
    plain = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    return len(save_safetensors_bytes(plain, metadata={"format": "pt"}))


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a run ran on, saved beside its numbers: versions, threads, CPUs, load (and the device, if given)."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg": load,
    }
    if device is not None:
        record["device"] = str(device)
    return record
