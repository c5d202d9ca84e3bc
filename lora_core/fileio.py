"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


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
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))


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


def recover_dir(final: Path) -> None:
    """Undo a replace_dir() interrupted between its two renames, and drop staging folders that a
    killed writer left behind (only old ones: a live writer may be filling a recent one)."""
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
            if now - staging.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            continue
