"""MNIST-style preprocessing: geometry on real digits, polarity, empty input, arbitrary arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from lora_core.data import MnistData, denormalize
from lora_core.errors import ImageError
from lora_core.preprocess import WORKING_SIDE, load_image, predict_probabilities, prepare_digit
from lora_core.store.artifacts import ArtifactStore


def _digit(mnist: MnistData, i: int) -> np.ndarray:
    return (denormalize(mnist.test_x[i]).reshape(28, 28).numpy() * 255).round().astype(np.uint8)


def _centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(pixels.shape)
    total = pixels.sum()
    return float((ys * pixels).sum() / total), float((xs * pixels).sum() / total)


def _ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero((pixels > 0).any(axis=1))
    cols = np.flatnonzero((pixels > 0).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _place(digit: np.ndarray, canvas: tuple[int, int], size: int, top: int, left: int) -> np.ndarray:
    big = np.zeros(canvas, dtype=np.uint8)
    big[top : top + size, left : left + size] = np.asarray(Image.fromarray(digit).resize((size, size)))
    return big


def test_geometry_on_real_digits(mnist: MnistData) -> None:
    for i in range(40):
        image = _place(_digit(mnist, i), (300, 420), 150, 20 + i, 250 - i)
        prepared = prepare_digit(image)
        assert prepared is not None
        cy, cx = _centre_of_mass(prepared.pixels)
        assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5, (i, cy, cx)
        assert max(_ink_box(prepared.pixels)) == 20
        assert prepared.pixels.shape == (28, 28) and prepared.tensor.shape == (1, 784)
        assert prepared.pixels.min() >= 0.0 and prepared.pixels.max() == pytest.approx(1.0)


def test_canvas_rgba_white_on_black_and_dark_on_light(mnist: MnistData) -> None:
    gray = _place(_digit(mnist, 0), (280, 280), 200, 40, 40)
    opaque = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    transparent = np.dstack([gray, gray, gray, gray])  # canvas with a transparent background
    light = 255 - gray
    results = [prepare_digit(img) for img in (opaque, transparent, light)]
    assert all(r is not None for r in results)
    assert not results[0].inverted and results[2].inverted
    for r in results[1:]:
        assert np.abs(r.pixels - results[0].pixels).max() < 0.05


@pytest.mark.parametrize("shape", [(280, 280, 4), (280, 280), (50, 70, 3), (1, 1), (3, 500, 4)])
def test_empty_or_nearly_empty_gives_none(shape: tuple[int, ...]) -> None:
    assert prepare_digit(np.zeros(shape, dtype=np.uint8)) is None
    assert prepare_digit(np.full(shape, 255, dtype=np.uint8)) is None
    speck = np.zeros((280, 280, 4), dtype=np.uint8)
    speck[100:102, 100:102] = 255  # 4 pixels of 78,400: a stray click, not a digit
    assert prepare_digit(speck) is None


def test_small_off_centre_digits_read_as_well_as_centred(mnist: MnistData, trained_artifacts) -> None:
    model = ArtifactStore(trained_artifacts).load_base().model
    n = 200
    centred = off = 0
    for i in range(n):
        label = int(mnist.test_y[i])
        digit = _digit(mnist, i)
        centred += int(predict_probabilities(model, prepare_digit(digit)).argmax()) == label
        small = 255 - _place(digit, (600, 800), 60, 480 - i, 700 - i // 2)  # dark ink, small, in a corner
        off += int(predict_probabilities(model, prepare_digit(small)).argmax()) == label
    # a 28-pixel digit blown up to 60 and read back loses a little detail: a few of 200 may flip (5 on one CPU,
    # 2 on another); resized whole instead of cropped and centred, the digit would be about two pixels tall
    assert off >= centred - 8, (off, centred)
    assert centred / n > 0.85


def test_load_image_files(tmp_path, mnist: MnistData) -> None:
    gray = _place(_digit(mnist, 1), (200, 160), 120, 40, 20)
    Image.fromarray(255 - gray).convert("RGB").save(tmp_path / "d.jpg", quality=85)
    Image.fromarray(gray).save(tmp_path / "d.png")
    a = prepare_digit(load_image(tmp_path / "d.jpg"))
    b = prepare_digit(load_image(tmp_path / "d.png"))
    assert a is not None and b is not None and a.inverted and not b.inverted
    assert np.abs(a.pixels - b.pixels).mean() < 0.05
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    os.mkfifo(tmp_path / "fifo.png")
    for special in (tmp_path / "fifo.png", Path("/dev/zero")):  # reading either would never end
        with pytest.raises(ImageError, match=f"^{special} is not a regular file .a device, pipe or socket."):
            load_image(special)


def test_a_huge_picture_is_brought_down_to_the_working_side_as_it_is_read(tmp_path, mnist: MnistData) -> None:
    """A 6300x6300 picture (47 KB as a PNG) took 3.1 GB when every step worked at full size."""
    digit = Image.fromarray(_place(_digit(mnist, 7), (200, 200), 120, 40, 40))
    huge = digit.resize((6300, 6300), Image.Resampling.NEAREST)
    huge.save(tmp_path / "huge.png")
    array = load_image(tmp_path / "huge.png")
    assert array.shape[:2] == (WORKING_SIDE, WORKING_SIDE)
    small, large = prepare_digit(np.asarray(digit)), prepare_digit(array)
    assert small is not None and large is not None
    assert np.abs(small.pixels - large.pixels).mean() < 0.02  # the same digit, whatever the picture's size


image_shapes = st.one_of(
    st.tuples(st.integers(1, 120), st.integers(1, 120)),
    st.tuples(st.integers(1, 120), st.integers(1, 120), st.sampled_from([1, 3, 4])),
)


@settings(max_examples=150, deadline=None)
@given(arrays(np.uint8, image_shapes, elements=st.integers(0, 255)))
def test_any_uint8_array_gives_a_valid_digit_or_none(image: np.ndarray) -> None:
    prepared = prepare_digit(image)
    if prepared is None:
        return
    assert prepared.pixels.shape == (28, 28)
    assert np.isfinite(prepared.pixels).all() and prepared.pixels.min() >= 0 and prepared.pixels.max() <= 1
    assert prepared.tensor.shape == (1, 784) and torch.isfinite(prepared.tensor).all()
    assert max(_ink_box(prepared.pixels)) <= 20


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
def test_float_arrays_with_nan_and_inf_never_crash(image: np.ndarray) -> None:
    prepared = prepare_digit(image)
    assert prepared is None or np.isfinite(prepared.pixels).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.zeros((0, 5)), np.zeros(10), np.zeros((2, 2, 5))])
def test_malformed_arrays_raise_image_error(bad: np.ndarray) -> None:
    with pytest.raises(ImageError):
        prepare_digit(bad)
