"""My digits: the collection store, zip export/import and its refusals, the held-out split, and the
personal adapter trained on a synthetic writer's drawings."""

from __future__ import annotations

import dataclasses
import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.writers import WRITERS, draw, writer
from lora_core.errors import ArtifactError, ConfigError, ImageError
from lora_core.evaluate import predict
from lora_core.lab.mydigits import collection as md
from lora_core.lab.mydigits.collection import MyDigit, MyDigits, MyDigitsImportError, missing, split
from lora_core.lab.mydigits.personal import (
    NotEnoughDigitsError,
    PersonalResult,
    PersonalSettings,
    augment_pixels,
    load_personal_result,
    train_personal,
)
from lora_core.lora import LoraModel
from lora_core.preprocess import prepare_digit
from lora_core.store.artifacts import ArtifactStore


def collection(root: Path) -> MyDigits:
    return MyDigits(ArtifactStore(root))


def snapshot(c: MyDigits) -> dict[str, bytes]:
    """Every file of the collection's folder, by relative path."""
    if not c.folder.exists():
        return {}
    return {str(p.relative_to(c.folder)): p.read_bytes() for p in sorted(c.folder.rglob("*")) if p.is_file()}


def fill(c: MyDigits, per_digit: int, w_name: str = "neat", digits: range = range(10)) -> list[MyDigit]:
    w = writer(w_name)
    return [c.add(draw(w, d, s), d, source="guided", writer=w.name) for d in digits for s in range(per_digit)]


# --- the store ---------------------------------------------------------------------------------------
def test_add_list_pixels_original_delete(tmp_path: Path) -> None:
    c = collection(tmp_path)
    assert c.list() == [] and c.counts() == dict.fromkeys(range(10), 0)
    picture = draw(WRITERS[0], 7, 0)
    seven = c.add(picture, 7)
    four = c.add(draw(WRITERS[0], 4, 0)[:, :, 0], 4, source="cli", writer="me")  # a gray array works too
    assert [d.label for d in c.list()] == [4, 7]
    assert c.counts()[4] == 1 and c.counts()[7] == 1 and sum(c.counts().values()) == 2
    assert four.writer == "me" and four.source == "cli" and seven.source == "draw"
    pixels = c.pixels(seven.id)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    expected = np.rint(prepare_digit(picture).pixels * 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)  # exactly what the model sees
    assert np.array_equal(c.original(seven.id), picture)
    labels = json.loads((c.folder / "labels.json").read_text())
    assert labels["version"] == 1 and {e["id"] for e in labels["digits"]} == {seven.id, four.id}

    c.delete(seven.id)
    assert [d.id for d in c.list()] == [four.id]
    assert not (c.folder / "images" / f"{seven.id}.png").exists()
    assert not (c.folder / "originals" / f"{seven.id}.png").exists()
    with pytest.raises(ArtifactError, match="no drawing"):
        c.delete(seven.id)
    with pytest.raises(ArtifactError, match="no drawing"):
        c.pixels("../../base/model")  # an unknown id never becomes a path


def test_a_picture_is_read_without_parsing_labels_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page showing 2,000 drawings parsed labels.json once per drawing: 22-31 s per render instead of 3-4 s."""
    c = collection(tmp_path)
    added = fill(c, 1, digits=range(3))
    parses = []
    monkeypatch.setattr(md, "_parse_labels", lambda *a: parses.append(a) or [])
    for d in added:
        c.pixels(d.id)
        c.original(d.id)
    assert parses == []
    with pytest.raises(ArtifactError, match="no drawing '9-nosuch'"):  # an unknown plain name: now it looks
        c.pixels("9-nosuch")


def test_add_refuses_empty_drawings_and_bad_labels(tmp_path: Path) -> None:
    c = collection(tmp_path)
    first = c.add(draw(WRITERS[0], 1, 0), 1)
    before = snapshot(c)
    with pytest.raises(ImageError, match="nothing is drawn"):
        c.add(np.zeros((280, 280, 4), dtype=np.uint8), 3)
    for label in (10, -1, True, 2.0, "3"):
        with pytest.raises(ConfigError, match="label"):
            c.add(draw(WRITERS[0], 3, 0), label)  # type: ignore[arg-type]
    assert snapshot(c) == before and [d.id for d in c.list()] == [first.id]


def test_a_large_drawing_is_kept_bounded(tmp_path: Path) -> None:
    c = collection(tmp_path)
    big = np.zeros((3000, 1500), dtype=np.uint8)
    big[500:2500, 700:800] = 255
    d = c.add(big, 1)
    assert max(c.original(d.id).shape) == md.MAX_ORIGINAL_SIDE


@pytest.mark.parametrize("operation", ["add", "delete"])
def test_a_failed_write_leaves_the_collection_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    c = collection(tmp_path)
    kept = fill(c, 1, digits=range(2))
    before_list, before_files = c.list(), snapshot(c)

    def disk_full(path: Path, obj: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(md, "atomic_write_json", disk_full)
    with pytest.raises(OSError, match="No space"):
        if operation == "add":
            c.add(draw(WRITERS[0], 5, 0), 5)
        else:
            c.delete(kept[0].id)
    assert c.list() == before_list
    assert snapshot(c) == before_files  # a refused write changes nothing, not even an unlisted picture
    for d in kept:
        assert c.pixels(d.id).shape == (28, 28) and c.original(d.id).ndim == 3
    monkeypatch.undo()
    (c.folder / ".labels.json.x1.tmp").write_text("{half")  # as a killed writer leaves it
    # the next writer removes the half-written file a killed writer left
    c.add(draw(WRITERS[0], 6, 0), 6)
    assert not (c.folder / ".labels.json.x1.tmp").exists()
    listed = {d.id for d in c.list()}
    assert {p.stem for p in (c.folder / "images").iterdir()} == listed
    assert {p.stem for p in (c.folder / "originals").iterdir()} == listed
    assert before_files.keys() - {"labels.json"} <= snapshot(c).keys()


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under every size limit, deeper than the parser goes


def test_a_broken_labels_file_is_reported(tmp_path: Path) -> None:
    c = collection(tmp_path)
    fill(c, 1, digits=range(1))
    (c.folder / "labels.json").write_text('{"version": 1, "digits": [{"id": "x", "label": 11}]}')
    with pytest.raises(ArtifactError, match="label must be a digit"):
        c.list()
    (c.folder / "labels.json").write_bytes(DEEP_JSON)
    with pytest.raises(ArtifactError, match="labels.json is not valid JSON .nested too deeply.; fix or delete"):
        c.list()


# --- zip export and import -----------------------------------------------------------------------
def test_export_import_round_trip(tmp_path: Path) -> None:
    source = collection(tmp_path / "a")
    added = fill(source, 1, "european", range(4))
    data = source.export_zip().data
    target = collection(tmp_path / "b")
    imported = target.import_zip(data)
    assert [d.id for d in imported] == [d.id for d in source.list()] == [d.id for d in target.list()]
    assert all(d.source == "import" and d.writer == "european" for d in imported)
    for d in added:
        assert np.array_equal(target.pixels(d.id), source.pixels(d.id))
        assert np.array_equal(target.original(d.id), source.original(d.id))
    assert target.import_zip(data) == [] and len(target.list()) == len(added)  # the same zip again adds nothing


def test_export_leaves_out_a_drawing_with_a_damaged_picture_so_that_its_own_import_accepts_it(tmp_path: Path) -> None:
    source = collection(tmp_path / "a")
    added = fill(source, 1, digits=range(5))
    truncated, garbled, missing_file, *kept = added
    image = source.folder / "images" / f"{truncated.id}.png"
    image.write_bytes(image.read_bytes()[:50])
    original = source.folder / "originals" / f"{garbled.id}.png"
    data = bytearray(original.read_bytes())
    data[40:60] = bytes(20)
    original.write_bytes(bytes(data))
    (source.folder / "images" / f"{missing_file.id}.png").unlink()
    export = source.export_zip()
    assert [d.id for d in export.exported] == [d.id for d in kept]
    reasons = {d.id: why for d, why in export.skipped}
    assert list(reasons) == [truncated.id, garbled.id, missing_file.id]
    assert reasons[truncated.id].startswith(f"{image} is not a readable PNG picture")
    assert reasons[garbled.id].startswith(f"{original} is not a readable PNG picture")
    assert "No such file" in reasons[missing_file.id]
    target = collection(tmp_path / "b")
    assert [d.id for d in target.import_zip(export.data)] == [d.id for d in kept]


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name)
            if name == symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, content)
    return buffer.getvalue()


def _garbled_deflate(entries: dict[str, bytes], name: str) -> bytes:
    """A compressed zip whose entry `name` has 20 bytes of its deflate stream overwritten."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, content in entries.items():
            zf.writestr(entry, content)
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        start = zf.getinfo(name).header_offset + 30 + len(name.encode())
    data[start + 5 : start + 25] = b"\xff" * 20
    return bytes(data)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def good_entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    c = collection(tmp_path_factory.mktemp("zip-source"))
    fill(c, 1, digits=range(3))
    with zipfile.ZipFile(io.BytesIO(c.export_zip().data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _labels(entries: dict[str, bytes]) -> dict:
    return json.loads(entries["labels.json"])


def _with_labels(entries: dict[str, bytes], change) -> dict[str, bytes]:  # noqa: ANN001 - a small edit function
    labels = _labels(entries)
    change(labels)
    return {**entries, "labels.json": json.dumps(labels).encode()}


def _first_id(entries: dict[str, bytes]) -> str:
    return _labels(entries)["digits"][0]["id"]


def _bad_zips(good: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    first = _first_id(good)
    image = f"images/{first}.png"
    return {
        "not-a-zip": (b"PK\x03\x04 but not really a zip", "not a zip archive"),
        "empty": (b"", "empty"),
        "path-traversal": (_zip({**good, "../evil.png": good[image]}), "unexpected entry '../evil.png'"),
        "traversal-inside": (_zip({**good, "images/../../evil.png": good[image]}), "unexpected entry"),
        "absolute-name": (_zip({**good, "/etc/evil.png": good[image]}), "unexpected entry '/etc/evil.png'"),
        "unexpected-file": (_zip({**good, "images/x.exe": b"MZ"}), "unexpected entry 'images/x.exe'"),
        "symlink": (_zip(good, symlink=image), "symbolic link"),
        "not-png": (_zip({**good, image: b"GIF89a" + b"\0" * 100}), "is not a PNG"),
        "png-wrong-size": (_zip({**good, image: _png(np.zeros((29, 28), np.uint8))}), "28x28"),
        "png-corrupt": (_zip({**good, image: good[image][:40]}), "not a readable PNG"),
        "original-too-large": (
            _zip({**good, f"originals/{first}.png": _png(np.zeros((10, 2000), np.uint8))}),
            "larger than 1024x1024",
        ),
        "picture-too-big": (_zip({**good, image: b"\x89PNG\r\n\x1a\n" + bytes(md.MAX_PNG_BYTES)}), "more than"),
        "bad-label": (_zip(_with_labels(good, lambda j: j["digits"][0].update(label=10))), "label must be a digit"),
        "label-not-int": (_zip(_with_labels(good, lambda j: j["digits"][0].update(label="3"))), "label must be"),
        "labels-not-json": (_zip({**good, "labels.json": b"{not json"}), "not valid JSON"),
        "labels-deflate-garbled": (_garbled_deflate(good, "labels.json"), "'labels.json' cannot be read from the zip"),
        "labels-nested-deeply": (_zip({**good, "labels.json": DEEP_JSON}), "not valid JSON (nested too deeply)"),
        "label-of-5000-digits": (
            _zip({**good, "labels.json": good["labels.json"].replace(b'"label": ', b'"label": ' + b"7" * 5000, 1)}),
            "a number too long to read",
        ),
        "labels-wrong-version": (_zip(_with_labels(good, lambda j: j.update(version=7))), "version is 7"),
        "writer-control-character": (
            _zip(_with_labels(good, lambda j: j["digits"][0].update(writer="me\u202e"))),
            "writer must be printable text, found the control character U+202E",
        ),
        "labels-missing": (_zip({k: v for k, v in good.items() if k != "labels.json"}), "no labels.json"),
        "duplicate-id": (
            _zip(_with_labels(good, lambda j: j["digits"].append(dict(j["digits"][0])))),
            "twice",
        ),
        "unlisted-picture": (
            _zip({**good, "images/zz-extra.png": good[image], "originals/zz-extra.png": good[image]}),
            "not listed in labels.json",
        ),
        "listed-but-missing": (_zip({k: v for k, v in good.items() if k != image}), "which the zip lacks"),
        "id-with-path": (
            _zip(_with_labels(good, lambda j: j["digits"][0].update(id="../x"))),
            "is not a plain name",
        ),
    }


BAD_ZIP_CASES = list(_bad_zips({"labels.json": b'{"digits": [{"id": "a"}]}', "images/a.png": b""}))


@pytest.mark.parametrize("case", BAD_ZIP_CASES)
def test_import_refuses_a_bad_zip_and_changes_nothing(
    tmp_path: Path, good_entries: dict[str, bytes], case: str
) -> None:
    data, words = _bad_zips(good_entries)[case]
    c = collection(tmp_path)
    fill(c, 1, digits=range(7, 9))
    before_list, before_files = c.list(), snapshot(c)
    with pytest.raises(MyDigitsImportError) as caught:
        c.import_zip(data)
    assert words in str(caught.value)
    assert c.list() == before_list and snapshot(c) == before_files
    assert c.import_zip(_zip(good_entries))  # the same collection takes a good zip afterwards


def test_import_refuses_too_many_entries_and_too_many_drawings(
    tmp_path: Path, good_entries: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = collection(tmp_path)
    fill(c, 1, digits=range(2))
    before = snapshot(c)
    monkeypatch.setattr(md, "MAX_ZIP_ENTRIES", 4)
    with pytest.raises(MyDigitsImportError, match="7 entries, more than the 4 allowed"):
        c.import_zip(_zip(good_entries))
    monkeypatch.setattr(md, "MAX_ZIP_ENTRIES", 100)
    monkeypatch.setattr(md, "MAX_DIGITS", 4)  # 2 held + 3 new
    with pytest.raises(MyDigitsImportError, match="more than the 4 allowed"):
        c.import_zip(_zip(good_entries))
    assert snapshot(c) == before


def test_a_failed_import_write_leaves_nothing_behind(
    tmp_path: Path, good_entries: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = collection(tmp_path)
    fill(c, 1, digits=range(1))
    before = snapshot(c)

    def disk_full(path: Path, obj: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(md, "atomic_write_json", disk_full)
    with pytest.raises(OSError):
        c.import_zip(_zip(good_entries))
    assert snapshot(c) == before


@pytest.mark.parametrize("writer", ["import", "delete", "add"])
def test_every_writer_removes_what_a_killed_writer_left(
    tmp_path: Path, good_entries: dict[str, bytes], writer: str
) -> None:
    c = collection(tmp_path)
    kept = fill(c, 1, digits=range(2))
    leftovers = [  # a killed import: pictures labels.json does not list yet, half-written files
        c.folder / "images" / "9-killed.png",
        c.folder / "originals" / "9-killed.png",
        c.folder / "images" / ".9-other.png.abc.tmp",
        c.folder / ".labels.json.def.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    if writer == "import":
        c.import_zip(_zip(good_entries))
    elif writer == "delete":
        c.delete(kept[0].id)
    else:
        c.add(draw(WRITERS[0], 5, 0), 5)
    assert not any(path.exists() for path in leftovers)
    listed = {d.id for d in c.list()}
    assert {p.stem for p in (c.folder / "images").iterdir()} == listed


# --- split and missing ----------------------------------------------------------------------------------
def _fake(label: int, i: int) -> MyDigit:
    return MyDigit(f"{label}-x{i:03d}", label, f"2026-01-01T00:00:{i:02d}", "draw")


def test_split_is_stratified_and_fixed_by_the_seed() -> None:
    digits = [_fake(d, i) for d in range(10) for i in range(10)] + [_fake(3, 50), _fake(4, 60)]
    digits += [_fake(5, 70 + i) for i in range(2)]  # 5 has 12 now; 3 and 4 have 11
    digits = [d for d in digits if not (d.label == 6 and d.id != "6-x000")]  # a single 6
    train, heldout = split(digits, seed=0)
    assert sorted(d.id for d in train + heldout) == sorted(d.id for d in digits)
    assert not {d.id for d in train} & {d.id for d in heldout}
    per_digit = {d: sum(h.label == d for h in heldout) for d in range(10)}
    assert per_digit == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 0, 7: 2, 8: 2, 9: 2}
    assert split(list(reversed(digits)), seed=0) == (train, heldout)  # order of listing does not matter
    assert split(digits, seed=1)[1] != heldout  # another seed, another choice
    assert {d.label: 1 for d in split([_fake(2, 0), _fake(2, 1)])[1]} == {2: 1}  # two: one held out
    _, every_third = split(digits, seed=0, holdout_every=3)
    assert sum(h.label == 0 for h in every_third) == 3


def test_missing_says_how_many_more_of_which_digit() -> None:
    counts = {**dict.fromkeys(range(10), 5), 4: 1, 7: 2, 9: 0}
    assert missing(counts, 3) == {4: 2, 7: 1, 9: 3}
    assert missing(dict.fromkeys(range(10), 3), 3) == {}
    error = NotEnoughDigitsError(missing(counts, 3))
    assert "draw 2 more 4s, 1 more 7 and 3 more 9s" in str(error)


def test_train_personal_refuses_too_few_and_trains_nothing(artifacts_copy: Path, tiny_mnist) -> None:  # noqa: ANN001
    store = ArtifactStore(artifacts_copy)
    c = MyDigits(store)
    fill(c, 3, digits=range(9))
    c.add(draw(WRITERS[0], 9, 0), 9)
    before = snapshot(c)
    with pytest.raises(NotEnoughDigitsError, match="draw 2 more 9s") as caught:
        train_personal(store, tiny_mnist, PersonalSettings(steps=2, device="cpu"))
    assert caught.value.missing == {9: 2}
    assert not store.adapter_exists("personal") and load_personal_result(store) is None
    assert snapshot(c) == before


# --- the personal adapter -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def misread_writer(small_base_record) -> str:  # noqa: ANN001
    """The synthetic writer whose fresh drawings the small base model reads worst."""
    return max(WRITERS, key=lambda w: _fresh_mistakes(small_base_record.model, w.name)).name


def _fresh(w_name: str, samples: range) -> tuple[torch.Tensor, torch.Tensor]:
    w = writer(w_name)
    x = torch.cat([prepare_digit(draw(w, d, s)).tensor for d in range(10) for s in samples])
    return x, torch.tensor([d for d in range(10) for _ in samples])


def _fresh_mistakes(model: torch.nn.Module, w_name: str, samples: range = range(500, 505)) -> int:
    x, y = _fresh(w_name, samples)
    return int((predict(model, x).argmax(1) != y).sum())


def test_train_personal_learns_a_misread_writer(artifacts_copy: Path, small_mnist, misread_writer: str) -> None:  # noqa: ANN001
    store = ArtifactStore(artifacts_copy)
    c = MyDigits(store)
    fill(c, 6, misread_writer)
    result = train_personal(store, small_mnist, PersonalSettings(steps=60, seed=0, device="cpu", precision="fp32"))
    assert (result.trained, result.heldout) == (50, 10)
    assert [r["label"] for r in result.heldout_rows] == list(range(10))
    assert result.base_errors == sum(r["base"] != r["label"] for r in result.heldout_rows)
    assert result.personal_errors == sum(r["personal"] != r["label"] for r in result.heldout_rows)
    assert result.personal_errors <= result.base_errors
    assert result.mnist_after > result.mnist_before - 0.02
    assert load_personal_result(store) == result  # result.json as returned
    # a normal adapter, loadable like the others, on fresh drawings of the same writer
    base = store.load_base("cpu")
    lora_model = LoraModel(base.model)
    record = store.load_adapter(lora_model, "personal", base.fingerprint)
    assert record.config is not None and record.config.r == 8
    assert record.metrics["personal"]["personal_errors"] == result.personal_errors
    x, y = _fresh(misread_writer, range(200, 210))
    with lora_model.adapters_disabled():
        base_wrong = int((predict(lora_model, x).argmax(1) != y).sum())
    lora_model.set_adapter("personal")
    personal_wrong = int((predict(lora_model, x).argmax(1) != y).sum())
    assert base_wrong >= 10, f"the small base reads {misread_writer} too well ({base_wrong} of 100 wrong)"
    assert personal_wrong <= base_wrong / 2, (base_wrong, personal_wrong)


def test_personal_result_json_round_trip() -> None:
    result = PersonalResult(
        "personal",
        8,
        2,
        [{"id": "a", "label": 1, "base": 7, "personal": 1}],
        0.5,
        1.0,
        1,
        0,
        0.97,
        0.971,
        1.5,
        {"steps": 10},
        "2026-01-01T00:00:00+00:00",
    )
    assert PersonalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert dataclasses.asdict(result)["heldout_rows"][0]["base"] == 7
    with pytest.raises(ValueError, match="missing"):
        PersonalResult.from_dict({"adapter": "personal"})


def test_a_stopped_run_saves_nothing(artifacts_copy: Path, tiny_mnist) -> None:  # noqa: ANN001
    import threading

    from lora_core.errors import RunStopped

    store = ArtifactStore(artifacts_copy)
    fill(MyDigits(store), 3)
    stop, phases = threading.Event(), []

    def progress(p) -> None:  # noqa: ANN001
        phases.append((p.phase, p.step, p.total_steps))
        stop.set()

    with pytest.raises(RunStopped):
        train_personal(store, tiny_mnist, PersonalSettings(steps=50, device="cpu"), progress=progress, stop=stop)
    assert phases == [("personal", 1, 50)]
    assert not store.adapter_exists("personal") and load_personal_result(store) is None


def test_the_personal_run_holds_the_writer_lock_from_start_to_save(artifacts_copy: Path, tiny_mnist) -> None:  # noqa: ANN001
    import threading

    from lora_core.errors import ArtifactsBusy

    store = ArtifactStore(artifacts_copy)
    first = fill(MyDigits(store), 3)[0]
    adapters = store.adapter_names()
    refusals: list[str] = []

    def others_write() -> None:  # another run of the lab, in its own thread, with its own store object
        other = ArtifactStore(artifacts_copy)
        for write in (lambda: MyDigits(other).delete(first.id), lambda: other.delete_adapter(adapters[0])):
            try:
                write()
            except ArtifactsBusy as exc:
                refusals.append(str(exc))

    def progress(p) -> None:  # noqa: ANN001
        if p.step == 1:  # mid-training
            writer = threading.Thread(target=others_write)
            writer.start()
            writer.join()

    train_personal(store, tiny_mnist, PersonalSettings(steps=3, device="cpu"), progress=progress)
    assert len(refusals) == 2 and all("training the personal adapter on my digits" in r for r in refusals), refusals
    assert first.id in {d.id for d in MyDigits(store).list()}
    assert store.adapter_names() == sorted([*adapters, "personal"])


def test_augment_moves_each_picture_a_little() -> None:
    pixels = torch.from_numpy(np.stack([prepare_digit(draw(WRITERS[0], d, 0)).pixels for d in range(4)]))
    moved = augment_pixels(pixels.repeat(2, 1, 1), torch.Generator().manual_seed(0))
    assert moved.shape == (8, 28, 28) and float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    change = (moved - pixels.repeat(2, 1, 1)).abs().mean(dim=(1, 2))
    assert bool((change > 0.005).all())  # every picture moved
    assert not torch.equal(moved[:4], moved[4:])  # each copy its own way
    # and still mostly the same picture: the ink stays where it was, near enough
    overlap = (moved * pixels.repeat(2, 1, 1)).sum(dim=(1, 2)) / (pixels * pixels).sum(dim=(1, 2)).repeat(2)
    assert bool((overlap > 0.3).all())


def test_writers_are_consistent_and_vary_a_little() -> None:
    from benchmarks.writers import render, strokes

    w = writer("european")
    first = strokes(w, 7, 0)
    assert first == strokes(w, 7, 0)  # seeded
    assert first != strokes(w, 7, 1)  # another sample differs
    assert len(first) == 2  # the crossbar 7: two strokes
    assert len(strokes(writer("neat"), 7, 0)) == 1
    for stroke in first:
        assert all(0 <= x <= 280 and 0 <= y <= 280 for x, y in stroke)
    picture = render(first)
    assert picture.shape == (280, 280, 4) and picture.dtype == np.uint8
    assert (picture[:, :, 3] == 255).all() and picture[:, :, 0].max() == 255 and picture[0, 0, 0] == 0
    assert len({w.name for w in WRITERS}) == len(WRITERS) >= 5


def test_a_broken_result_file_is_reported(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert load_personal_result(store) is None
    (tmp_path / "mydigits").mkdir()
    (tmp_path / "mydigits" / "result.json").write_text('{"adapter": "personal"}')
    reason = "result.json is not a readable personal adapter result: trained missing; train the personal adapter again"
    with pytest.raises(ArtifactError, match=reason):
        load_personal_result(store)
