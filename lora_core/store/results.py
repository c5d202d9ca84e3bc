"""Saved results: the JSON files the lab's workflows leave in the artifacts folder, and the one way to read them.

    <artifacts>/experiments/<slug>-<UTC time>.json          experiments and sweeps (save_result, saved_results)
    <artifacts>/analysis/adapters.json, memory.json         the paper's analysis
    <artifacts>/mydigits/result.json                        the last personal adapter

Every result is a JSON object written atomically (write_saved: a reader sees the old file or the new one), most
with a "format" field naming its kind and version ("lora_core.experiment.v1"), which the reader checks where
it is given one. read_saved is the one reader: it bounds the size read, never unpickles, checks the document
against its format's schema, and says in an ArtifactError which file is broken and why.

Each format's schema (lora_core.store.schema) is a TypedDict beside its writer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypeVar

from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.errors import ArtifactError
from lora_core.numbers import Number
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.fileio import atomic_write_json, parse_json_object
from lora_core.store.schema import check_schema

EXPERIMENTS_DIR = "experiments"
MAX_READ_BYTES = 64 * 1024 * 1024  # far above any result; a larger file is not one


class SavedResult(Protocol):
    path: str | None

    def to_dict(self) -> dict[str, Any]: ...


_Result = TypeVar("_Result", bound=SavedResult)


# --- schemas ------------------------------------------------------------------------------------------------------
class Environment(TypedDict):
    """lora_core.lab.run.environment: what a run ran on."""

    torch: str
    python: str
    threads: int
    cpus: int | None
    loadavg: NotRequired[list[Number] | None]
    device: NotRequired[str]


class RunRecord(TypedDict):
    """run_record's fields, which every saved run ends with."""

    created: str
    seconds: Number
    environment: Environment
    path: NotRequired[str | None]
    notes: NotRequired[list[str]]


RUN_FIELDS = ("created", "seconds", "environment", "path", "notes")


def run_record(result: Any) -> dict[str, Any]:
    """The fields every saved run ends with (when, how long, on what, where saved, notes), in their saved order."""
    return {key: getattr(result, key) for key in RUN_FIELDS}


def run_fields(data: dict[str, Any]) -> dict[str, Any]:
    """run_record's fields read back from a saved file (`path` and `notes` may be missing from older files)."""
    return {
        "created": data["created"],
        "seconds": data["seconds"],
        "environment": data["environment"],
        "path": data.get("path"),
        "notes": list(data.get("notes") or []),
    }


def check_format(data: dict[str, Any], fmt: str, what: str) -> None:
    if data.get("format") != fmt:
        raise ArtifactError(f"not {what} of format {fmt!r} (found {data.get('format')!r})")


def known_fields(cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of dataclass `cls` (a newer file's extra keys are left out)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in known}


def experiments_dir(store: ArtifactStore) -> Path:
    return store.root / EXPERIMENTS_DIR


def write_saved(path: Path | str, data: dict[str, Any]) -> None:
    """Write a result atomically, as indented JSON ending in a newline."""
    atomic_write_json(path, data)


def read_saved(path: Path | str, what: str, fmt: str | None = None, schema: type | None = None) -> dict[str, Any]:
    """A saved result's JSON object; ArtifactError names the file and says why it is not a saved `what`
    ("experiment result", ...): unreadable, too large, not a JSON object, (with `fmt`) of another format, or
    (with `schema`) a field missing or of the wrong type. FileNotFoundError passes through, for callers to
    whom a missing file means "never saved"."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_READ_BYTES:
            raise ArtifactError(f"{path} is {size / 2**20:.0f} MiB, larger than any saved {what}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read as a saved {what} ({exc})") from exc
    data = parse_json_object(raw, path)
    if fmt is not None and data.get("format") != fmt:
        raise ArtifactError(f"{path} is not a saved {what} of format {fmt!r} (found {data.get('format')!r})")
    if schema is not None:
        check_schema(data, schema, path, what)
    return data


def load_result(
    path: Path | str,
    what: str,
    from_dict: Callable[[dict[str, Any]], _Result],
    schema: type | None = None,
    fmt: str | None = None,
) -> _Result:
    """Read a saved result into its class; ArtifactError says why a file is not one (`what`: "sweep result", ...)."""
    path = Path(path)
    try:
        data = read_saved(path, what, fmt, schema)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} cannot be read as a saved {what} ({exc})") from exc
    try:
        return from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a complete {what} ({exc})") from exc


def saved_results(store: ArtifactStore, pattern: str, exclude: tuple[str, ...] = (".",)) -> list[Path]:
    """The files in <artifacts>/experiments/ matching `pattern` whose names do not start with `exclude`,
    newest first."""
    folder = experiments_dir(store)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(exclude)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def save_result(store: ArtifactStore, stem: str, result: SavedResult) -> Path:
    """Write `result` atomically to <artifacts>/experiments/<stem>-<UTC time>.json (a second one in the
    same second gets -2, -3 ...) and set its `path`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = experiments_dir(store)
    path, n = folder / f"{stem}-{stamp}.json", 1
    while path.exists():  # two runs in one second: keep both
        n += 1
        path = folder / f"{stem}-{stamp}-{n}.json"
    result.path = str(path)
    write_saved(path, result.to_dict())
    return path
