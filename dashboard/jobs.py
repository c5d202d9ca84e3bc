"""Background runs: training, fine-tuning and the whole study, in a worker process that survives clicks.

A Job holds the worker, its status, the latest lora_core Progress, the loss history, the result or
the error, and an event to stop it. The work runs in its own spawned process, which reads MNIST and
the base model from disk itself (nothing large crosses between processes). In a thread of the
server it would compete for the GIL with Streamlit's own threads: measured here, one busy Python
thread slows a training thread about 9x. A small thread in the server only moves the worker's
messages into the Job; neither touches Streamlit. Pages poll the Job (kept in st.session_state)
from a fragment. A stopped or failed run saves nothing: lora_core writes only complete results.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from lora_core.data import MnistData, load_mnist
from lora_core.errors import ArtifactError, LoraCoreError
from lora_core.evaluate import Evaluation
from lora_core.lora import LoraModel
from lora_core.model import MLP
from lora_core.paths import default_data_dir
from lora_core.storage import ArtifactStore, BaseModelRecord
from lora_core.study import finetune_and_save_adapter, load_base_for_lora, run_study, train_and_save_base
from lora_core.train import FinetuneConfig, Progress, TrainConfig

RUNNING, DONE, FAILED, STOPPED = "running", "done", "failed", "stopped"
JOB_KEY = "job"

KIND_TITLES = {
    "train": "Training the base model",
    "finetune": "Fine-tuning a LoRA adapter",
    "study": "Running the whole study",
}


_CONTEXT = mp.get_context("spawn")  # fork would copy the server's threads and locks into the child
_STATUS_OF_ERROR = {"RunStopped": STOPPED}


def _worker(target: Callable[..., Any], args: tuple, messages: Any, stop: Any) -> None:
    """Runs in the worker process: call lora_core, report progress, then the result or the error."""

    def progress(p: Progress) -> None:
        messages.put(("progress", p))

    try:
        messages.put(("done", target(*args, progress=progress, stop=stop)))
    except LoraCoreError as exc:
        messages.put(("error", type(exc).__name__, str(exc), None))
    except BaseException as exc:  # a worker must never die silently: report it on the page
        messages.put(("error", type(exc).__name__, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


@dataclass
class Job:
    """One background run and everything the page needs to show about it."""

    kind: str
    title: str
    target: Callable[..., Any]  # a module-level function: it is sent to the worker process
    args: tuple = ()
    status: str = RUNNING
    progress: Progress | None = None
    losses: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    stop_event: Any = field(default_factory=_CONTEXT.Event)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    process: Any = None
    thread: threading.Thread | None = None
    announced: bool = False  # the page has rerun once after the job ended
    extra: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Job:
        messages = _CONTEXT.Queue()
        self.process = _CONTEXT.Process(
            target=_worker,
            args=(self.target, self.args, messages, self.stop_event),
            name=f"dashboard-{self.kind}",
            daemon=True,
        )
        self.process.start()
        self.thread = threading.Thread(
            target=self._listen, args=(messages,), name=f"dashboard-{self.kind}", daemon=True
        )
        self.thread.start()
        return self

    def on_progress(self, p: Progress) -> None:
        with self._lock:
            self.progress = p
            self.losses.append(p.loss)
            self.phases.append(p.phase)

    def history(self) -> tuple[list[float], list[str]]:
        with self._lock:
            return list(self.losses), list(self.phases)

    def _listen(self, messages: Any) -> None:
        """In the server: move the worker's messages into this Job until it ends."""
        try:
            while True:
                try:
                    message = messages.get(timeout=0.5)
                except (OSError, EOFError) as exc:
                    self._end(FAILED, f"lost contact with the worker process ({exc}); nothing was saved")
                    return
                except queue.Empty:
                    if not self.process.is_alive():
                        self._end(
                            FAILED,
                            f"the worker process ended unexpectedly (exit code "
                            f"{self.process.exitcode}); nothing was saved",
                        )
                        return
                    continue
                if message[0] == "progress":
                    self.on_progress(message[1])
                elif message[0] == "done":
                    self.result = message[1]
                    self._end(DONE)
                    return
                else:
                    _, kind, text, trace = message
                    if trace:
                        self.extra["traceback"] = trace
                    self._end(_STATUS_OF_ERROR.get(kind, FAILED), text)
                    return
        finally:
            self.process.join(timeout=10)

    def _end(self, status: str, error: str | None = None) -> None:
        self.error = error
        self.finished = time.time()
        self.status = status

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


def _data() -> MnistData:
    return load_mnist(default_data_dir())


def _train(store: ArtifactStore, config: TrainConfig, progress: Any, stop: Any) -> dict[str, Any]:
    return train_and_save_base(store, _data(), config, progress, stop)


def start_training(store: ArtifactStore, config: TrainConfig) -> Job:
    """Train and save a base model in the background (config already validated)."""
    return Job("train", KIND_TITLES["train"], _train, (store, config)).start()


@dataclass
class FinetuneResult:
    """What the worker hands back: the outcome, and the fine-tuned model's weights as plain arrays
    (tensors sent through a queue live in the sender's shared memory, which ends with the worker)."""

    outcome: Any  # lora_core.study.AdapterOutcome
    base_weights: dict[str, np.ndarray]  # the base tensors as the worker held them after fine-tuning
    adapter_weights: dict[str, np.ndarray]
    hidden: tuple[int, int]

    @functools.cached_property
    def lora_model(self) -> LoraModel:
        """The fine-tuned model, rebuilt in this process (its base weights can be checked)."""
        base = MLP(*self.hidden)
        base.load_state_dict({k: torch.from_numpy(v) for k, v in self.base_weights.items()})
        model = LoraModel(base)
        name = self.outcome.name
        tensors = {k: torch.from_numpy(v) for k, v in self.adapter_weights.items()}
        model.load_adapter_tensors(name, self.outcome.config.lora_config(), tensors)
        model.set_adapter(name)
        return model


def _finetune(
    store: ArtifactStore,
    base_sha256: str,
    config: FinetuneConfig,
    name: str,
    overwrite: bool,
    base_eval: Evaluation | None,
    progress: Any,
    stop: Any,
) -> FinetuneResult:
    base, lora_model = load_base_for_lora(store, "cpu")
    if base.fingerprint != base_sha256:
        raise ArtifactError("the base model was replaced while this run was starting; start it again")
    outcome = finetune_and_save_adapter(
        store,
        base,
        lora_model,
        _data(),
        config,
        name,
        overwrite=overwrite,
        progress=progress,
        stop=stop,
        base_eval=base_eval,
    )
    return FinetuneResult(
        outcome,
        {k: v.detach().cpu().numpy().copy() for k, v in lora_model.base_state_dict().items()},
        {k: v.cpu().numpy().copy() for k, v in lora_model.adapter_state_dict(outcome.name).items()},
        lora_model.model.hidden,
    )


def start_finetune(
    store: ArtifactStore,
    base: BaseModelRecord,
    config: FinetuneConfig,
    name: str,
    overwrite: bool,
    base_eval: Evaluation | None,
) -> Job:
    """Fine-tune and save an adapter in the background on the worker's own copy of the base model."""
    job = Job(
        "finetune",
        f"Fine-tuning adapter '{name}'",
        _finetune,
        (store, base.fingerprint, config, name, overwrite, base_eval),
    )
    job.extra["name"] = name
    return job.start()


def _study(
    store: ArtifactStore,
    train_config: TrainConfig,
    finetune_config: FinetuneConfig,
    retrain: bool,
    progress: Any,
    stop: Any,
) -> dict[str, Any]:
    return run_study(store, _data(), train_config, finetune_config, retrain=retrain, progress=progress, stop=stop)


def start_study(store: ArtifactStore, train_config: TrainConfig, finetune_config: FinetuneConfig, retrain: bool) -> Job:
    """The whole study (train or reuse, evaluate, fine-tune the weakest digit, verify) in the background."""
    return Job("study", KIND_TITLES["study"], _study, (store, train_config, finetune_config, retrain)).start()
