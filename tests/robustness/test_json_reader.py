"""One JSON reader for every file the lab reads: each way a document can fail to decode (bad bytes, bad syntax,
nesting deeper than the parser goes, a number too long to convert) is the same one-line ArtifactError naming
the file, from the library, the command line and the pages alike."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from lora_core.cli import main
from lora_core.errors import ArtifactError
from lora_core.store.artifacts import LOCK_INFO, ArtifactStore
from lora_core.store.fileio import parse_json, parse_json_object
from lora_core.store.results import read_saved

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
CASES = {
    "deep-array": (DEEP_ARRAY, "nested too deeply"),
    "deep-object": (DEEP_OBJECT, "nested too deeply"),
    "not-utf8": (b'{"a": "\xff"}', "not UTF-8 text: invalid start byte at byte 7"),
    "truncated": (b'{"a": [1, 2', "line 1 column 12"),
    "long-number": (b'{"label": ' + b"7" * 5000 + b"}", "a number too long to read"),
    "empty": (b"", "Expecting value: line 1 column 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_decoding_failure_is_one_artifact_error_naming_the_file(case: str) -> None:
    data, reason = CASES[case]
    with pytest.raises(ArtifactError) as caught:
        parse_json(data, "somewhere/file.json")
    message = str(caught.value)
    assert message.startswith("somewhere/file.json is not valid JSON (") and reason in message
    assert "\n" not in message and "sys.set_int_max_str_digits" not in message


def test_a_json_object_is_required_where_the_lab_writes_objects() -> None:
    assert parse_json_object(b'{"a": 1}', "f") == {"a": 1}
    assert parse_json(b"[1]", "f") == [1] and parse_json("2", "f") == 2
    for data, found in ((b"[1]", "an array"), (b"null", "null"), (b'"x"', "a string"), (b"3.5", "a number")):
        with pytest.raises(ArtifactError, match=f"^f should hold a JSON object, found {found}$"):
            parse_json_object(data, "f")


def test_a_deeply_nested_saved_result_is_reported_by_path(tmp_path: Path) -> None:
    path = tmp_path / "experiments" / "digit-9.json"
    path.parent.mkdir()
    path.write_bytes(DEEP_ARRAY)
    with pytest.raises(ArtifactError, match=f"^{path} is not valid JSON .nested too deeply.$"):
        read_saved(path, "experiment result")


def test_a_deeply_nested_lock_info_still_names_a_writer(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (tmp_path / LOCK_INFO).write_bytes(DEEP_OBJECT)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process holding the lock, as far as the reader can tell
        assert store.writer() == {"what": "another run"}
    finally:
        os.close(fd)


def test_mydigits_list_with_a_deeply_nested_collection_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "mydigits" / "labels.json"
    labels.parent.mkdir()
    labels.write_bytes(DEEP_ARRAY)
    status = main(["mydigits", "list", "--artifacts", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: {labels} is not valid JSON (nested too deeply); fix or delete the file to start a new collection"
    ]
