"""A process killed while saving never leaves a half-written model that loads; the previous one still loads.

The writer is killed at known points inside the save, not after a guessed delay: a hook in the child
process wraps os.replace / os.rename and SIGKILLs the process right after the file operation that marks
the stage. The test then checks on disk that the save really was cut off at that stage, before anything
reads the folder, and only then that a reader finds a complete model and that the next writer succeeds.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lora_core.model import MLP
from lora_core.store.artifacts import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]

# argv: artifacts folder, stage, then what to run: "save" (ArtifactStore.save_base of a new random model)
# or the arguments of `python -m lora_core`. Exits 0 if the stage was never reached.
KILL_AT_STAGE = """
import os, runpy, signal, sys
from pathlib import Path

root, stage, what = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3:]
base, backup = root / "base", root / ".base.previous"

def in_staging(dst, name):
    return dst.name == name and dst.parent.parent == root and dst.parent.name.startswith(".base.staging-")

REACHED = {  # (function, destination) -> True right after the operation that ends the stage
    "weights-staged": lambda fn, dst: fn == "replace" and in_staging(dst, "model.safetensors"),
    "meta-staged": lambda fn, dst: fn == "replace" and in_staging(dst, "model.json"),
    "old-moved-aside": lambda fn, dst: fn == "rename" and dst == backup,
    "new-in-place": lambda fn, dst: fn == "rename" and dst == base,
}[stage]

def hooked(fn):
    real = getattr(os, fn)
    def call(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if REACHED(fn, Path(os.path.abspath(dst))):
            os.kill(os.getpid(), signal.SIGKILL)
    setattr(os, fn, call)

hooked("replace")
hooked("rename")
if what == ["save"]:
    import torch
    from lora_core.model import MLP
    from lora_core.store.artifacts import ArtifactStore
    torch.manual_seed(12345)
    ArtifactStore(root).save_base(MLP(32, 32), {"note": "new"})
else:
    sys.argv = ["lora_core", *what]
    runpy.run_module("lora_core", run_name="__main__", alter_sys=True)
"""

STAGES = ["weights-staged", "meta-staged", "old-moved-aside", "new-in-place"]


def _copy(trained_artifacts: Path, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root)
    return root


def _kill_at(root: Path, stage: str, *what: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STAGE, str(root), stage, *what],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the writer was not killed at {stage!r} (exit {proc.returncode}): the save never reached it\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )


def _staging(root: Path) -> list[Path]:
    return sorted(root.glob(".base.staging-*"))


def _assert_cut_off_at(root: Path, stage: str, old_sha: str) -> None:
    """What is on disk right after the kill proves where the save stopped (checked before any read)."""
    base, backup = root / "base", root / ".base.previous"
    staged = _staging(root)
    if stage in ("weights-staged", "meta-staged"):
        assert ArtifactStore(root).base_meta()["sha256"] == old_sha, "the old model must still be in place"
        assert not backup.exists()
        assert len(staged) == 1, staged
        expected = {"model.safetensors"} | ({"model.json"} if stage == "meta-staged" else set())
        assert {p.name for p in staged[0].iterdir()} == expected
    elif stage == "old-moved-aside":
        assert not base.exists(), "killed between the renames: the old folder is aside, the new not in place"
        assert (backup / "model.safetensors").is_file() and (backup / "model.json").is_file()
        assert len(staged) == 1 and {p.name for p in staged[0].iterdir()} == {"model.safetensors", "model.json"}
    else:  # new-in-place: the swap is done, only the backup's removal is missing
        assert backup.is_dir() and (base / "model.json").is_file() and not staged


@pytest.mark.parametrize("stage", STAGES)
def test_killed_mid_save_leaves_a_loadable_model(trained_artifacts: Path, tmp_path: Path, stage: str) -> None:
    root = _copy(trained_artifacts, tmp_path)
    old_sha = ArtifactStore(root).base_meta()["sha256"]
    _kill_at(root, stage, "save")
    _assert_cut_off_at(root, stage, old_sha)

    record = ArtifactStore(root).load_base()  # a reader finds a complete model: the old one or the new one
    if stage == "new-in-place":
        assert record.meta.get("note") == "new" and record.model.hidden == (32, 32)
    else:
        assert record.fingerprint == old_sha
    assert ArtifactStore(root).adapter_names() == ["small"]

    # the next writer saves normally and leaves no backup of the model behind
    after = ArtifactStore(root).save_base(MLP(16, 16), {"note": "after"})
    assert ArtifactStore(root).load_base().fingerprint == after["sha256"]
    assert not (root / ".base.previous").exists()


def test_real_train_command_killed_between_the_renames(trained_artifacts: Path, tmp_path: Path) -> None:
    """The real `train` command (full MNIST, a small network), killed after moving the old model aside
    and before moving the new one in: the worst moment. The previous model still loads."""
    root = _copy(trained_artifacts, tmp_path)
    old_sha = ArtifactStore(root).base_meta()["sha256"]
    train = ["train", "--hidden", "32", "32", "--batch-size", "512", "--artifacts", str(root)]
    _kill_at(root, "old-moved-aside", *train)
    _assert_cut_off_at(root, "old-moved-aside", old_sha)
    record = ArtifactStore(root).load_base()
    assert record.fingerprint == old_sha
    assert ArtifactStore(root).adapter_names() == ["small"]
