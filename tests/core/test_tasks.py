"""Tasks: parsing (and its messages), and each transform doing what it says on real MNIST digits."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lora_core.data import MEAN, STD, MnistData, denormalize
from lora_core.errors import ConfigError
from lora_core.evaluate import accuracy_on
from lora_core.lab import tasks as tasks_module
from lora_core.lab.tasks import Task, parse_task, without_digits


@pytest.mark.parametrize(
    ("text", "spec", "slug"),
    [
        ("weakest", "weakest", "weakest"),
        ("digits:5,3", "digits:3,5", "digits-3-5"),
        (" Rotate:45 ", "rotate:45", "rotate-45"),
        ("rotate:-22.5", "rotate:-22.5", "rotate-m22.5"),
        ("invert", "invert", "invert"),
        ("thick", "thick", "thick"),
        ("thin", "thin", "thin"),
        ("shift:3", "shift:3", "shift-3"),
        ("shift:-2,1", "shift:-2,1", "shift-m2-1"),
        ("shift:4,0", "shift:4", "shift-4"),
        ("unseen:9,8", "unseen:8,9", "unseen-8-9"),
    ],
)
def test_parse_round_trips(text, spec, slug):
    task = parse_task(text)
    assert task.spec == spec and task.slug == slug
    assert parse_task(task.spec) == task
    assert task.label  # a sentence for people


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["give a task", "rotate:DEG"]),
        ("rot:45", ["unknown task", "'rot:45'", "rotate:DEG"]),
        ("rotate", ["rotate needs an angle", "rotate:45"]),
        ("rotate:abc", ["angle must be a number", "'abc'"]),
        ("rotate:0", ["not 0"]),
        ("rotate:270", ["-180 to 180"]),
        ("rotate:nan", ["-180 to 180"]),
        ("invert:3", ["invert takes no value"]),
        ("digits:", ["digits needs one or more digits"]),
        ("digits:1,12", ["'12' is not a digit"]),
        ("digits:3,3", ["digit 3 is listed twice"]),
        ("unseen:0,1,2,3,4,5,6,7,8,9", ["at most 9"]),
        ("shift:1.5", ["whole numbers", "'1.5'"]),
        ("shift:0", ["not both 0"]),
        ("shift:11", ["-10 to 10"]),
        ("shift:1,2,3", ["one or two"]),
    ],
)
def test_bad_task_strings_say_what_is_wrong(text, words):
    with pytest.raises(ConfigError) as info:
        parse_task(text)
    assert info.value.field == "task"
    for word in words:
        assert word in info.value.reason, info.value.reason


def test_target_digits_and_adapter_names():
    assert parse_task("weakest").target_digits(weakest=9) == (9,)
    assert parse_task("weakest").adapter_name((9,)) == "digit-9"
    assert parse_task("digits:3,5").adapter_name((3, 5)) == "digit-3-5"
    assert parse_task("rotate:45").target_digits() == tuple(range(10))
    assert parse_task("rotate:45").adapter_name(tuple(range(10))) == "rotate-45"
    unseen = parse_task("unseen:8,9")
    assert unseen.target_digits() == (8, 9) and unseen.base_name == "unseen-8-9"
    assert parse_task("rotate:45").base_name is None


def _digit(mnist: MnistData, index: int = 0) -> torch.Tensor:
    """A real test digit as pixels in [0, 1], shaped (1, 28, 28)."""
    return denormalize(mnist.test_x[index]).reshape(1, 28, 28)


def _centre_of_mass(pixels: torch.Tensor) -> tuple[float, float]:
    img = pixels.reshape(28, 28)
    coords = torch.arange(28, dtype=torch.float32)
    mass = img.sum()
    return float((img.sum(0) * coords).sum() / mass), float((img.sum(1) * coords).sum() / mass)


def test_rotate_90_twice_is_rotate_180(mnist):
    digit = _digit(mnist)
    quarter, half = parse_task("rotate:90"), parse_task("rotate:180")
    twice = quarter.transform_pixels(quarter.transform_pixels(digit))
    assert torch.allclose(twice, half.transform_pixels(digit), atol=1e-5)
    assert torch.allclose(half.transform_pixels(digit), digit.flip(-1).flip(-2), atol=1e-5)  # about the centre
    turned = parse_task("rotate:45").transform_pixels(digit)
    assert (turned - digit).abs().max() > 0.5  # it really moved the strokes
    assert turned.min() >= 0 and turned.max() <= 1  # corners filled with background


def test_rotation_is_counter_clockwise(mnist):
    dot = torch.zeros(1, 28, 28)
    dot[0, 4, 14] = 1.0  # above the centre
    turned = parse_task("rotate:90").transform_pixels(dot)
    row, col = divmod(int(turned.argmax()), 28)
    assert col < 14 and abs(row - 13.5) < 1.5  # counter-clockwise: the top goes to the left


def test_invert_flips_the_pixels(mnist):
    digit = _digit(mnist)
    task = parse_task("invert")
    assert torch.equal(task.transform_pixels(digit), 1.0 - digit)
    # in the network's scale: the background becomes the brightest value
    normalized = task.transform_normalized(mnist.test_x[:1])
    assert torch.allclose(normalized, ((1.0 - digit.reshape(1, 784)) - MEAN) / STD, atol=1e-5)


def test_thick_adds_ink_and_thin_removes_it(mnist):
    for index in range(5):
        digit = _digit(mnist, index)
        thick = parse_task("thick").transform_pixels(digit)
        thin = parse_task("thin").transform_pixels(digit)
        assert thick.sum() > 1.3 * digit.sum() and bool((thick >= digit).all())  # dilation only adds ink
        assert thin.sum() < 0.8 * digit.sum() and bool((thin <= digit).all())  # erosion only removes it
        assert thin.sum() > 0.1 * digit.sum()  # the cross-shaped erosion leaves a readable digit


def test_shift_moves_the_centre_of_mass_by_whole_pixels(mnist):
    digit = _digit(mnist)
    x0, y0 = _centre_of_mass(digit)
    for spec, (dx, dy) in (("shift:3", (3, 0)), ("shift:-2,1", (-2, 1))):
        moved = parse_task(spec).transform_pixels(digit)
        x1, y1 = _centre_of_mass(moved)
        assert x1 - x0 == pytest.approx(dx, abs=1e-4) and y1 - y0 == pytest.approx(dy, abs=1e-4)
        assert moved.sum() == pytest.approx(float(digit.sum()), rel=1e-6)  # nothing fell off the edge


def test_apply_transforms_whole_sets_in_chunks(mnist, monkeypatch):
    small = dataclasses.replace(mnist, train_x=mnist.train_x[:300], train_y=mnist.train_y[:300])
    task = parse_task("rotate:30")
    whole = task.apply(small)
    monkeypatch.setattr(tasks_module, "TRANSFORM_CHUNK", 7)  # many chunks give the same images
    chunked = task.apply(small)
    assert torch.equal(whole.train_x, chunked.train_x) and torch.equal(whole.test_x, chunked.test_x)
    assert whole.train_x.shape == small.train_x.shape and whole.test_x.shape == small.test_x.shape
    assert whole.train_y is small.train_y and whole.test_y is small.test_y  # labels unchanged
    one = task.transform_pixels(_digit(mnist, 3))
    assert torch.allclose(denormalize(whole.test_x[3]).reshape(1, 28, 28), one, atol=1e-5)
    assert parse_task("digits:3").apply(small) is small  # digit tasks use MNIST as it is


def test_without_digits_leaves_them_out_of_training_only(mnist):
    tiny = dataclasses.replace(mnist, train_x=mnist.train_x[:1000], train_y=mnist.train_y[:1000])
    left = without_digits(tiny, (8, 9))
    assert not torch.isin(left.train_y, torch.tensor([8, 9])).any()
    assert left.train_y.numel() == int((tiny.train_y < 8).sum())
    assert left.test_y is tiny.test_y


def test_accuracy_on_weights_by_support():
    summary = {"confusion": [[0] * 10 for _ in range(10)], "support": [0] * 10}
    summary["confusion"][8][8], summary["support"][8] = 9, 10
    summary["confusion"][9][9], summary["support"][9] = 10, 30
    assert accuracy_on(summary, (8, 9)) == pytest.approx(19 / 40)
    assert accuracy_on(summary, (1,)) == 0.0


def test_a_digit_task_does_not_transform():
    task = Task("digits", digits=(3,))
    pixels = torch.rand(2, 28, 28)
    assert task.transform_pixels(pixels) is pixels and not task.is_domain
