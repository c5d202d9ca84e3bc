"""Readers never write and never break a writer: a process polling the artifacts folder (has_base,
list_adapters, read_adapter, load_base, load_adapter) while 20 saves swap its folders in."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP
from lora_core.store import fileio
from lora_core.store.artifacts import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
SAVES = 20
CONFIG = LoraConfig(r=2, alpha=2, target_modules=("linear1", "linear3"))

# Polls the folder until told to stop. Every call that could write (rename, replace, delete, create) is
# recorded and refused, so a reader that tried to "repair" a folder mid-swap would be caught. Each load
# checks that the adapter's weights and its metrics.json come from the same save (B is filled with the
# save's number). A read counts as made during the saves when the marker file (present from just before
# the first save to just after the last) exists both when it starts and when it ends. The reader prints
# "polling" after its first complete read, so the saves start only once it really polls.
READER = """
import json, os, shutil, sys, time, pathlib
root, stop_file, report = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
saving = pathlib.Path(sys.argv[4])
from lora_core.lora import LoraModel
from lora_core.store import fileio
from lora_core.store.artifacts import ArtifactStore
writes = []
def refuse(name):
    def call(*args, **kwargs):
        writes.append([name, [str(a) for a in args]])
        raise PermissionError(f"a reader called {name}")
    return call
for name in ("rename", "replace", "remove", "unlink", "rmdir", "mkdir", "makedirs"):
    setattr(os, name, refuse("os." + name))
shutil.rmtree = refuse("shutil.rmtree")
real_open = os.open
def guarded_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
        writes.append(["os.open for writing", [str(path)]])
        raise PermissionError("a reader opened a file for writing")
    return real_open(path, flags, *args, **kwargs)
os.open = guarded_open
store = ArtifactStore(root)
reads, reads_during_saves, errors = 0, 0, []
while not stop_file.exists():
    try:
        started_during_saves = saving.exists()
        assert store.has_base(), "has_base() was False"
        names = [r.name for r in store.list_adapters() if not r.error]
        assert names == ["a"], f"list_adapters() gave {names}"
        record = store.read_adapter("a")
        base = store.load_base()
        model = LoraModel(base.model)
        loaded = store.load_adapter(model, "a", base.fingerprint)
        b = model.adapter_state_dict("a")["base_model.model.linear1.lora_B.weight"]
        assert float(b.flatten()[0]) == loaded.metrics["version"], "weights and metrics.json of different saves"
        assert record.metrics["version"] <= loaded.metrics["version"]
        reads += 1
        if reads == 1:
            print("polling", flush=True)
        if started_during_saves and saving.exists():
            reads_during_saves += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
result = {"reads": reads, "reads_during_saves": reads_during_saves}
result.update(errors=errors[:20], n_errors=len(errors), writes=writes[:20])
os.open = real_open
with open(report, "w") as fh:
    json.dump(result, fh)
"""


def adapter_version(base: MLP, version: int) -> LoraModel:
    model = LoraModel(copy.deepcopy(base))  # LoraModel wraps the layers it is given in place
    model.add_adapter("a", CONFIG, seed=version)
    with torch.no_grad():
        for layer in model.lora_layers().values():
            if "a" in layer.lora_B:
                layer.lora_B["a"].weight.fill_(float(version))
    return model


def test_a_polling_reader_never_breaks_20_saves_and_never_writes(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    torch.manual_seed(0)
    base = MLP(64, 64)
    sha = store.save_base(base, {})["sha256"]
    store.save_adapter(adapter_version(base, 0), "a", {"version": 0}, sha)
    stop_file, report, saving = tmp_path / "stop", tmp_path / "report.json", tmp_path / "saving"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(root), str(stop_file), str(report), str(saving)],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.PIPE,
        text=True,
    )
    saved: list[int] = []
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "polling"
        saving.touch()  # from here to the end of the last save, the reader's reads count as concurrent
        for version in range(1, SAVES + 1):
            if version % 2:  # the same base model again: a real folder swap, same fingerprint
                assert store.save_base(base, {"version": version})["sha256"] == sha
            else:
                store.save_adapter(adapter_version(base, version), "a", {"version": version}, sha, overwrite=True)
            saved.append(version)
            time.sleep(0.05)
        saving.unlink()
        time.sleep(0.5)
    finally:
        stop_file.touch()
        reader.wait(timeout=60)
    assert saved == list(range(1, SAVES + 1))  # every save returned normally
    result = json.loads(report.read_text())
    assert result["writes"] == [], result["writes"]
    assert result["n_errors"] == 0, result["errors"]
    assert result["reads_during_saves"] >= 10, result  # it really polled while the folders were swapped
    assert result["reads"] > result["reads_during_saves"]  # and before and after them
    # the final state is the last save of each folder, complete, with nothing left behind
    assert store.base_meta()["version"] == SAVES - 1
    model = LoraModel(store.load_base().model)
    record = store.load_adapter(model, "a", sha)
    assert record.metrics["version"] == SAVES
    assert float(model.adapter_state_dict("a")["base_model.model.linear1.lora_B.weight"].flatten()[0]) == SAVES
    assert sorted(p.name for p in root.iterdir()) == ["adapters", "base"]
    assert [p.name for p in (root / "adapters").iterdir()] == ["a"]


def test_readers_leave_an_interrupted_swap_for_the_next_writer(tmp_path: Path) -> None:
    """A save killed between its two renames leaves only `.base.previous` (and `.a.previous`): readers
    read them as they are, and only the next writer puts them back."""
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    base = MLP(32, 32)
    sha = store.save_base(base, {"note": "kept"})["sha256"]
    store.save_adapter(adapter_version(base, 3), "a", {"version": 3}, sha)
    os.rename(root / "base", root / ".base.previous")
    os.rename(root / "adapters" / "a", root / "adapters" / ".a.previous")
    stale = root / "adapters" / ".a.staging-dead"
    stale.mkdir()

    def snapshot() -> list[tuple[str, int]]:
        return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))

    before = snapshot()
    reader = ArtifactStore(root)
    assert reader.has_base() and reader.base_meta()["note"] == "kept"
    assert reader.load_base().fingerprint == sha
    assert reader.adapter_names() == ["a"] and reader.read_adapter("a").metrics["version"] == 3
    reader.load_adapter(LoraModel(reader.load_base().model), "a", sha)
    assert reader.writer() is None
    assert snapshot() == before  # nothing renamed, deleted or created

    ArtifactStore(root).recover()  # a writer repairs the folder
    assert sorted(p.name for p in root.iterdir()) == ["adapters", "base"]
    assert sorted(p.name for p in (root / "adapters").iterdir()) == ["a"]
    assert ArtifactStore(root).read_adapter("a").metrics["version"] == 3


# In-process checks of fileio's building blocks: what a reader gets back, and the exact shape of what a
# writer leaves on disk.


def test_read_dir_files_returns_each_file_with_its_identity_and_refuses_one_too_large(tmp_path: Path) -> None:
    final = tmp_path / "folder"
    final.mkdir()
    (final / "a.bin").write_bytes(b"12345")
    (final / "sub").mkdir()
    folder, files = fileio.read_dir_files(final, ["a.bin", "missing", "sub"], max_bytes=5)
    assert folder == final
    info = os.stat(final / "a.bin")
    assert files["a.bin"] == fileio.FileRead(b"12345", (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
    assert files["missing"] == fileio.FileRead(None, None)
    assert files["sub"] == fileio.FileRead(None, None)
    with pytest.raises(fileio.FileTooLarge) as caught:
        fileio.read_dir_files(final, ["a.bin"], max_bytes=4)
    assert (caught.value.path, caught.value.size) == (final / "a.bin", 5)
    assert str(caught.value) == f"{final / 'a.bin'} is 5 bytes"
    assert fileio.read_dir_files(tmp_path / "absent", ["a.bin"], max_bytes=5) is None


def test_read_dir_files_reads_the_backup_of_a_swap_under_way_and_leaves_it(tmp_path: Path) -> None:
    final = tmp_path / "folder"
    backup = tmp_path / ".folder.previous"
    backup.mkdir()
    (backup / "a").write_bytes(b"old")
    assert fileio.current_dir(final) == backup
    folder, files = fileio.read_dir_files(final, ["a"], max_bytes=10)
    assert (folder, files["a"].data) == (backup, b"old")
    assert backup.is_dir() and not final.exists()  # repairing is a writer's job


def test_read_dir_files_gives_up_on_a_folder_that_keeps_changing(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "folder"
    final.mkdir()
    inodes = iter(range(1000))
    real_stat = os.stat

    def stat_with_a_new_inode_each_time(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if Path(path) == final:
            return os.stat_result((info.st_mode, next(inodes), *tuple(info)[2:]))
        return info

    monkeypatch.setattr(fileio.os, "stat", stat_with_a_new_inode_each_time)
    sleeps: list[float] = []
    monkeypatch.setattr(fileio.time, "sleep", sleeps.append)
    with pytest.raises(fileio.FolderKeptChanging, match="kept changing"):
        fileio.read_dir_files(final, ["a"], max_bytes=10, attempts=3)
    assert sleeps == pytest.approx([0.0, 0.002, 0.004])  # waits a little longer before each new attempt


def test_atomic_json_is_indented_ends_with_a_newline_and_makes_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "x.json"
    fileio.atomic_write_json(target, {"a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_new_staging_dir_is_hidden_beside_its_folder_and_opens_like_any_other(tmp_path: Path) -> None:
    final = tmp_path / "parent" / "f"
    staging = fileio.new_staging_dir(final)
    assert staging.parent == final.parent and staging.name.startswith(".f.staging-")
    assert stat.S_IMODE(staging.stat().st_mode) == 0o755


def test_recover_dir_keeps_a_recent_staging_folder_unless_told_none_is_live(tmp_path: Path) -> None:
    final = tmp_path / "f"
    final.mkdir()
    recent = tmp_path / ".f.staging-recent"
    recent.mkdir()
    old = tmp_path / ".f.staging-old"
    old.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fileio.recover_dir(final)
    assert recent.is_dir() and not old.exists()
    fileio.recover_dir(final, stale_seconds=0)
    assert not recent.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_write_fills_a_hidden_temp_file_beside_the_target_and_makes_missing_folders(
    tmp_path: Path, monkeypatch
) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    temps: list[Path] = []
    real_replace = os.replace

    def replace_and_record(src, dst):
        temps.append(Path(src))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace_and_record)
    fileio.atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    # same folder, so the rename is atomic; hidden and marked, so nothing lists a half-written file as saved
    assert temps[0].parent == target.parent
    assert temps[0].name.startswith(".x.json.") and temps[0].name.endswith(".tmp")
    assert fileio.new_staging_dir(tmp_path / "c" / "d" / "f").parent == tmp_path / "c" / "d"


def test_recover_dir_treats_a_staging_folder_exactly_stale_seconds_old_as_stale(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "f"
    final.mkdir()
    staging = tmp_path / ".f.staging-x"
    staging.mkdir()
    os.utime(staging, (1000.0, 1000.0))
    monkeypatch.setattr(fileio.time, "time", lambda: 1000.0)
    fileio.recover_dir(final, stale_seconds=0)
    assert not staging.exists()


def test_read_dir_files_reads_again_when_the_folder_vanishes_or_a_swap_completes(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "folder"
    backup = tmp_path / ".folder.previous"
    backup.mkdir()
    (backup / "a").write_bytes(b"old")
    real_read = fileio._read_file
    calls: list[Path] = []

    def read_while_a_writer_works(path: Path, max_bytes: int) -> fileio.FileRead:
        calls.append(path)
        if len(calls) <= 2:
            raise FileNotFoundError(path)  # the folder went away mid-read, twice
        if len(calls) == 3:
            final.mkdir()  # the swap completes while the backup is being read
            (final / "a").write_bytes(b"new")
        return real_read(path, max_bytes)

    sleeps: list[float] = []
    monkeypatch.setattr(fileio, "_read_file", read_while_a_writer_works)
    monkeypatch.setattr(fileio.time, "sleep", sleeps.append)
    folder, files = fileio.read_dir_files(final, ["a"], max_bytes=10)
    assert (folder, files["a"].data) == (final, b"new")
    assert sleeps == pytest.approx([0.0, 0.002, 0.004])


def test_read_dir_files_looks_twice_before_calling_a_folder_absent(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "folder"
    final.mkdir()
    (final / "a").write_bytes(b"x")
    answers = iter([None, final])
    monkeypatch.setattr(fileio, "current_dir", lambda path: next(answers))
    folder, files = fileio.read_dir_files(final, ["a", "a/inner"], max_bytes=10)
    assert folder == final
    assert files["a/inner"] == fileio.FileRead(None, None)  # a file where a folder should be
