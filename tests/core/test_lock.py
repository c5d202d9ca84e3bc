"""One writer at a time per artifacts folder: a second process (or the CLI) gets a clear "busy" error
naming the holder; the lock goes with a killed holder; an adapter name taken meanwhile is refused at save."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lora_core.errors import AdapterExistsError, ArtifactError, ArtifactsBusy
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.model import MLP
from lora_core.store.artifacts import ArtifactStore, describe_holder
from lora_core.train import FinetuneConfig

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from lora_core.store.artifacts import ArtifactStore
with ArtifactStore(sys.argv[1]).writing("a test holding the lock"):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the writer lock of tmp_path/artifacts (killed at the end)."""
    root = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    yield root, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_a_second_writer_is_refused_with_who_holds_the_lock(holder) -> None:
    root, proc = holder
    store = ArtifactStore(root)
    assert store.writer() is not None and store.writer()["pid"] == proc.pid
    started = time.monotonic()
    with pytest.raises(ArtifactsBusy) as info:
        store.save_base(MLP(8, 8), {})
    assert 1.5 < time.monotonic() - started < 10  # it waited briefly (LOCK_WAIT_S), then refused
    message = str(info.value)
    assert isinstance(info.value, ArtifactError)  # so the CLI prints it as one line
    assert "is busy: a test holding the lock" in message and f"process {proc.pid}" in message
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", message), message
    assert not store.has_base() and not (root / "base").exists()
    with pytest.raises(ArtifactsBusy):
        store.delete_adapter("anything")
    # the lock goes with the process, however it ends
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.writer() is None
    store.save_base(MLP(8, 8), {})
    assert store.has_base()
    assert sorted(p.name for p in root.iterdir()) == ["base"]  # the lock's note goes with the lock


def test_the_cli_gets_one_line_busy_error(holder) -> None:
    root, _ = holder
    proc = subprocess.run(
        [sys.executable, "-m", "lora_core", "train", "--hidden", "16", "16", "--artifacts", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "busy: a test holding the lock" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not ArtifactStore(root).has_base()


def test_the_lock_is_reentrant_in_its_thread_and_exclusive_across_threads(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    seen: list[str] = []
    with store.writing("outer"):
        with store.writing("inner"):  # the study's workflows nest: train inside the whole study
            store.save_base(MLP(8, 8), {})
        assert store.writer()["what"] == "outer"

        def other_thread() -> None:
            try:
                with store.writing("other", wait_s=0.2):
                    seen.append("got it")
            except ArtifactsBusy as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(30)
    assert len(seen) == 1 and "busy: outer" in seen[0]
    assert store.writer() is None


def test_a_name_taken_during_fine_tuning_is_refused_at_save(trained_artifacts: Path, tmp_path: Path, small_mnist):
    """overwrite=False is checked again at save time, under the lock: the adapter saved meanwhile stays.

    The other save comes from the progress callback, in the thread that holds the lock (a writer of
    another process would be refused by the lock itself, see above)."""
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root)
    store = ArtifactStore(root)
    base, lora_model = load_base_for_lora(store, "cpu")
    other_base, other = load_base_for_lora(store, "cpu")
    store.load_adapter(other, "small", base.fingerprint, as_name="late")

    def save_late_meanwhile(progress) -> None:  # noqa: ANN001 - Progress
        if not store.adapter_exists("late"):
            store.save_adapter(other, "late", {"note": "saved meanwhile"}, other_base.fingerprint)

    config = FinetuneConfig(rank=4, alpha=8, steps=5, batch_size=64, seed=0, device="cpu")
    with pytest.raises(AdapterExistsError, match="'late' already exists"):
        finetune_and_save_adapter(store, base, lora_model, small_mnist, config, "late", progress=save_late_meanwhile)
    assert store.read_adapter("late").metrics["note"] == "saved meanwhile"
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == ["late", "small"]
    assert store.unused_adapter_name("late") == "late-2" and store.unused_adapter_name("free") == "free"


@pytest.mark.parametrize(
    ("holder_info", "described"),
    [
        (
            {"what": "training", "pid": 7, "since": "2026-11-29T10:42:03+00:00"},
            "training (process 7, since 2026-11-29 10:42:03 UTC)",
        ),
        ({}, "another run (process ?, since an unknown time)"),
        ({"what": "", "pid": 7, "since": "yesterday"}, "another run (process 7, since yesterday)"),
    ],
    ids=["complete", "empty", "unparsable-time"],
)
def test_the_holder_is_described_even_from_partial_lock_info(holder_info: dict, described: str) -> None:
    assert describe_holder(holder_info) == described


@pytest.mark.parametrize(
    "lock_info", [None, "", '{"what": "half wr', "[1, 2]"], ids=["none", "empty", "partial", "list"]
)
def test_a_holder_without_readable_lock_info_is_another_run(tmp_path: Path, lock_info: str | None) -> None:
    store = ArtifactStore(tmp_path)
    if lock_info is not None:
        (tmp_path / ".lock").write_text(lock_info)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # a writer that has not written .lock (yet)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.writer() == {"what": "another run"}
    finally:
        os.close(fd)
    assert store.writer() is None
