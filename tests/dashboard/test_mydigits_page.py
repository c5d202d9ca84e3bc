"""The My digits page without a browser (AppTest): the collection grid and its counts, deleting a drawing, the
guided mode's turns, importing a zip (a bad one refused with nothing changed), the "not enough drawings" advice,
and the personal adapter trained as a background job on few steps, its result shown (again in a new session) and
its prediction on the Draw page. The drawings are real MNIST test digits; drawing with the mouse is covered by
tests/browser/test_mydigits.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean, click, new_app, texts, visit, wait_for_job

from dashboard import jobs
from lora_core.data import MnistData, denormalize
from lora_core.lab.mydigits.collection import MyDigits
from lora_core.lab.mydigits.personal import PERSONAL_ADAPTER, load_personal_result
from lora_core.store.artifacts import ArtifactStore


def mnist_digit(mnist: MnistData, digit: int, nth: int) -> np.ndarray:
    """The nth MNIST test image of `digit` as 28x28 uint8 pixels (white ink on black), standing in for a drawing."""
    index = int((mnist.test_y == digit).nonzero().flatten()[nth])
    return (denormalize(mnist.test_x[index]).reshape(28, 28).numpy() * 255).round().astype(np.uint8)


def fill(root: Path, mnist: MnistData, per_digit: dict[int, int]) -> MyDigits:
    collection = MyDigits(ArtifactStore(root))
    for digit, n in per_digit.items():
        for nth in range(n):
            collection.add(mnist_digit(mnist, digit, nth), digit, source="draw")
    return collection


def counts_shown(at) -> dict[str, int]:  # noqa: ANN001 - AppTest
    frame = at.dataframe[0].value
    return {str(c): int(frame[c].iloc[0]) for c in frame.columns}


def delete_buttons(at) -> list:  # noqa: ANN001 - AppTest
    return [b for b in at.button if str(b.key or "").startswith("mydigits-delete-")]


def test_an_empty_collection_says_how_to_start_and_training_needs_a_base_model(fresh_dir: Path) -> None:
    at = visit(new_app(), "mydigits")
    assert_clean(at)
    shown = counts_shown(at)
    assert shown == {**{str(d): 0 for d in range(10)}, "total": 0}
    page = texts(at)
    assert "No drawings yet" in page
    assert "Nothing to export yet" in page
    assert "There is no base model yet. A personal adapter needs one" in page
    assert not delete_buttons(at)


def test_the_grid_shows_each_digit_with_its_count_and_deletes_one_drawing(trained_dir: Path, mnist: MnistData) -> None:
    collection = fill(trained_dir, mnist, {3: 2, 7: 1})
    at = visit(new_app(), "mydigits")
    assert_clean(at)
    assert counts_shown(at) == {**{str(d): 0 for d in range(10)}, "3": 2, "7": 1, "total": 3}
    page = texts(at)
    assert "**Digit 3** · 2 drawings" in page and "**Digit 7** · 1 drawing" in page
    assert "**Digit 0**" not in page  # digits without drawings have no group
    assert len(at.image) >= 3  # one thumbnail per drawing
    buttons = delete_buttons(at)
    assert len(buttons) == 3

    threes = [d for d in collection.list() if d.label == 3]
    gone = threes[0]
    [button] = [b for b in buttons if b.key == f"mydigits-delete-{gone.id}"]
    button.click().run()
    assert_clean(at)
    assert "Deleted one 3: 1 drawing of 3 left." in [str(s.value) for s in at.success]
    assert [d.id for d in collection.list()] == [threes[1].id, *(d.id for d in collection.list() if d.label == 7)]
    assert not (collection.folder / "images" / f"{gone.id}.png").exists()
    assert counts_shown(at)["3"] == 1 and counts_shown(at)["total"] == 2
    assert len(delete_buttons(at)) == 2


def test_guided_mode_asks_for_each_digit_in_turn(fresh_dir: Path) -> None:
    at = visit(new_app(), "mydigits")
    hint = "vary it from one drawing to the next"
    assert hint in texts(at)  # before starting, and beside each drawing: neat digits give the base nothing to fix
    at.number_input(key="guided_per_digit").set_value(2)
    click(at, "Start guided mode")
    assert_clean(at)
    assert "Draw a 0" in [str(s.value) for s in at.subheader]
    assert "1 of 2 for the digit 0" in texts(at)
    assert any(hint in str(c.value) and "digit 0" in str(c.value) for c in at.caption)
    # AppTest has no mouse: the canvas stays empty, so saving asks for a drawing and keeps the turn
    click(at, "Save and next")
    assert any("draw a 0 on the canvas first" in str(w.value) for w in at.warning)
    assert "Draw a 0" in [str(s.value) for s in at.subheader]
    click(at, "Skip")
    assert "2 of 2 for the digit 0" in texts(at)
    click(at, "Skip")
    assert "Draw a 1" in [str(s.value) for s in at.subheader]
    assert "1 of 2 for the digit 1" in texts(at)
    click(at, "Stop guided mode")
    assert_clean(at)
    assert any("Guided mode stopped after 0 drawings" in str(i.value) for i in at.info)
    assert "Start guided mode" in [b.label for b in at.button]
    assert MyDigits(ArtifactStore(fresh_dir)).list() == []


def bad_zips(good: bytes) -> dict[str, bytes]:
    """Zips the import must refuse: a path outside the folder, a file that is no image, not a zip at all."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    for name, change in (
        ("path", lambda n, b: ("../" + n if n.endswith(".png") else n, b)),
        ("not-an-image", lambda n, b: (n, b"hello" if n.startswith("images/") else b)),
    ):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for n, b in entries.items():
                zf.writestr(*change(n, b))
        out[name] = buffer.getvalue()
    out["not-a-zip"] = b"PK\x03\x04 this is not really a zip"
    return out


@pytest.mark.parametrize("kind", ["path", "not-an-image", "not-a-zip"])
def test_a_bad_zip_is_refused_with_an_error_and_changes_nothing(
    kind: str, trained_dir: Path, mnist: MnistData, tmp_path: Path
) -> None:
    collection = fill(trained_dir, mnist, {1: 2})
    other = fill(tmp_path / "other", mnist, {5: 2}).export_zip().data
    labels_before = (collection.folder / "labels.json").read_bytes()
    files_before = sorted(p.relative_to(collection.folder) for p in collection.folder.rglob("*"))

    at = visit(new_app(), "mydigits")
    at.file_uploader[0].set_value(("mine.zip", bad_zips(other)[kind], "application/zip")).run()
    click(at, "Import")
    assert_clean(at)
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("The zip was not imported and your collection is unchanged: ")
    assert (collection.folder / "labels.json").read_bytes() == labels_before
    assert sorted(p.relative_to(collection.folder) for p in collection.folder.rglob("*")) == files_before
    assert counts_shown(at)["total"] == 2

    # the good zip is taken: its two drawings join the collection
    at.file_uploader[0].set_value(("other.zip", other, "application/zip")).run()
    click(at, "Import")
    assert_clean(at)
    assert any("Imported 2 new drawings from other.zip" in str(s.value) for s in at.success)
    assert collection.counts()[5] == 2 and counts_shown(at)["5"] == 2


def test_too_few_drawings_say_how_many_more_of_which_digit_and_nothing_trains(
    trained_dir: Path, mnist: MnistData
) -> None:
    fill(trained_dir, mnist, {d: 3 for d in range(10) if d not in (4, 7)} | {4: 1, 7: 2})
    at = visit(new_app(), "mydigits")
    assert_clean(at)
    warnings = [str(w.value) for w in at.warning]
    assert any("draw 2 more 4s and 1 more 7" in w for w in warnings), warnings
    button = next(b for b in at.button if b.label == "Train my personal adapter")
    assert button.disabled
    assert "No personal adapter yet" in texts(at)
    assert not (trained_dir / "adapters" / PERSONAL_ADAPTER).exists()


def test_an_adapter_called_personal_that_is_not_from_the_drawings_is_never_replaced(
    trained_dir: Path, mnist: MnistData
) -> None:
    fill(trained_dir, mnist, dict.fromkeys(range(10), 3))
    ArtifactStore(trained_dir).rename_adapter("small", PERSONAL_ADAPTER)  # someone's own adapter, by that name
    saved = {p.name: p.read_bytes() for p in (trained_dir / "adapters" / PERSONAL_ADAPTER).iterdir()}
    at = visit(new_app(), "mydigits")
    assert any("was not trained on your drawings" in str(e.value) for e in at.error), [e.value for e in at.error]
    assert next(b for b in at.button if b.label == "Train my personal adapter").disabled
    assert {p.name: p.read_bytes() for p in (trained_dir / "adapters" / PERSONAL_ADAPTER).iterdir()} == saved


def test_the_personal_adapter_trains_in_the_background_and_its_result_shows(
    trained_dir: Path, mnist: MnistData
) -> None:
    fill(trained_dir, mnist, dict.fromkeys(range(10), 3))
    at = visit(new_app(), "mydigits")
    assert not at.warning
    at.number_input(key="personal_steps").set_value(8)
    click(at, "Train my personal adapter")
    job = wait_for_job(at, timeout=180)
    assert job.kind == "personal" and job.status == jobs.DONE, job.error
    assert_clean(at)

    result = load_personal_result(ArtifactStore(trained_dir))
    assert result is not None and result.config["steps"] == 8
    assert (result.trained, result.heldout) == (20, 10)  # one of each digit's three held out

    for session in (at, visit(new_app(), "mydigits")):  # this tab, and a new session reading the saved result
        assert_clean(session)
        metrics = {m.label: m.value for m in session.metric}
        assert metrics["Base · your held-out drawings"].endswith("%")
        assert metrics["Personal · your held-out drawings"].endswith("%")
        assert "Base · MNIST test" in metrics and "Personal · MNIST test" in metrics
        table = next(d.value for d in session.dataframe if "personal adapter says" in d.value.columns)
        assert len(table) == result.heldout
        assert table["drawing"].str.startswith("data:image/png;base64,").all()
        rows = {(r["label"], r["base"], r["personal"]) for r in result.heldout_rows}
        shown = set(zip(table["digit"], table["base model says"], table["personal adapter says"], strict=True))
        assert shown == rows
        page = texts(session)
        assert f"the base model makes **{result.base_errors}** mistake" in page
        assert f"the personal adapter **{result.personal_errors}**" in page
        assert "Trained on 20 of your drawings with 10 held out" in page

    # the Draw page now compares the personal adapter on a digit too
    draw = visit(at, "draw")
    click(draw, "Random test digit")
    assert_clean(draw)
    assert any(m.label == "Personal adapter says" for m in draw.metric)


def test_a_collection_file_nested_too_deeply_is_an_error_not_a_traceback(fresh_dir: Path) -> None:
    labels = fresh_dir / "mydigits" / "labels.json"
    labels.parent.mkdir()
    labels.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    at = visit(new_app(), "mydigits")
    assert_clean(at)
    assert f"{labels} is not valid JSON (nested too deeply)" in " ".join(str(e.value) for e in at.error)
