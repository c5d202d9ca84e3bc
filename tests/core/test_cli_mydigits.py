"""`python -m lora_core mydigits ...`: in-process through lora_core.cli.main (exit status, stdout, stderr),
and once in a real subprocess for the one-line error without a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from core_helpers import file_bytes
from PIL import Image

from benchmarks.writers import WRITERS, draw
from lora_core.cli import main
from lora_core.data import MnistData
from lora_core.errors import ArtifactError
from lora_core.lab.mydigits.collection import MyDigits
from lora_core.lab.mydigits.personal import PersonalSettings, load_personal_result, train_personal
from lora_core.lora import LoraModel
from lora_core.store.artifacts import ArtifactStore

REPO = Path(__file__).resolve().parents[2]


def picture(folder: Path, digit: int, sample: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digit}-{sample}.png"
    Image.fromarray(draw(WRITERS[1], digit, sample)).save(path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_add_list_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "art"
    pics = [picture(tmp_path / "pics", 7, s) for s in range(2)]
    status, out, err = run(capsys, "mydigits", "add", *pics, "--label", "7", "--writer", "me", "--artifacts", art)
    assert status == 0, err
    assert "added as 7-" in out and "7s: 2" in out
    status, out, _ = run(capsys, "mydigits", "list", "--json", "--artifacts", art)
    listed = json.loads(out)  # --json alone: nothing but the JSON on stdout
    assert status == 0 and listed["counts"]["7"] == 2 and listed["missing"]["7"] == 1
    assert [d["writer"] for d in listed["digits"]] == ["me", "me"]
    status, out, _ = run(capsys, "mydigits", "list", "--artifacts", art)
    assert status == 0 and "2 drawings" in out and "draw 3 more 0s" in out
    first = listed["digits"][0]["id"]
    status, out, _ = run(capsys, "mydigits", "delete", first, "--artifacts", art, "--json", tmp_path / "d.json")
    assert status == 0 and f"Deleted {first}" in out
    assert json.loads((tmp_path / "d.json").read_text())["deleted"] == [first]
    assert [d.id for d in MyDigits(ArtifactStore(art)).list()] == [listed["digits"][1]["id"]]


def test_an_id_given_twice_is_deleted_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "art"
    pics = [picture(tmp_path / "pics", 2, s) for s in range(2)]
    assert run(capsys, "mydigits", "add", *pics, "--label", "2", "--artifacts", art)[0] == 0
    first, second = (d.id for d in MyDigits(ArtifactStore(art)).list())
    status, out, err = run(capsys, "mydigits", "delete", first, first, "--artifacts", art)
    assert (status, err, out.count("Deleted")) == (0, "", 1)
    assert [d.id for d in MyDigits(ArtifactStore(art)).list()] == [second]


def test_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, zip_path = tmp_path / "a", tmp_path / "b", tmp_path / "mine.zip"
    for d in (1, 4):
        assert run(capsys, "mydigits", "add", picture(tmp_path / "p", d), "--label", d, "--artifacts", a)[0] == 0
    status, out, _ = run(capsys, "mydigits", "export", zip_path, "--artifacts", a)
    assert status == 0 and "Exported 2 drawings" in out and zip_path.is_file()
    status, _, err = run(capsys, "mydigits", "export", zip_path, "--artifacts", a)
    assert status == 2 and err.startswith("error: ZIP: ") and "exists already" in err and "--overwrite" in err
    status, _, err = run(capsys, "mydigits", "export", tmp_path, "--artifacts", a)  # ZIP is positional: no --zip
    assert status == 2 and err.startswith(f"error: ZIP: {tmp_path} is a folder"), err
    status, _, err = run(capsys, "mydigits", "export", zip_path / "x.zip", "--artifacts", a)  # under a file
    assert status == 2 and err.startswith(f"error: ZIP: cannot write {zip_path / 'x.zip'}") and "\n" not in err.strip()
    status, out, _ = run(capsys, "mydigits", "import", zip_path, "--artifacts", b)
    assert status == 0 and "Imported 2 drawings" in out
    assert [d.id for d in MyDigits(ArtifactStore(a)).list()] == [d.id for d in MyDigits(ArtifactStore(b)).list()]


def test_export_says_which_drawings_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, zip_path, report = tmp_path / "a", tmp_path / "mine.zip", tmp_path / "export.json"
    for d in (1, 4, 7):
        assert run(capsys, "mydigits", "add", picture(tmp_path / "p", d), "--label", d, "--artifacts", a)[0] == 0
    broken = MyDigits(ArtifactStore(a)).list()[1]
    (a / "mydigits" / "images" / f"{broken.id}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    status, out, err = run(capsys, "mydigits", "export", zip_path, "--artifacts", a, "--json", report)
    assert status == 0 and "Exported 2 drawings" in out
    assert err.startswith(f"warning: left out drawing {broken.id}: ") and "not a readable PNG picture" in err
    assert [s["id"] for s in json.loads(report.read_text())["skipped"]] == [broken.id]
    status, out, _ = run(capsys, "mydigits", "import", zip_path, "--artifacts", tmp_path / "b")
    assert status == 0 and "Imported 2 drawings" in out


ERRORS = {
    "label-12": (["add", "{pic}", "--label", "12"], 2, ["--label:", "12"]),
    "label-text": (["add", "{pic}", "--label", "x"], 2, ["--label", "'x'"]),
    "no-label": (["add", "{pic}"], 2, ["--label"]),
    "missing-file": (["add", "{tmp}/nosuch.png", "--label", "3"], 2, ["nosuch.png", "no such file"]),
    "empty-picture": (["add", "{empty}", "--label", "3"], 2, ["empty.png", "nothing is drawn"]),
    "one-blank-among-two": (["add", "{pic}", "{empty}", "--label", "1"], 2, ["empty.png", "nothing was added"]),
    "empty-file": (["add", "{tmp}/zero.png", "--label", "3"], 2, ["zero.png", "not a readable image"]),
    # above twice Pillow's own pixel limit Image.open raises DecompressionBombError, not an OSError
    "huge-picture": (["add", "{tmp}/huge.png", "--label", "3"], 2, ["huge.png", "too large"]),
    "delete-unknown": (["delete", "nosuch"], 2, ["no drawing 'nosuch'"]),
    "import-not-zip": (["import", "{pic}"], 1, ["not a zip archive", "nothing was imported"]),
    "import-missing": (["import", "{tmp}/nosuch.zip"], 2, ["nosuch.zip", "no such file"]),
    "train-too-few": (["train", "--steps", "5"], 1, ["draw 3 more 0s", "2 more 1s", "3 more 9s"]),
    "train-bad-steps": (["train", "--steps", "0"], 2, ["--steps:", "0"]),
    "unknown-subcommand": (["remove", "x"], 2, ["remove"]),
    "label-of-5000-digits": (["add", "{pic}", "--label", "7" * 5000], 2, ["--label:", "(5,000 characters)"]),
    "writer-line-break": (["add", "{pic}", "--label", "1", "--writer", "a\nb"], 2, ["--writer:", "U+000A"]),
    "writer-right-to-left": (["add", "{pic}", "--label", "1", "--writer", "\u202eevil"], 2, ["U+202E"]),
    "artifacts-empty": (["list", "--artifacts", ""], 2, ["--artifacts:", "an empty path"]),
    # a --json path that cannot be written is refused before the command runs (here: under a file)
    "json-unwritable": (["add", "{pic}", "--label", "1", "--json", "{pic}/out.json"], 2, ["--json:", "cannot write"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_with_a_status(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    args, expected_status, words = ERRORS[case]
    art = tmp_path / "art"
    pic = picture(tmp_path, 1)
    Image.fromarray(np.zeros((280, 280, 4), np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "zero.png").write_bytes(b"")
    if case == "huge-picture":
        Image.new("1", (13_400, 13_400)).save(tmp_path / "huge.png")  # 180 M pixels, 22 KB
    assert run(capsys, "mydigits", "add", pic, "--label", "1", "--artifacts", art)[0] == 0
    before = sorted(p.name for p in (art / "mydigits" / "images").iterdir())
    fields = {"pic": pic, "tmp": tmp_path, "empty": tmp_path / "empty.png"}
    status, out, err = run(capsys, "mydigits", *[a.format(**fields) for a in args], "--artifacts", art)
    assert status == expected_status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert sorted(p.name for p in (art / "mydigits" / "images").iterdir()) == before  # nothing changed


def test_an_os_error_is_one_line_with_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pic = picture(tmp_path, 1)  # the artifacts folder would lie under a file: mkdir raises NotADirectoryError
    status, _, err = run(capsys, "mydigits", "add", pic, "--label", "1", "--artifacts", pic / "art")
    assert status == 1 and err == f"error: {pic / 'art'}: Not a directory\n", err


def test_train(peft: ModuleType, artifacts_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ArtifactStore(artifacts_copy)
    collection = MyDigits(store)
    for digit in range(10):
        for sample in range(3):
            collection.add(draw(WRITERS[1], digit, sample), digit)
    status, out, err = run(
        capsys, "mydigits", "train", "--steps", "4", "--device", "cpu", "--json", "--artifacts", store.root
    )
    assert status == 0, err
    result = json.loads(out)
    assert (result["trained"], result["heldout"]) == (20, 10) and len(result["heldout_rows"]) == 10
    assert result == {"artifacts": str(store.root), **load_personal_result(store).to_dict()}
    assert store.adapter_exists("personal")
    # the personal adapter loads in Hugging Face PEFT to the same logits
    base = store.load_base("cpu")
    ours = LoraModel(base.model)
    store.load_adapter(ours, "personal", base.fingerprint)
    ours.set_adapter("personal")
    x = torch.randn(32, 784, generator=torch.Generator().manual_seed(0))
    theirs = peft.PeftModel.from_pretrained(store.load_base("cpu").model, str(store.adapter_dir("personal")))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
    status, out, err = run(capsys, "mydigits", "train", "--steps", "4", "--device", "cpu", "--artifacts", store.root)
    assert status == 0, err  # the personal adapter is replaced, not refused
    assert "Held-out drawings: base" in out and "MNIST test set: base" in out and "held-out drawing" in out


def test_train_never_replaces_an_adapter_called_personal_that_is_not_yours(
    artifacts_copy: Path, small_mnist: MnistData, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ArtifactStore(artifacts_copy)
    collection = MyDigits(store)
    for digit in range(10):
        for sample in range(3):
            collection.add(draw(WRITERS[1], digit, sample), digit)
    shutil.copytree(store.adapter_dir("small"), store.adapter_dir("personal"))  # as `finetune --name personal`
    before = file_bytes(store.adapter_dir("personal"))
    status, _, err = run(capsys, "mydigits", "train", "--steps", "4", "--device", "cpu", "--artifacts", store.root)
    assert status == 2 and err.count("\n") == 1 and "'personal'" in err and "rename or delete" in err, err
    with pytest.raises(ArtifactError, match="not trained on your drawings"):  # the library refuses too
        train_personal(store, small_mnist, PersonalSettings(steps=4, device="cpu"))
    assert file_bytes(store.adapter_dir("personal")) == before and load_personal_result(store) is None


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: no labels.json
    proc = subprocess.run(
        [sys.executable, "-m", "lora_core", "mydigits", "import", str(bad), "--artifacts", str(tmp_path / "art")],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: the zip has no labels.json; choose a zip exported from my digits; nothing was imported"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr
