"""Saved results of the wrong types: every file the lab saves (an experiment, a sweep, the analysis' two files, the
personal adapter's result, an adapter's metrics.json), written by a real short run, then damaged the way a hand
edit or another tool would: every number turned into a string, every top-level value set to null, one value
at a time set to null. Each reader refuses the file with an ArtifactError naming it (never another exception),
and the pages that list these files show it as skipped instead of failing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_core.errors import ArtifactError
from lora_core.lab.analysis import load_analysis
from lora_core.lab.experiments import list_experiments, load_experiment
from lora_core.lab.mydigits.personal import load_personal_result
from lora_core.lab.sweeps import list_sweeps, load_sweep
from lora_core.store.artifacts import ADAPTER_METRICS, ArtifactStore


def _experiment(root: Path) -> Path:
    return list_experiments(ArtifactStore(root))[0]


def _sweep(root: Path) -> Path:
    return list_sweeps(ArtifactStore(root))[0]


def _read_analysis(root: Path, _path: Path) -> Any:
    found = load_analysis(ArtifactStore(root))
    if found.errors:
        raise ArtifactError(found.errors[0])
    return found


def _read_metrics(root: Path, path: Path) -> Any:
    (record,) = [r for r in ArtifactStore(root).list_adapters() if r.path == path.parent]
    if record.error:
        raise ArtifactError(record.error)
    return record


# name: (where the file is in the artifacts folder, how the lab reads it)
FORMATS: dict[str, tuple[Callable[[Path], Path], Callable[[Path, Path], Any]]] = {
    "experiment": (_experiment, lambda root, path: load_experiment(path)),
    "sweep": (_sweep, lambda root, path: load_sweep(path)),
    "analysis-adapters": (lambda root: root / "analysis" / "adapters.json", _read_analysis),
    "analysis-memory": (lambda root: root / "analysis" / "memory.json", _read_analysis),
    "personal-result": (
        lambda root: root / "mydigits" / "result.json",
        lambda root, path: load_personal_result(ArtifactStore(root)),
    ),
    "adapter-metrics": (lambda root: root / "adapters" / "rotate-45" / ADAPTER_METRICS, _read_metrics),
}


def numbers_as_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: numbers_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_as_strings(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def top_level_null(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k in ("format", "base_sha256") else None for k, v in doc.items()}


@pytest.fixture
def damaged(saved_results: Path, tmp_path: Path) -> Callable[[str, Callable[[dict[str, Any]], dict[str, Any]]], Path]:
    """A copy of the saved folder with one format's file rewritten by `change`; returns the copy's root."""

    def make(name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Path:
        root = tmp_path / "artifacts"
        shutil.copytree(saved_results, root)
        path = FORMATS[name][0](root)
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return root

    return make


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_saved_format_reads_back_as_the_lab_wrote_it(saved_results: Path, name: str) -> None:
    locate, read = FORMATS[name]
    assert read(saved_results, locate(saved_results)) is not None


@pytest.mark.parametrize("change", [numbers_as_strings, top_level_null])
@pytest.mark.parametrize("name", list(FORMATS))
def test_a_file_of_the_wrong_types_is_refused_by_its_reader_naming_it(damaged, name: str, change) -> None:  # noqa: ANN001
    root = damaged(name, change)
    locate, read = FORMATS[name]
    path = locate(root)
    with pytest.raises(ArtifactError) as refused:
        read(root, path)
    message = str(refused.value)
    assert message.startswith(f"{path} is not a readable ") and ("found str" in message or "found null" in message)


@pytest.mark.parametrize("name", list(FORMATS))
def test_one_value_set_to_null_is_read_or_refused_never_a_crash(saved_results: Path, tmp_path: Path, name: str) -> None:
    locate, read = FORMATS[name]
    original = json.loads(locate(saved_results).read_text())
    paths = _value_paths(original)
    assert len(paths) > 10, paths
    root = tmp_path / "artifacts"
    shutil.copytree(saved_results, root)
    target = locate(root)
    refused = 0
    for keys in paths:
        doc = json.loads(json.dumps(original))
        _set(doc, keys, None)
        target.write_text(json.dumps(doc))
        try:
            read(root, target)
        except ArtifactError as exc:
            assert str(target) in str(exc), (keys, exc)
            refused += 1
    assert refused > len(paths) // 2, (refused, len(paths))  # most fields may not be null


def _value_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every dict key and the first item of every list, as paths from the top (leaves and containers)."""
    paths: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value[:1]) if isinstance(value, list) else []
    for key, child in items:
        paths.append((*prefix, key))
        paths += _value_paths(child, (*prefix, key))
    return paths


def _set(doc: Any, keys: tuple[Any, ...], value: Any) -> None:
    for key in keys[:-1]:
        doc = doc[key]
    doc[keys[-1]] = value


# --- the pages that show these files --------------------------------------------------------------------------------
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGE_OF = {  # the page that reads each format
    "experiment": "experiments",
    "sweep": "experiments",
    "analysis-adapters": "insight",
    "analysis-memory": "insight",
    "personal-result": "mydigits",
    "adapter-metrics": "finetune",
}


def every_accepted_null(name: str, doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The document with every value its reader accepts as null set to null at once (deepest first)."""
    locate, read = FORMATS[name]
    target = locate(root)
    accepted = []
    for keys in _value_paths(doc):
        trial = json.loads(json.dumps(doc))
        _set(trial, keys, None)
        target.write_text(json.dumps(trial))
        try:
            read(root, target)
        except ArtifactError:
            continue
        accepted.append(keys)
    nulled = json.loads(json.dumps(doc))
    for keys in sorted(accepted, key=len, reverse=True):
        _set(nulled, keys, None)
    return nulled


def _page_text(page: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return "\n".join(str(e.value) for group in (at.error, at.warning, at.markdown, at.caption) for e in group)


@pytest.mark.parametrize("name", list(FORMATS))
def test_pages_skip_a_file_of_the_wrong_types_and_say_why(damaged, name: str, monkeypatch) -> None:  # noqa: ANN001
    root = damaged(name, numbers_as_strings)
    shown = _page_text(PAGE_OF[name], root, monkeypatch)
    assert f"{FORMATS[name][0](root)} is not a readable " in shown


@pytest.mark.parametrize("name", list(FORMATS))
def test_pages_show_a_file_with_every_allowed_null(saved_results: Path, tmp_path: Path, name: str, monkeypatch) -> None:  # noqa: ANN001
    root = tmp_path / "artifacts"
    shutil.copytree(saved_results, root)
    path = FORMATS[name][0](root)
    nulled = every_accepted_null(name, json.loads(path.read_text()), root)
    path.write_text(json.dumps(nulled))
    FORMATS[name][1](root, path)  # still readable
    shown = _page_text(PAGE_OF[name], root, monkeypatch)
    assert str(path) not in shown  # shown, not skipped
