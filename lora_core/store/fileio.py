"""Atomic writes: a reader sees the old file or the new one, never half of either.

Writers swap whole folders in (replace_dir) and repair an interrupted swap (recover_dir); both run only
under the artifacts folder's writer lock (storage.ArtifactStore.writing). Readers never rename, delete or
create anything: read_dir_files reads a folder consistently while a writer may be swapping it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.errors import ArtifactError


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; saved work should read like any other file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def parse_json(data: bytes | str, where: str | Path) -> Any:
    """The value a JSON document holds. Every JSON the lab reads comes through here, so that any way it can
    fail to decode (bad bytes, bad syntax, nesting too deep for the parser, a number too long to convert)
    becomes the same ArtifactError naming `where`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text)
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    except RecursionError:
        reason = "nested too deeply"
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg}: line {exc.lineno} column {exc.colno}"
    except ValueError:  # int(): a number with more digits than Python converts
        reason = "it holds a number too long to read"
    raise ArtifactError(f"{where} is not valid JSON ({reason})")


def parse_json_object(data: bytes | str, where: str | Path) -> dict[str, Any]:
    """parse_json for the files that hold one JSON object (every file the lab writes)."""
    value = parse_json(data, where)
    if not isinstance(value, dict):
        raise ArtifactError(f"{where} should hold a JSON object, found {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_staging_dir(final: Path) -> Path:
    """A hidden temporary folder beside `final`, to be filled and then swapped in by replace_dir."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    staging.chmod(0o755)  # mkdtemp makes 0700; a saved folder should open like any other (files are 0644)
    return staging


def _backup_path(final: Path) -> Path:
    return final.parent / f".{final.name}.previous"


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written folder in for `final`.

    Two renames: final -> .final.previous, staging -> final. If the process dies between them,
    recover_dir() puts the previous folder back, so a complete folder is always found.
    """
    recover_dir(final)  # an earlier interrupted swap: its backup may be the only complete copy
    backup = _backup_path(final)
    if final.exists():
        if backup.exists():
            shutil.rmtree(backup)
        os.rename(final, backup)
    os.rename(staging, final)
    _fsync_dir(final.parent)
    shutil.rmtree(backup, ignore_errors=True)


STALE_STAGING_SECONDS = 3600.0


def recover_dir(final: Path, stale_seconds: float = STALE_STAGING_SECONDS) -> None:
    """Undo a replace_dir() interrupted between its two renames, and drop staging folders that a
    killed writer left behind (only those older than `stale_seconds`: a live writer may be filling a
    recent one; the holder of the writer lock, just after taking it, knows there is none and passes 0)."""
    backup = _backup_path(final)
    if backup.exists():
        if final.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(backup, final)
    if not final.parent.is_dir():
        return
    now = time.time()
    for staging in final.parent.glob(f".{final.name}.staging-*"):
        try:
            if now - staging.stat().st_mtime >= stale_seconds:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            continue


@dataclass(frozen=True)
class FileRead:
    """One file as read: its bytes (None if it is not there) and what identifies that version on disk."""

    data: bytes | None
    identity: tuple[int, int, int, int] | None  # device, inode, mtime_ns, size


class FileTooLarge(Exception):
    """A file is larger than the reader allows (raised by read_dir_files, before reading it)."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(f"{path} is {size} bytes")
        self.path = path
        self.size = size


class FolderKeptChanging(Exception):
    """read_dir_files could not get one consistent version of a folder."""


def current_dir(final: Path) -> Path | None:
    """The folder that holds `final`'s complete content right now, without changing anything: `final`,
    or its backup while a swap is in progress (or was interrupted and not yet repaired by a writer)."""
    if final.is_dir():
        return final
    backup = _backup_path(final)
    return backup if backup.is_dir() else None


def read_dir_files(
    final: Path, names: Sequence[str], max_bytes: int, attempts: int = 50
) -> tuple[Path, dict[str, FileRead]] | None:
    """Read files of folder `final` as one consistent version, read-only; None if there is no such folder.

    A writer may swap the folder at any moment (two renames, then the backup is deleted). A read counts
    only if the folder read is the same one before and after (same inode), and, when it was the backup,
    the swap has not completed meanwhile (then the backup is being deleted). Otherwise it is read again.
    """
    backup = _backup_path(final)
    for attempt in range(attempts):
        folder = current_dir(final)
        if folder is None:
            if attempt == 0:
                continue  # both looked absent: a swap may have completed between the two checks
            return None
        try:
            before = os.stat(folder)
            files = {name: _read_file(folder / name, max_bytes) for name in names}
            after = os.stat(folder)
        except FileNotFoundError:
            time.sleep(0.002 * attempt)
            continue
        if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino) or (folder == backup and final.is_dir()):
            time.sleep(0.002 * attempt)
            continue
        return folder, files
    raise FolderKeptChanging(f"{final} kept changing while it was being read")


def _read_file(path: Path, max_bytes: int) -> FileRead:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise  # the folder itself went away: read it again
        return FileRead(None, None)
    except (IsADirectoryError, NotADirectoryError):
        return FileRead(None, None)
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):  # Linux opens a folder read-only; only reading it fails
        os.close(fd)
        return FileRead(None, None)
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > max_bytes:
            raise FileTooLarge(path, info.st_size)
        data = fh.read()
    return FileRead(data, (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
