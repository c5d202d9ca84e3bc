"""lora_core.store.results: the one reader of saved results, and the atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_core.errors import ArtifactError
from lora_core.store import results
from lora_core.store.results import load_result, read_saved, write_saved

FMT = "lora_core.example.v1"


def test_a_written_result_reads_back_as_written(tmp_path: Path) -> None:
    doc = {"format": FMT, "value": 1.5, "rows": [1, 2]}
    write_saved(tmp_path / "sub" / "r.json", doc)
    assert (tmp_path / "sub" / "r.json").read_text() == json.dumps(doc, indent=2) + "\n"
    assert read_saved(tmp_path / "sub" / "r.json", "example result", FMT) == doc
    assert not list((tmp_path / "sub").glob(".*"))  # no temporary file left beside it


def test_the_reader_names_the_file_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"format": "lora_core.other.v1"}))
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "big.json").write_text(json.dumps({"format": FMT, "pad": "x" * 100}))
    with pytest.raises(ArtifactError, match=r"other.json is not a saved example result of format .*lora_core.other"):
        read_saved(tmp_path / "other.json", "example result", FMT)
    with pytest.raises(ArtifactError, match="list.json should hold a JSON object"):
        read_saved(tmp_path / "list.json", "example result", FMT)
    with pytest.raises(ArtifactError, match=r"broken.json is not valid JSON \(Expecting property name"):
        read_saved(tmp_path / "broken.json", "example result")
    with pytest.raises(FileNotFoundError):  # a caller decides what "never saved" means
        read_saved(tmp_path / "missing.json", "example result")
    monkeypatch.setattr(results, "MAX_READ_BYTES", 50)
    with pytest.raises(ArtifactError, match="big.json is 0 MiB, larger than any saved example result"):
        read_saved(tmp_path / "big.json", "example result", FMT)


def test_load_result_says_a_result_is_incomplete(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"format": FMT}))

    def from_dict(data: dict) -> object:
        return data["value"]

    with pytest.raises(ArtifactError, match="r.json is not a complete example result"):
        load_result(tmp_path / "r.json", "example result", from_dict)
    with pytest.raises(ArtifactError, match="gone.json cannot be read as a saved example result"):
        load_result(tmp_path / "gone.json", "example result", from_dict)
