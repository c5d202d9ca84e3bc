"""Draw and predict page: draw a digit (or pick a real test digit) and compare the base model's and an
adapter's probabilities side by side, on exactly the 28x28 image the models see."""

from __future__ import annotations

import random

import numpy as np
import streamlit as st

from dashboard import charts, combination, palette, state, ui, widgets
from lora_core.data import denormalize
from lora_core.errors import ArtifactError, ConfigError, LoraCoreError
from lora_core.lab.mydigits.collection import MyDigits
from lora_core.lab.mydigits.personal import PERSONAL_ADAPTER
from lora_core.lab.tasks import Task, parse_task
from lora_core.preprocess import PreparedDigit, predict_probabilities
from lora_core.store.artifacts import BaseModelRecord

st.title("Draw and predict")
st.write("Draw a digit in white on the black square, and the base model and the adapter each read it.")
with st.expander("How is a drawing read?"):
    st.markdown(
        "The drawing is cropped to its ink, scaled so that its longer side is 20 pixels and centred by its mass "
        "in a 28 × 28 square, the way MNIST's digits were made; both models read that same 28 × 28 picture."
    )

view = ui.base_selector("draw_base")
base = ui.require_base("Draw and predict", view)
picked = ui.choose_adapter(
    base, "Adapter to compare with the base model", "draw_adapter", "only the base model predicts.", view
)
chosen = picked.name if picked else None


def adapter_task(info: state.AdapterInfo | None) -> Task | None:
    """The domain task (rotate, invert...) an Experiments adapter was trained on, from its metrics; None for
    a digit adapter, or a task this version cannot read."""
    spec = ((info.record.metrics or {}).get("task") or {}).get("spec") if info is not None else None
    try:
        task = parse_task(spec) if spec else None
    except ConfigError:
        return None
    return task if task is not None and task.is_domain else None


def transformed(task: Task, digit: PreparedDigit) -> PreparedDigit:
    """The digit as the task shows it: the exact transform its adapter was trained on (lora_core.lab.tasks)."""
    tensor = task.transform_normalized(digit.tensor)
    return PreparedDigit(pixels=denormalize(tensor).reshape(28, 28).numpy(), tensor=tensor, inverted=digit.inverted)


# --- my digits: label the drawing and keep it; compare the personal adapter ------------------------------
MY_DIGITS_FLASH = "draw_mydigits_added"


def add_to_my_digits(drawn: np.ndarray | None, drawing: PreparedDigit | None) -> None:
    """Under the canvas: pick the drawing's label and add it to "my digits" (then a fresh canvas and a
    confirmation with the count of that digit)."""
    added = st.session_state.pop(MY_DIGITS_FLASH, None)
    if added:
        st.success(added)
    if drawn is None or drawing is None:
        return
    version = st.session_state["canvas_version"]
    c1, c2 = st.columns([1, 1.2], vertical_alignment="bottom")
    label = c1.selectbox(
        "This digit is a", list(range(10)), index=None, placeholder="pick 0-9", key=f"draw_mydigits_label-{version}"
    )
    busy = ui.busy()
    if c2.button("Add to my digits", key="draw_mydigits_add", disabled=label is None or busy, icon=":material/add:"):
        assert label is not None
        collection = MyDigits(state.store())
        try:
            collection.add(np.asarray(drawn), int(label), source="draw")
        except LoraCoreError as exc:
            st.error(f"The drawing was not added: {exc}")
            return
        count = collection.counts()[int(label)]
        st.session_state[MY_DIGITS_FLASH] = (
            f"Added to my digits as a {label}: you have {count} drawing{'' if count == 1 else 's'} of {label} now."
        )
        st.session_state["canvas_version"] += 1  # a fresh canvas for the next drawing
        st.rerun()
    if busy:
        st.caption("A run is writing the saved work: drawings can be added when it has finished.")
    st.page_link(ui.PAGES["mydigits"], label="My digits: review them, train on them", icon=":material/edit_note:")


def compare_personal(
    base_record: BaseModelRecord, digit: PreparedDigit, top_base: int, shown: str | None, where: state.BaseView
) -> None:
    """The personal adapter's prediction beside the base model's (and the chosen adapter's), when it exists."""
    if shown == PERSONAL_ADAPTER:
        return  # already the adapter compared above
    if not where.is_main:
        st.caption("Your personal adapter belongs to the main base model: choose it above to compare it.")
        return
    if PERSONAL_ADAPTER not in [a.name for a in state.usable_adapters(base_record.fingerprint)]:
        st.caption("No personal adapter yet: train one on your own drawings on the My digits page.")
        return
    try:
        model = state.load_into_session(base_record, PERSONAL_ADAPTER)
        model.set_adapter(PERSONAL_ADAPTER)
        model.enable_adapters(True)
        p_personal = predict_probabilities(model, digit)
    except ArtifactError as exc:
        st.error(f"Your personal adapter cannot be loaded: {exc}")
        return
    top = int(np.argmax(p_personal))
    st.subheader("Your personal adapter")
    c1, c2 = st.columns(2)
    with c1:
        st.metric(
            "Personal adapter says",
            str(top),
            f"{p_personal[top]:.1%} sure",
            delta_color="off",
            delta_arrow="off",
        )
        agree = "agrees with" if top == top_base else "differs from"
        st.caption(f"It {agree} the base model ({top_base}).")
    with c2:
        st.plotly_chart(charts.probability_bars(p_personal, "Personal adapter", color=palette.ADAPTED), width="stretch")


task = adapter_task(picked)
# off unless asked: a drawing is read as drawn, whichever adapter an Experiments run left active
use_task = task is not None and st.toggle(
    f"Show the digit as the adapter's task does: {task.label}",
    value=False,
    key="draw_task_transform",
    help="The adapter was trained on transformed digits; with this on, both models predict the transformed digit.",
)
strength = 1.0
if picked is not None and not picked.is_dora:
    strength = ui.strength_slider("draw_strength")
elif picked is not None:
    st.caption(ui.DORA_HAS_NO_STRENGTH)

st.session_state.setdefault("canvas_version", 0)
left, mid, right = st.columns([1.4, 0.9, 2.2])
with left:
    st.subheader("Your digit")
    drawn = widgets.drawing_canvas(
        f"canvas-{st.session_state['canvas_version']}", fallback="use a random test digit instead"
    )
    b1, b2 = st.columns(2)
    if b1.button("Clear", key="draw_clear"):
        st.session_state["canvas_version"] += 1
        st.session_state.pop("draw_test_index", None)
        st.rerun()
    if b2.button("Random test digit", key="draw_random"):
        st.session_state["draw_test_index"] = random.randrange(state.data().test_x.shape[0])
        st.session_state["canvas_version"] += 1
        st.rerun()

drawing = widgets.read_drawing(drawn)
if drawing is not None:
    # Picking a random test digit also swaps in a blank canvas (new key), so ink on the canvas was
    # drawn after the pick: the drawing replaces the test digit.
    st.session_state.pop("draw_test_index", None)

with left:
    add_to_my_digits(drawn, drawing)

prepared = drawing
true_label = None
test_index = st.session_state.get("draw_test_index")
if test_index is not None:
    x = state.data().test_x[test_index : test_index + 1]
    prepared = PreparedDigit(pixels=state.test_pixels(test_index), tensor=x, inverted=False)
    true_label = int(state.data().test_y[test_index])
original = prepared
if prepared is not None and use_task:
    assert task is not None
    prepared = transformed(task, prepared)

with mid:
    st.subheader("What the model sees")
    if prepared is None:
        st.info("Draw a digit (or pick a random test digit) to get a prediction.")
    else:
        caption = "28 × 28, centred by mass"
        if true_label is not None:
            caption = f"MNIST test image #{test_index}: a {true_label}"
        if prepared is original:
            st.image(charts.digit_image(prepared.pixels, scale=6), caption=caption)
        else:
            assert original is not None and task is not None
            st.image(charts.digit_image(original.pixels, scale=4), caption=caption)
            st.image(
                charts.digit_image(prepared.pixels, scale=6),
                caption=f"With the task `{task.spec}`: both models see this",
            )

with right:
    st.subheader("Predictions")
    if prepared is None:
        st.write("Nothing to predict yet: draw a digit.")
        st.stop()
    p_base = predict_probabilities(base.model, prepared)
    p_adapted = None
    if chosen is not None:
        try:
            model = state.load_into_session(base, chosen, view.where)
            if strength == 1.0:
                model.set_adapter(chosen)
            else:
                model.set_adapter([chosen], weights=[strength])
            model.enable_adapters(state.adapters_enabled())
            p_adapted = predict_probabilities(model, prepared)
            model.set_adapter(chosen)
        except ArtifactError as exc:
            st.error(f"Adapter `{chosen}` cannot be loaded: {exc}")
    top_base = int(np.argmax(p_base))
    c1, c2 = st.columns(2)
    with c1:
        st.metric(
            "Base model says", str(top_base), f"{p_base[top_base]:.1%} sure", delta_color="off", delta_arrow="off"
        )
        st.plotly_chart(charts.probability_bars(p_base, "Base model"), width="stretch")
    if p_adapted is not None:
        top_adapted = int(np.argmax(p_adapted))
        with c2:
            at = "" if strength == 1.0 else f" at strength {strength:g}"
            label = f"With {chosen}{at} says" + ("" if state.adapters_enabled() else " (adapter disabled)")
            st.metric(
                label, str(top_adapted), f"{p_adapted[top_adapted]:.1%} sure", delta_color="off", delta_arrow="off"
            )
            st.plotly_chart(
                charts.probability_bars(p_adapted, f"With adapter {chosen}", color=palette.ADAPTED),
                width="stretch",
            )
        # neutral either way: the page cannot know what a drawing was meant to be, so agreeing is no success
        if top_adapted != top_base:
            st.info(f"The models disagree: the base model says {top_base}, the adapter says {top_adapted}.")
        else:
            st.info(f"Both models say {top_base}.")
    if true_label is not None:
        st.caption(f"The true label is {true_label}.")
    if task is not None:
        if use_task:
            st.caption(f"Both models read the digit transformed as task `{task.spec}` does ({task.label}).")
        else:
            st.caption(
                f"Adapter `{chosen}` was trained on task `{task.spec}` ({task.label}); both models read the "
                "digit as drawn. The switch above shows it transformed."
            )
    compare_personal(base, prepared, top_base, chosen, view)

# --- two adapters at once (dashboard/combination.py) -------------------------------------------------------------
combination.draw_section(base, prepared, view.where)
