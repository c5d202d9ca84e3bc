"""My digits page: collect your own labelled drawings (a guided mode asks for each digit in turn), review them
grouped by digit, delete single ones, export and import the collection as a zip, and train a personal adapter on
them in the background; then compare the base model and the personal adapter on your held-out drawings and on
MNIST's test set.

Everything is lora_core.lab.mydigits: this page only draws, asks and shows. Actions that change the collection end
with a rerun, so every section shows the collection as it is now; their confirmations survive that rerun in
session state (`flash`).
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from streamlit.errors import StreamlitAPIException

from dashboard import charts, jobs, state, ui, widgets
from lora_core.errors import ArtifactError, ConfigError, LoraCoreError
from lora_core.lab.mydigits.collection import (
    MIN_PER_DIGIT,
    MyDigit,
    MyDigits,
    MyDigitsImportError,
    describe_missing,
    missing,
)
from lora_core.lab.mydigits.personal import (
    PERSONAL_ADAPTER,
    PersonalResult,
    PersonalSettings,
    check_personal_name_free,
    load_personal_result,
)
from lora_core.numbers import pct
from lora_core.preprocess import ImageError

GUIDED_PER_DIGIT = 5
GRID_COLUMNS = 10
GUIDED_KEY = "mydigits_guided"
# neat, MNIST-like digits are ones the base model already reads: a collection of them leaves nothing to learn
VARIED_HINT = (
    "Draw as you usually write, and vary it from one drawing to the next (slant, size, a quick scrawl): the "
    "personal adapter can only fix what the base model misreads."
)
FLASH_KEY = "mydigits_flash"
UPLOAD_VERSION_KEY = "mydigits_upload_version"
HELD_OUT_ROW_PX = 64
FIELD_LABELS = {"steps": "Steps", "rank": "Rank r", "seed": "Seed"}


# --- confirmations that survive the rerun after an action -----------------------------------------------------------
def flash(section: str, kind: str, text: str) -> None:
    st.session_state.setdefault(FLASH_KEY, {})[section] = (kind, text)


def show_flash(section: str) -> None:
    kind, text = st.session_state.get(FLASH_KEY, {}).pop(section, (None, None))
    if kind is not None:
        getattr(st, kind)(text)


def plural(n: int, digit: int) -> str:
    """'1 drawing of 0', '3 drawings of 7': a count beside a digit would read as one number ('1 0')."""
    return f"{n} drawing{'' if n == 1 else 's'} of {digit}"


def writable() -> bool:
    """The collection can be changed now: no run holds the artifacts folder's writer lock (say why if one does)."""
    if ui.busy():
        ui.busy_note()
        st.caption("Drawings can be saved, deleted or imported again when it has finished.")
        return False
    return True


# --- guided mode ----------------------------------------------------------------------------------------------------
@st.fragment
def guided_section(collection: MyDigits, can_write: bool) -> None:
    """Asks for each digit in turn ("draw a 4"), `per_digit` times each, with its own canvas and progress.

    A fragment: each stroke and each "Save and next" reruns only this section, not the grid of every drawing
    below (which is redrawn when the guided mode ends or stops)."""
    show_flash("guided")
    guided: dict[str, Any] | None = st.session_state.get(GUIDED_KEY)
    if guided is None:
        st.caption(VARIED_HINT)
        c1, c2 = st.columns(2)
        per_digit = c1.number_input(
            "Drawings of each digit", min_value=1, max_value=50, value=GUIDED_PER_DIGIT, key="guided_per_digit"
        )
        writer = c2.text_input("Your name (optional, kept with each drawing)", key="guided_writer", max_chars=40)
        if st.button("Start guided mode", type="primary", key="guided_start"):
            order = [d for d in range(10) for _ in range(int(per_digit))]
            st.session_state[GUIDED_KEY] = {
                "order": order,
                "per_digit": int(per_digit),
                "done": 0,
                "saved": 0,
                "writer": writer.strip() or None,
                "run": uuid.uuid4().hex[:8],  # a fresh canvas key per drawing of each guided run
            }
            st.rerun()
        return

    order: list[int] = guided["order"]
    done = int(guided["done"])
    total = len(order)
    if guided.get("last"):  # kept until the next save: a message that vanished would move the canvas mid-drawing
        st.success(guided["last"])
    if done >= total:
        st.success(f"Guided mode finished: you saved {guided['saved']} of {total} digits; they are in your collection.")
        if st.button("Close guided mode", key="guided_close"):
            st.session_state.pop(GUIDED_KEY, None)
            st.rerun()
        return

    digit = order[done]
    nth = order[:done].count(digit) + 1
    st.progress(done / total, text=f"{done} of {total} drawn ({guided['per_digit']} of each digit)")
    st.subheader(f"Draw a {digit}")
    st.caption(f"{nth} of {guided['per_digit']} for the digit {digit}. {VARIED_HINT}")
    left, right = st.columns([1.4, 2])
    with left:
        drawn = widgets.drawing_canvas(
            f"guided-canvas-{guided['run']}-{done}", fallback="import a zip of drawings instead"
        )
    with right:
        with st.container(key="guided_preview"):
            prepared = preview(drawn)
        b1, b2, b3 = st.columns(3)
        save = b1.button("Save and next", type="primary", key="guided_save", disabled=not can_write)
        skip = b2.button("Skip", key="guided_skip")
        stop = b3.button("Stop guided mode", key="guided_stop")
    if stop:
        st.session_state.pop(GUIDED_KEY, None)
        flash("guided", "info", f"Guided mode stopped after {guided['saved']} drawings; they stay in your collection.")
        st.rerun()
    if skip:
        guided["done"] = done + 1
        rerun_guided()
    if save:
        if drawn is None or prepared is None:
            st.warning(f"Nothing to save yet: draw a {digit} on the canvas first.")
            return
        try:
            collection.add(np.asarray(drawn), digit, source="guided", writer=guided.get("writer"))
        except (ImageError, ConfigError, ArtifactError) as exc:
            st.error(f"The drawing was not saved: {exc}")
            return
        guided["done"] = done + 1
        guided["saved"] = int(guided["saved"]) + 1
        count = collection.counts()[digit]
        guided["last"] = f"Saved your {digit}: you have {plural(count, digit)} now."
        if guided["done"] >= len(order):
            st.rerun()  # the whole page: the grid shows the new drawings
        rerun_guided()


def rerun_guided() -> None:
    """Rerun only the guided section when it runs on its own (a click or a stroke in it, in a browser); the whole
    page when it runs as part of it (Streamlit refuses a fragment-only rerun then, e.g. under AppTest)."""
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


def preview(drawn: np.ndarray | None) -> Any:
    """What will be saved: the 28x28 digit the model sees."""
    if drawn is None:
        st.caption("What the model will see appears here once you draw.")
        return None
    prepared = widgets.read_drawing(drawn, blank="Nothing drawn yet.")
    if prepared is not None:
        st.image(charts.digit_image(prepared.pixels, scale=4), caption="What the model will see (28 × 28)")
    return prepared


# --- the collection -------------------------------------------------------------------------------------------------
def counts_table(counts: dict[int, int]) -> pd.DataFrame:
    row = {str(d): counts.get(d, 0) for d in range(10)}
    row["total"] = sum(counts.values())
    return pd.DataFrame([row], index=["drawings"])


def collection_section(collection: MyDigits, digits: Sequence[MyDigit], can_write: bool) -> None:
    """The collection as a grid, one group per digit with its count, each drawing with a delete button."""
    show_flash("collection")
    if st.session_state.get(GUIDED_KEY) is not None:
        st.caption("While the guided mode runs, this grid is redrawn when it ends or you stop it.")
    counts = collection.counts()
    st.dataframe(counts_table(counts), width="stretch")
    if not digits:
        st.info(
            "No drawings yet. Start the guided mode above, add a drawing from the Draw page, or import a zip of "
            "drawings below."
        )
        return
    for digit in range(10):
        group = [d for d in digits if d.label == digit]
        if not group:
            continue
        st.markdown(f"**Digit {digit}** · {len(group)} drawing{'' if len(group) == 1 else 's'}")
        for start in range(0, len(group), GRID_COLUMNS):
            columns = st.columns(GRID_COLUMNS)
            for column, item in zip(columns, group[start : start + GRID_COLUMNS], strict=False):
                with column:
                    thumbnail(collection, item)
                    if st.button(
                        "Delete",
                        key=f"mydigits-delete-{item.id}",
                        type="tertiary",
                        icon=":material/delete:",
                        help=f"Delete this {digit} ({item.source}, {ui.when(item.created)})",
                        disabled=not can_write,
                    ):
                        delete(collection, item)


def thumbnail(collection: MyDigits, item: MyDigit) -> None:
    try:
        pixels = collection.pixels(item.id)
    except (ArtifactError, ImageError) as exc:
        st.caption(f"unreadable: {exc}")
        return
    st.image(charts.digit_image(pixels / 255.0, scale=2))


def delete(collection: MyDigits, item: MyDigit) -> None:
    try:
        collection.delete(item.id)
    except ArtifactError as exc:
        st.error(f"Not deleted: {exc}")
        return
    count = collection.counts()[item.label]
    flash("collection", "success", f"Deleted one {item.label}: {plural(count, item.label)} left.")
    st.rerun()


def transfer_section(collection: MyDigits, digits: Sequence[MyDigit], can_write: bool) -> None:
    """Export the collection as a zip, or import one (validated in full first: a bad zip changes nothing)."""
    show_flash("transfer")
    c1, c2 = st.columns(2)
    with c1:
        if digits:
            st.download_button(
                "Export as zip",
                data=lambda: collection.export_zip().data,  # built when clicked, not on every rerun
                file_name="my-digits.zip",
                mime="application/zip",
                key="mydigits_export",
                icon=":material/download:",
                on_click="ignore",
            )
            st.caption(
                f"{len(digits)} drawings: the 28 × 28 images, the originals and their labels (a drawing whose "
                "pictures cannot be read is left out, so that the zip always imports)."
            )
        else:
            st.caption("Nothing to export yet.")
    with c2:
        version = st.session_state.setdefault(UPLOAD_VERSION_KEY, 0)
        upload = st.file_uploader(
            "Import a zip of drawings (exported here or with `python -m lora_core mydigits export`)",
            type=["zip"],
            key=f"mydigits_upload-{version}",
        )
        if upload is not None and st.button("Import", key="mydigits_import", disabled=not can_write):
            try:
                added = collection.import_zip(upload.getvalue())
            except MyDigitsImportError as exc:
                st.error(f"The zip was not imported and your collection is unchanged: {exc}")
                return
            except ArtifactError as exc:  # e.g. a run took the writer lock meanwhile
                st.error(f"Not imported: {exc}")
                return
            st.session_state[UPLOAD_VERSION_KEY] = version + 1  # an empty uploader for the next import
            flash(
                "transfer",
                "success",
                f"Imported {len(added)} new drawing{'' if len(added) == 1 else 's'} from {upload.name} "
                "(drawings already in your collection were skipped).",
            )
            st.rerun()


# --- the personal adapter -------------------------------------------------------------------------------------------
def personal_section(collection: MyDigits, digits: Sequence[MyDigit]) -> None:
    st.write("A small LoRA adapter fine-tuned on your drawings, judged on drawings it never trained on.")
    with st.expander("How is it trained and measured?"):
        st.markdown(
            "MNIST digits are replayed beside your drawings in every batch, so that the model does not forget how "
            "to read MNIST. Some of your drawings of each digit are held out (the same ones for the same seed) "
            "and never trained on: the comparison below is measured on them."
        )
    status = state.base_status()
    if status.record is None:  # the collection above works without one; only training needs it
        if status.error:
            st.error(f"The saved base model cannot be loaded: {status.error}")
        else:
            st.warning("There is no base model yet. A personal adapter needs one; collect your drawings meanwhile.")
        ui.offer_training()
        return
    need = missing(collection.counts())
    if need:
        st.warning(
            f"Not enough drawings to train yet (at least {MIN_PER_DIGIT} of each digit are needed): "
            f"{describe_missing(need)}."
        )
    try:
        check_personal_name_free(state.store())
        name_taken = False
    except ArtifactError as exc:
        st.error(f"Training is off: {exc}.")
        name_taken = True
    defaults = PersonalSettings()
    slots = ui.FieldSlots()
    with st.expander("Training settings"):
        c1, c2, c3 = st.columns(3)
        steps = c1.number_input("Steps", min_value=1, max_value=100_000, value=defaults.steps, key="personal_steps")
        rank = c2.number_input("Rank r", min_value=1, max_value=1000, value=defaults.rank, key="personal_rank")
        seed = c3.number_input(
            "Seed (also picks the held-out drawings)",
            min_value=0,
            max_value=2**31 - 1,
            value=defaults.seed,
            key="personal_seed",
        )
        slots.add("steps", "rank", "seed")
        st.caption(
            f"Each batch: {defaults.batch_size} digits, {1 - defaults.replay:.0%} of them your drawings (each moved "
            f"a little at random) and the rest MNIST; one in {defaults.holdout_every} of each digit is held out. "
            f"Saved as the adapter `{PERSONAL_ADAPTER}`, replacing the previous personal adapter."
        )
    can_train = not (ui.busy() or need or name_taken)
    if st.button("Train my personal adapter", type="primary", disabled=not can_train, key="personal_train"):
        settings = PersonalSettings(steps=int(steps), rank=int(rank), seed=int(seed))
        try:
            settings.validate()
        except ConfigError as exc:
            slots.show(exc, FIELD_LABELS.get(exc.field))
        else:
            ui.start_job(jobs.start_personal, state.store(), settings)
    ui.job_panel(("personal",))
    try:
        result = load_personal_result(state.store())
    except ArtifactError as exc:
        st.error(f"The saved result of the personal adapter cannot be read: {exc}. Train it again.")
        return
    if result is None:
        st.info("No personal adapter yet: its comparison appears here once it is trained.")
        return
    show_result(collection, digits, result, status.sha)


def data_url(pixels: np.ndarray) -> str:
    """A 28x28 uint8 digit as a PNG data URL, for an image column of st.dataframe."""
    buffer = io.BytesIO()
    Image.fromarray(charts.digit_image(pixels / 255.0, scale=2)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heldout_frame(collection: MyDigits, result: PersonalResult) -> pd.DataFrame:
    rows = []
    for row in result.heldout_rows:
        try:
            image = data_url(collection.pixels(str(row["id"])))
        except (ArtifactError, ImageError):
            image = None  # deleted since the training: the row stays, without its picture
        label, said_base, said_personal = int(row["label"]), int(row["base"]), int(row["personal"])
        rows.append(
            {
                "drawing": image,
                "digit": label,
                "base model says": said_base,
                "personal adapter says": said_personal,
                "base": "✓" if said_base == label else "✗",
                "personal": "✓" if said_personal == label else "✗",
            }
        )
    return pd.DataFrame(rows)


def show_result(collection: MyDigits, digits: Sequence[MyDigit], result: PersonalResult, base_sha: str | None) -> None:
    st.subheader("Base model vs your personal adapter")
    adapter = next((a for a in state.adapters(base_sha) if a.name == result.adapter), None)
    if adapter is None:
        st.warning(f"The adapter `{result.adapter}` of this result is no longer saved: train it again to use it.")
    elif not adapter.ok:
        st.warning(f"The adapter `{result.adapter}` cannot be used now: {adapter.message}.")
    st.caption(
        f"Trained on {result.trained} of your drawings with {result.heldout} held out, in {result.seconds:.1f} s"
        f" · {result.config.get('steps', '?')} steps, rank {result.config.get('rank', '?')}"
        f" · {ui.when(result.created)}"
    )
    if len(digits) != result.trained + result.heldout:
        st.caption(f"Your collection has {len(digits)} drawings now: train again to use them all.")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Base · your held-out drawings",
        pct(result.base_heldout_accuracy),
        f"{result.base_errors} wrong",
        delta_color="off",
        delta_arrow="off",
    )
    c2.metric(
        "Personal · your held-out drawings",
        pct(result.personal_heldout_accuracy),
        f"{result.personal_errors} wrong",
        delta_color="off",
        delta_arrow="off",
    )
    c3.metric("Base · MNIST test", pct(result.mnist_before))
    change = 100 * (result.mnist_after - result.mnist_before)
    c4.metric("Personal · MNIST test", pct(result.mnist_after), f"{change:+.2f} points")
    st.markdown(
        f"On your {result.heldout} held-out drawings the base model makes **{result.base_errors}** "
        f"mistake{'' if result.base_errors == 1 else 's'} and the personal adapter **{result.personal_errors}**. "
        f"On MNIST's 10,000 test digits accuracy goes from "
        f"{pct(result.mnist_before)} to {pct(result.mnist_after)} ({change:+.2f} points)."
    )
    st.dataframe(
        heldout_frame(collection, result),
        hide_index=True,
        row_height=HELD_OUT_ROW_PX,
        height=HELD_OUT_ROW_PX * (min(result.heldout, 20) + 1) + 3,  # every row shown, up to 20, then scrolled
        column_config={"drawing": st.column_config.ImageColumn("drawing", width="small")},
        width="stretch",
        key="personal_heldout",
    )


# --- the page -------------------------------------------------------------------------------------------------------
st.title("My digits")
st.write(
    "Teach the model your handwriting: draw a few examples of each digit, fine-tune a personal adapter on them, "
    "and see whether it reads your held-out drawings better than the base model."
)
collection = MyDigits(state.store())
can_write = writable()
try:
    digits = collection.list()
except LoraCoreError as exc:
    st.error(f"Your collection cannot be read: {exc}")
    st.stop()

st.header("Collect: guided mode")
st.write(
    "The guided mode asks for each digit in turn. To add a single drawing instead, draw it on the Draw page "
    "and add it there."
)
guided_section(collection, can_write)
st.header("Your collection")
collection_section(collection, digits, can_write)
st.header("Export and import")
transfer_section(collection, digits, can_write)
st.header("Your personal adapter")
personal_section(collection, digits)
