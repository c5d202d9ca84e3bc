"""Background runs: training, fine-tuning and the whole study, in a thread that survives clicks.

A Job holds the thread, its status, the latest lora_core Progress, the loss history, the result or
the error, and a threading.Event to stop it. The thread only calls lora_core and never touches
Streamlit; pages poll the Job (stored in st.session_state) from a fragment. A stopped or failed run
saves nothing: lora_core writes only complete results.
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lora_core.data import MnistData
from lora_core.errors import LoraCoreError, RunStopped, TrainingDiverged
from lora_core.evaluate import Evaluation
from lora_core.lora import LoraModel
from lora_core.storage import ArtifactStore, BaseModelRecord
from lora_core.study import finetune_and_save_adapter, run_study, train_and_save_base
from lora_core.train import FinetuneConfig, Progress, TrainConfig

RUNNING, DONE, FAILED, STOPPED = "running", "done", "failed", "stopped"
JOB_KEY = "job"

KIND_TITLES = {
    "train": "Training the base model",
    "finetune": "Fine-tuning a LoRA adapter",
    "study": "Running the whole study",
}


@dataclass
class Job:
    """One background run and everything the page needs to show about it."""

    kind: str
    title: str
    target: Callable[[Job], Any]
    status: str = RUNNING
    progress: Progress | None = None
    losses: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None
    announced: bool = False  # the page has rerun once after the job ended
    extra: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Job:
        self.thread = threading.Thread(target=self._run, name=f"dashboard-{self.kind}", daemon=True)
        self.thread.start()
        return self

    def on_progress(self, p: Progress) -> None:
        """lora_core's progress callback: called from the worker thread after every step."""
        with self._lock:
            self.progress = p
            self.losses.append(p.loss)
            self.phases.append(p.phase)

    def history(self) -> tuple[list[float], list[str]]:
        with self._lock:
            return list(self.losses), list(self.phases)

    def _run(self) -> None:
        try:
            self.result = self.target(self)
            self.status = DONE
        except RunStopped as exc:
            self.error = str(exc)
            self.status = STOPPED
        except TrainingDiverged as exc:
            self.error = str(exc)
            self.status = FAILED
        except LoraCoreError as exc:
            self.error = str(exc)
            self.status = FAILED
        except Exception as exc:  # a worker must never die silently: report it on the page
            self.error = f"{type(exc).__name__}: {exc}"
            self.extra["traceback"] = traceback.format_exc()
            self.status = FAILED
        finally:
            self.finished = time.time()

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


def start_training(store: ArtifactStore, data: MnistData, config: TrainConfig) -> Job:
    """Train and save a base model in the background (config already validated)."""

    def target(job: Job) -> dict[str, Any]:
        return train_and_save_base(store, data, config, job.on_progress, job.stop_event)

    return Job("train", KIND_TITLES["train"], target).start()


@dataclass
class FinetuneResult:
    outcome: Any  # lora_core.study.AdapterOutcome
    lora_model: LoraModel  # the model that was fine-tuned (its base weights can be checked)


def start_finetune(
    store: ArtifactStore,
    base: BaseModelRecord,
    data: MnistData,
    config: FinetuneConfig,
    name: str,
    overwrite: bool,
    base_eval: Evaluation | None,
) -> Job:
    """Fine-tune and save an adapter in the background on the job's own copy of the base model."""

    def target(job: Job) -> FinetuneResult:
        lora_model = LoraModel(copy.deepcopy(base.model))
        outcome = finetune_and_save_adapter(
            store,
            base,
            lora_model,
            data,
            config,
            name,
            overwrite=overwrite,
            progress=job.on_progress,
            stop=job.stop_event,
            base_eval=base_eval,
        )
        return FinetuneResult(outcome, lora_model)

    job = Job("finetune", f"Fine-tuning adapter '{name}'", target)
    job.extra["name"] = name
    return job.start()


def start_study(
    store: ArtifactStore,
    data: MnistData,
    train_config: TrainConfig,
    finetune_config: FinetuneConfig,
    retrain: bool,
) -> Job:
    """The whole study (train or reuse, evaluate, fine-tune the weakest digit, verify) in the background."""

    def target(job: Job) -> dict[str, Any]:
        return run_study(
            store, data, train_config, finetune_config, retrain=retrain, progress=job.on_progress, stop=job.stop_event
        )

    return Job("study", KIND_TITLES["study"], target).start()
