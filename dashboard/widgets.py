"""Page pieces built the same way on more than one page: the drawing canvas and its 28x28 reading (Draw, My
digits), and the picker of saved results (the experiments and the sweeps of the Experiments page)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import streamlit as st

from dashboard import palette
from lora_core.errors import ArtifactError
from lora_core.preprocess import ImageError, PreparedDigit, prepare_digit

CANVAS_SIZE = 280
CANVAS_TOOLBAR_ROOM_PX = 28
STROKE_WIDTH = 18  # one pen for collecting drawings and for predicting them

Result = TypeVar("Result")


# --- drawing -------------------------------------------------------------------------------------------------------
def drawing_canvas(key: str, fallback: str) -> np.ndarray | None:
    """A square drawing canvas, white ink on black; the RGBA drawing, or None before anything is drawn. If the
    component cannot load, an st.error says so and suggests `fallback` ("use a random test digit instead")."""
    try:
        # streamlit_drawable_canvas can only be imported inside a running app (it fails at import otherwise)
        from streamlit_drawable_canvas import st_canvas

        # the canvas's toolbar floats 2.65rem above it while the pointer is over it: with this room and the
        # 1rem gap between elements it covers nothing above (a caption, a heading)
        st.space(CANVAS_TOOLBAR_ROOM_PX)
        result = st_canvas(
            stroke_width=STROKE_WIDTH,
            stroke_color=palette.INK,
            background_color=palette.PAPER,
            height=CANVAS_SIZE,
            width=CANVAS_SIZE,
            drawing_mode="freedraw",
            return_image_data=True,
            key=key,
        )
    except Exception as exc:  # the component failed to load: say so, keep the rest of the page usable
        st.error(f"The drawing canvas is not available here ({exc}); {fallback}.")
        return None
    return result.image_data if result is not None else None


def read_drawing(drawn: np.ndarray | None, blank: str | None = None) -> PreparedDigit | None:
    """The 28x28 digit the models see in a canvas drawing (cropped, scaled and centred as MNIST's), or None:
    nothing drawn (`blank`, if given, is then shown as a caption) or a drawing that cannot be read (an st.error
    says why)."""
    if drawn is None:
        return None
    try:
        prepared = prepare_digit(np.asarray(drawn))
    except ImageError as exc:
        st.error(f"The drawing could not be read: {exc}")
        return None
    if prepared is None and blank:
        st.caption(blank)
    return prepared


# --- saved results -------------------------------------------------------------------------------------------------
def pick_saved(
    paths: Sequence[Path],
    load: Callable[[Path], Result],
    describe: Callable[[str, Result], str],
    *,
    label: str,
    key: str,
    noun: str,
    none_yet: str,
    none_readable: str,
) -> tuple[str, Result] | None:
    """A select box of saved results, in the order of `paths` (newest first), each named by describe(file name,
    result). A file `load` cannot read is skipped with a warning (about a saved `noun`); with nothing to pick,
    `none_yet` (no file) or `none_readable` (no readable file) is shown instead. Returns the picked (file name,
    result), or None."""
    if not paths:
        st.info(none_yet)
        return None
    loaded: list[tuple[str, Result]] = []
    for path in paths:
        try:
            loaded.append((path.name, load(path)))
        except ArtifactError as exc:
            st.warning(f"Skipped a saved {noun} that cannot be read: {exc}")
    if not loaded:
        st.info(none_readable)
        return None
    labels = [describe(name, result) for name, result in loaded]
    pick = st.selectbox(label, range(len(loaded)), format_func=labels.__getitem__, key=key)
    return loaded[int(pick or 0)]
