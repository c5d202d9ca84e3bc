"""Background runs: training, fine-tuning and the whole study, in a worker process that survives clicks.

A Job holds the worker, its status, the latest lora_core Progress, the loss history, the result or
the error, and an event to stop it. The work runs in its own process, which reads MNIST and
the base model from disk itself (nothing large crosses between processes). In a thread of the
server it would compete for the GIL with Streamlit's own threads: measured here, one busy Python
thread slows a training thread about 9x. A small thread in the server only moves the worker's
messages into the Job; neither touches Streamlit (and this module never imports it: the worker
process imports it to unpickle its target).

One run per artifacts folder per server: REGISTRY (module-level, shared by every browser tab of this
server process) holds the latest Job of each folder and refuses to start a second one while one runs.
Every tab reads the same Job, so each shows the same progress and can stop it. The worker holds the
folder's writer lock (lora_core.store.artifacts) for its whole run, so a CLI run and the dashboard also
exclude each other. A stopped or failed run saves nothing: lora_core writes only complete results.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch.multiprocessing  # noqa: F401 - registers PyTorch's pickling of tensors for the workers' queues

from dashboard import workers
from lora_core.data import MnistData, load_mnist
from lora_core.errors import AdapterExistsError, ArtifactError, ConfigError, LoraCoreError
from lora_core.evaluate import Evaluation
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import ExperimentResult, run_experiment
from lora_core.lab.mydigits.personal import PersonalResult, PersonalSettings, train_personal
from lora_core.lab.study import (
    AdapterOutcome,
    finetune_and_save_adapter,
    load_base_for_lora,
    run_study,
    train_and_save_base,
)
from lora_core.lab.sweeps import SweepResult, run_sweep
from lora_core.lab.tasks import Task
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord
from lora_core.store.paths import default_data_dir
from lora_core.train import FinetuneConfig, Progress, TrainConfig

if TYPE_CHECKING:  # imported by the analysis job itself, which alone needs it
    from lora_core.lab.analysis import AnalysisResult

RUNNING, DONE, FAILED, STOPPED = "running", "done", "failed", "stopped"

KIND_TITLES = {
    "train": "Training the base model",
    "finetune": "Fine-tuning a LoRA adapter",
    "study": "Running the whole study",
    "experiment": "Running an experiment (methods side by side)",
    "analysis": "Running the analysis (the adapters' subspaces, memory)",
    "sweep": "Running a sweep (one LoRA setting over several values)",
    "intruders": "Measuring intruder dimensions (LoRA at three ranks and full fine-tuning)",
}


_CONTEXT = workers.CONTEXT  # forkserver, or spawn (dashboard/workers.py)
_STATUS_OF_ERROR = {"RunStopped": STOPPED}


def _worker(
    store: ArtifactStore, label: str, target: Callable[..., Any], args: tuple, messages: Any, stop: Any
) -> None:
    """Runs in the worker process: hold the folder's writer lock, call lora_core, report progress, then
    the result or the error. The lock goes with the process, however it ends."""

    def progress(p: Progress) -> None:
        messages.put(("progress", p))

    try:
        with store.writing(label):
            result = target(*args, progress=progress, stop=stop)
        messages.put(("done", result))
    except AdapterExistsError as exc:  # saved by someone else while this run trained: nothing is replaced
        text = (
            f"an adapter called {exc.name!r} was saved by another run meanwhile, and it was kept. Fine-tune again "
            "with another name, or tick “Overwrite an adapter with the same name” on the Fine-tuning page"
        )
        messages.put(("error", type(exc).__name__, text, None))
    except ConfigError as exc:  # the page validated its settings; say what is wrong without internal names
        messages.put(("error", type(exc).__name__, exc.reason, None))
    except LoraCoreError as exc:
        messages.put(("error", type(exc).__name__, str(exc), None))
    except BaseException as exc:  # a worker must never die silently: report it on the page
        messages.put(("error", type(exc).__name__, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


@dataclass
class Job:
    """One background run and everything the page needs to show about it."""

    kind: str
    title: str
    target: Callable[..., Any]  # a module-level function whose first argument is the ArtifactStore
    args: tuple = ()
    owner: str | None = None  # the browser tab that started it: it gets the result (e.g. the new adapter active)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
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
    extra: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Job:
        messages = _CONTEXT.Queue()
        self.process = _CONTEXT.Process(
            target=_worker,
            args=(self.store, f"the dashboard: {self.title}", self.target, self.args, messages, self.stop_event),
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

    @property
    def store(self) -> ArtifactStore:
        return self.args[0]

    @property
    def root(self) -> str:
        return str(self.store.root.resolve())

    @property
    def since(self) -> str:
        return datetime.fromtimestamp(self.started, UTC).strftime("%H:%M:%S UTC")

    def fraction(self) -> float:
        """How far the current phase is (0 to 1): the one number every progress display shows."""
        p = self.progress
        return 0.0 if p is None else min(1.0, max(0.0, p.fraction))

    def step_text(self) -> str:
        """'train: step 90 of 235': the one description of where the run is, for every display."""
        p = self.progress
        if p is None:
            return "starting"
        return f"{p.phase}: step {p.step:,} of {p.total_steps:,}"

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


class RunInProgress(Exception):
    """A run already writes this artifacts folder; `job` is that run."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"{job.title} is running (since {job.since})")
        self.job = job


class JobRegistry:
    """The latest Job of each artifacts folder in this server process: at most one of them running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def latest(self, store: ArtifactStore) -> Job | None:
        with self._lock:
            return self._jobs.get(str(store.root.resolve()))

    def running(self, store: ArtifactStore) -> Job | None:
        job = self.latest(store)
        return job if job is not None and job.running else None

    def start(self, job: Job) -> Job:
        """Start `job` unless a run of its folder is going on (then raise RunInProgress)."""
        with self._lock:
            current = self._jobs.get(job.root)
            if current is not None and current.running:
                raise RunInProgress(current)
            try:
                job.start()
            except BaseException:  # no worker came up: leave no "running" job that nothing will end
                job.stop()
                raise
            self._jobs[job.root] = job
        return job


REGISTRY = JobRegistry()


def _data() -> MnistData:
    return load_mnist(default_data_dir())


def _train(store: ArtifactStore, config: TrainConfig, progress: Any, stop: Any) -> dict[str, Any]:
    return train_and_save_base(store, _data(), config, progress, stop)


def start_training(store: ArtifactStore, config: TrainConfig, owner: str | None = None) -> Job:
    """Train and save a base model in the background (config already validated)."""
    return REGISTRY.start(Job("train", KIND_TITLES["train"], _train, (store, config), owner))


def _finetune(
    store: ArtifactStore,
    base_sha256: str,
    config: FinetuneConfig,
    name: str,
    overwrite: bool,
    base_eval: Evaluation | None,
    progress: Any,
    stop: Any,
) -> AdapterOutcome:
    # the worker holds the writer lock already: the base cannot change between this load and the save
    base, lora_model = load_base_for_lora(store, "cpu")
    if base.fingerprint != base_sha256:
        raise ArtifactError("the base model was replaced while this run was starting; start it again")
    return finetune_and_save_adapter(
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


def start_finetune(
    store: ArtifactStore,
    base: BaseModelRecord,
    config: FinetuneConfig,
    name: str,
    overwrite: bool,
    base_eval: Evaluation | None,
    owner: str | None = None,
) -> Job:
    """Fine-tune and save an adapter in the background on the worker's own copy of the base model."""
    job = Job(
        "finetune",
        f"Fine-tuning adapter '{name}'",
        _finetune,
        (store, base.fingerprint, config, name, overwrite, base_eval),
        owner,
    )
    job.extra["name"] = name
    return REGISTRY.start(job)


def _study(
    store: ArtifactStore,
    train_config: TrainConfig,
    finetune_config: FinetuneConfig,
    retrain: bool,
    progress: Any,
    stop: Any,
) -> dict[str, Any]:
    """The whole study; its adapter never replaces a saved one (digit-9 taken: saved as digit-9-2)."""
    return run_study(
        store, _data(), train_config, finetune_config, retrain=retrain, progress=progress, stop=stop, fresh_name=True
    )


def start_study(
    store: ArtifactStore,
    train_config: TrainConfig,
    finetune_config: FinetuneConfig,
    retrain: bool,
    owner: str | None = None,
) -> Job:
    """The whole study (train or reuse, evaluate, fine-tune the weakest digit, verify) in the background."""
    return REGISTRY.start(
        Job("study", KIND_TITLES["study"], _study, (store, train_config, finetune_config, retrain), owner)
    )


def _experiment(
    store: ArtifactStore, task: Task, settings: ExperimentSettings, progress: Any, stop: Any
) -> ExperimentResult:
    """Every chosen method on the task, saved to <artifacts>/experiments/ (a stop saves no result). An
    unseen task trains its own base model the first time (default settings), never the main one."""
    base_config = TrainConfig(device=settings.device, precision=settings.precision)
    return run_experiment(store, _data(), task, settings, base_config=base_config, progress=progress, stop=stop)


def start_experiment(store: ArtifactStore, task: Task, settings: ExperimentSettings, owner: str | None = None) -> Job:
    """Compare the methods of `settings` on `task` in the background (settings already validated)."""
    job = Job("experiment", f"Experiment {task.spec}", _experiment, (store, task, settings), owner)
    job.extra["task"] = task.spec
    return REGISTRY.start(job)


# --- the analysis: the paper's analysis of three adapters, and the memory table ------------------------
def _analysis(store: ArtifactStore, settings: Any, progress: Any, stop: Any) -> AnalysisResult:
    """Train (or reuse) the three analysis adapters, analyse them, measure memory; saved to <artifacts>/analysis/."""
    from lora_core.lab.analysis import run_analysis

    return run_analysis(store, _data(), settings, progress=progress, stop=stop)


def start_analysis(store: ArtifactStore, settings: Any, owner: str | None = None) -> Job:
    """Run lora_core.lab.analysis.run_analysis in the background (settings: an AnalysisSettings, already validated)."""
    return REGISTRY.start(Job("analysis", KIND_TITLES["analysis"], _analysis, (store, settings), owner))


def _intruders(store: ArtifactStore, settings: Any, progress: Any, stop: Any) -> dict[str, Any]:
    """Every intruder run, measured and saved to <artifacts>/analysis/intruders.json (a stop saves nothing)."""
    from lora_core.lab.analysis.intruders import run_intruders

    return run_intruders(store, _data(), settings, progress=progress, stop=stop)


def start_intruders(store: ArtifactStore, settings: Any, owner: str | None = None) -> Job:
    """Run lora_core.lab.analysis.intruders.run_intruders in the background (settings: IntruderSettings, validated)."""
    return REGISTRY.start(Job("intruders", KIND_TITLES["intruders"], _intruders, (store, settings), owner))


def experiment_adapter(result: ExperimentResult) -> str | None:
    """The LoRA adapter an experiment saved, if it can be made active with the main base model: an unseen
    task's adapter belongs to that task's own base (bases/<name>), which the other pages do not load."""
    lora = result.method("lora")
    if lora is None or not lora.adapter or result.base.get("name") != "main":
        return None
    return lora.adapter


def _sweep(
    store: ArtifactStore,
    task: Task,
    kind: str,
    values: tuple[float, ...],
    settings: ExperimentSettings,
    progress: Any,
    stop: Any,
) -> SweepResult:
    """Every value of the sweep on the task, each point on the base loaded once here (run_sweep keeps it and
    trains a fresh adapter per value), saved to <artifacts>/experiments/sweep-*.json (a stop saves nothing)."""
    base_config = TrainConfig(device=settings.device, precision=settings.precision)
    return run_sweep(
        store, _data(), task, kind, values, settings, base_config=base_config, progress=progress, stop=stop
    )


def start_sweep(
    store: ArtifactStore,
    task: Task,
    kind: str,
    values: tuple[float, ...],
    settings: ExperimentSettings,
    owner: str | None = None,
) -> Job:
    """Run a rank or replay sweep on `task` in the background (values and settings already validated)."""
    job = Job(
        "sweep", f"{kind.capitalize()} sweep on {task.spec}", _sweep, (store, task, kind, values, settings), owner
    )
    job.extra.update(task=task.spec, sweep=kind, values=list(values))
    return REGISTRY.start(job)


# --- The personal adapter, trained on the user's own digits ("my digits") ---
KIND_TITLES["personal"] = "Training my personal adapter"


def _personal(store: ArtifactStore, settings: PersonalSettings, progress: Any, stop: Any) -> PersonalResult:
    """Fine-tune the personal adapter on the collection with MNIST replay; lora_core saves the adapter and its
    result (held-out table, MNIST before/after) only when the run completes."""
    return train_personal(store, _data(), settings, progress=progress, stop=stop)


def start_personal(store: ArtifactStore, settings: PersonalSettings, owner: str | None = None) -> Job:
    """Train the personal adapter in the background; `settings` already checked by the page."""
    return REGISTRY.start(Job("personal", KIND_TITLES["personal"], _personal, (store, settings), owner))
